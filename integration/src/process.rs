//! Starting a server child process and waiting for its ready line: the one place that
//! spawns with piped output, hands the first matching stdout line back, and on failure
//! reports the exit status and everything the child wrote; and what `/proc` says about a
//! child's memory.

use crate::output::{spawn_captured, Captured};
use crate::STARTUP_TIMEOUT;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

/// How long a child may take to exit after being told to (a node flushes snapshots).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// What a child said when it did not come up.
#[derive(Debug)]
pub struct StartFailure {
    /// The exit status, when the process exited (None: it hung and was killed).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// A child that printed its ready line; its output is drained in the background.
pub struct Started {
    pub child: Child,
    pub output: Captured,
    /// The first stdout line that made `is_ready` true.
    pub line: String,
}

/// Spawns `cmd` (stdin closed, stdout / stderr captured) and waits at most
/// [`STARTUP_TIMEOUT`] for a stdout line for which `is_ready` holds. A child that
/// exits or stays silent is reaped (killed first when it hangs).
pub fn start(
    cmd: &mut Command,
    is_ready: impl Fn(&str) -> bool + Send + 'static,
) -> Result<Started, StartFailure> {
    let (mut child, output, ready) = spawn_captured(cmd, is_ready);
    match ready.recv_timeout(STARTUP_TIMEOUT) {
        Ok(line) => Ok(Started {
            child,
            output,
            line,
        }),
        Err(e) => {
            let status = match e {
                RecvTimeoutError::Disconnected => wait_exit(&mut child, STOP_TIMEOUT),
                RecvTimeoutError::Timeout => None,
            };
            if status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            output.wait_closed(Duration::from_secs(5));
            Err(StartFailure {
                status,
                stdout: output.stdout(),
                stderr: output.stderr(),
            })
        }
    }
}

/// The value of `key=` in a ready line (`... public=127.0.0.1:PORT ...`).
pub fn line_field(line: &str, key: &str) -> Option<String> {
    let key = format!("{key}=");
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(key.as_str()))
        .map(str::to_string)
}

/// Waits at most `timeout` for `child` to exit.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// Makes `cmd`'s child start with an open-file limit of `n` (soft and hard: the
/// child cannot raise it).
pub fn limit_open_files(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit(2) only, between fork and exec: async-signal-safe, no
    // allocation, no lock.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Sends `signal` to a child of ours that was not reaped yet.
pub fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) with a pid of our own, not yet reaped child: no memory is touched.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({signal}): {}", std::io::Error::last_os_error());
}

/// `VmRSS` / `VmHWM` / ... of `pid`, in kB.
pub fn vm_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no {field}"))
}
