//! What /proc says about processes and the machine: a server's CPU time
//! (`/proc/PID/stat`), its memory (`VmRSS` / `VmHWM`), the machine's busy time
//! (`/proc/stat`), and this process's reaped children's CPU (wrk runs as our child).
//! CPU accounting around a measured run tells a noisy 2-core machine apart from a slow
//! server.

use std::time::Duration;

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf(3) only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// utime + stime of `pid`, in clock ticks (0 when the process is gone).
fn process_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]: utime is field 14, stime field 15.
    let at = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    at(11) + at(12)
}

/// The `cpu` line of /proc/stat: (user + nice + system, the same plus iowait, irq and
/// softirq, idle), in clock ticks.
fn machine_ticks() -> (u64, u64, u64) {
    let v = cpu_fields();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let cpu = at(0) + at(1) + at(2);
    (cpu, cpu + at(4) + at(5) + at(6), at(3))
}

/// Of the `cpu` line of /proc/stat: (steal, every field summed), in clock ticks. Steal
/// is time the hypervisor ran something else while this machine had work.
fn steal_ticks() -> (u64, u64) {
    let v = cpu_fields();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    (v.get(7).copied().unwrap_or(0), v.iter().take(8).sum())
}

fn cpu_fields() -> Vec<u64> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().find(|l| l.starts_with("cpu ")).unwrap_or("");
    line.split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect()
}

/// CPU seconds of this process's reaped children (wrk).
fn children_cpu_s() -> f64 {
    // SAFETY: getrusage(2) writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

pub use llmtrace_integration::process::vm_kb;

/// CPU used during a measured run, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// The measured servers, summed.
    pub server_s: f64,
    /// wrk (this process's children that ended during the run).
    pub client_s: f64,
    /// The whole machine (user + nice + system).
    pub busy_s: f64,
    /// Share of the machine's CPU time the hypervisor took (steal), 0..1.
    pub steal: f64,
}

/// The counters at the start of a measured run.
pub struct CpuWindow {
    server: u64,
    client_s: f64,
    busy: u64,
    steal: (u64, u64),
}

impl CpuWindow {
    pub fn start(server_pids: &[u32]) -> CpuWindow {
        CpuWindow {
            server: server_pids.iter().map(|p| process_ticks(*p)).sum(),
            client_s: children_cpu_s(),
            busy: machine_ticks().0,
            steal: steal_ticks(),
        }
    }

    /// What was used since [`CpuWindow::start`], by the same servers.
    pub fn finish(self, server_pids: &[u32]) -> CpuUse {
        let hz = clock_ticks_per_s();
        let server: u64 = server_pids.iter().map(|p| process_ticks(*p)).sum();
        let (steal, all) = steal_ticks();
        let all = all.saturating_sub(self.steal.1).max(1);
        CpuUse {
            steal: steal.saturating_sub(self.steal.0) as f64 / all as f64,
            server_s: server.saturating_sub(self.server) as f64 / hz,
            client_s: children_cpu_s() - self.client_s,
            busy_s: machine_ticks().0.saturating_sub(self.busy) as f64 / hz,
        }
    }
}

/// The figures only mean something on an otherwise idle machine: samples the CPU for
/// one second and warns when something else is using it.
pub fn load_note() {
    let (_, busy0, idle0) = machine_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let (_, busy1, idle1) = machine_ticks();
    let (busy, idle) = (busy1.saturating_sub(busy0), idle1.saturating_sub(idle0));
    let share = busy as f64 / (busy + idle).max(1) as f64;
    if share > 0.15 {
        println!(
            "  !! the CPU was {:.0}% busy just before the run: other work (a build?) may \
             skew the figures",
            100.0 * share
        );
    }
}
