//! Running wrk: one or several processes at once, each bounded by its `-d` and a
//! deadline, their `BENCH_RESULT` lines (printed by the Lua scripts' `done()`) parsed,
//! and a measured run (warm-up, then the run with the servers' CPU accounted).

use crate::cleanup;
use crate::procfs::{CpuUse, CpuWindow};
use crate::settings::wrk_seconds;
use crate::setup::Bench;
use llmtrace_integration::output::spawn_captured;
use llmtrace_integration::process::wait_exit;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// One wrk load: script, threads, connections and the script's environment.
#[derive(Debug, Clone)]
pub struct Wrk {
    pub script: PathBuf,
    pub threads: u32,
    pub connections: u32,
    pub env: Vec<(String, String)>,
    pub url: String,
}

/// The `BENCH_RESULT` line of one run (latencies in microseconds).
#[derive(Debug, Clone, Default)]
pub struct WrkResult {
    pub requests: u64,
    pub duration_s: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub non2xx: u64,
    pub connect_err: u64,
    pub read_err: u64,
    pub write_err: u64,
    pub timeout_err: u64,
    /// `200=.. 429=..` with BENCH_STATUS=1.
    pub statuses: Option<String>,
}

impl WrkResult {
    fn parse(text: &str) -> Option<WrkResult> {
        let line = text.lines().find_map(|l| l.strip_prefix("BENCH_RESULT "))?;
        let field = |key: &str| -> Option<f64> {
            line.split_whitespace()
                .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))?
                .parse()
                .ok()
        };
        let count = |key: &str| field(key).map(|v| v as u64);
        Some(WrkResult {
            requests: count("requests")?,
            duration_s: field("duration_s")?,
            rps: field("rps")?,
            p50_us: field("p50_us")?,
            p99_us: field("p99_us")?,
            max_us: field("max_us")?,
            non2xx: count("non2xx")?,
            connect_err: count("connect_err")?,
            read_err: count("read_err")?,
            write_err: count("write_err")?,
            timeout_err: count("timeout_err")?,
            statuses: text
                .lines()
                .find_map(|l| l.strip_prefix("BENCH_STATUS "))
                .map(str::to_string),
        })
    }

    /// `connect 0, read 0, ...` when any socket error happened.
    pub fn socket_errors(&self) -> Option<String> {
        let errors = [
            self.connect_err,
            self.read_err,
            self.write_err,
            self.timeout_err,
        ];
        errors.iter().any(|e| *e > 0).then(|| {
            format!(
                "connect {}, read {}, write {}, timeout {}",
                self.connect_err, self.read_err, self.write_err, self.timeout_err
            )
        })
    }
}

/// What one wrk printed, and its parsed result.
pub struct WrkOutput {
    pub text: String,
    pub result: WrkResult,
}

/// Runs `loads` at once for `duration` (wrk syntax); panics with wrk's output when one
/// fails, hangs past its deadline or prints no result line.
pub fn run_parallel(
    bench: &Bench,
    tag: &str,
    loads: &[Wrk],
    duration: &str,
    latency: bool,
) -> Vec<WrkOutput> {
    let secs = wrk_seconds(duration).expect("duration checked at start");
    let deadline = Duration::from_secs_f64(secs + 60.0);
    let running: Vec<_> = loads
        .iter()
        .map(|w| {
            let mut cmd = Command::new("wrk");
            cmd.arg(format!("-t{}", w.threads))
                .arg(format!("-c{}", w.connections))
                .arg(format!("-d{duration}"))
                .args(["--timeout", "5s"]);
            if latency {
                cmd.arg("--latency");
            }
            cmd.arg("-s").arg(&w.script).arg(&w.url);
            cmd.envs(w.env.iter().map(|(k, v)| (k, v)));
            let (child, output, _) = spawn_captured(&mut cmd, |_| false);
            cleanup::track(child.id());
            (child, output)
        })
        .collect();
    let mut outputs = Vec::new();
    for (i, (mut child, output)) in running.into_iter().enumerate() {
        let status = wait_exit(&mut child, deadline);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        cleanup::untrack(child.id());
        output.wait_closed(Duration::from_secs(5));
        let text = format!("{}{}", output.stdout(), output.stderr());
        bench.keep(&format!("wrk-{tag}-{i}.txt"), &text);
        let url = &loads[i].url;
        match (status, WrkResult::parse(&text)) {
            (Some(s), Some(result)) if s.success() => outputs.push(WrkOutput { text, result }),
            (None, _) => panic!("wrk {tag} #{i} against {url} ran past {deadline:?}:\n{text}"),
            (Some(s), _) => panic!("wrk {tag} #{i} against {url} failed ({s}):\n{text}"),
        }
    }
    outputs
}

/// A measured run: its wrk outputs and the CPU the servers used.
pub struct Measured {
    pub runs: Vec<WrkOutput>,
    pub cpu: CpuUse,
}

impl Measured {
    /// Prints every wrk's output, indented (`[wrk i]` when there are several).
    pub fn print(&self) {
        for (i, run) in self.runs.iter().enumerate() {
            let tag = if self.runs.len() > 1 {
                format!("[wrk {i}] ")
            } else {
                String::new()
            };
            for line in run.text.lines() {
                println!("  | {tag}{line}");
            }
        }
    }

    /// The only run of a one-wrk measurement.
    pub fn only(&self) -> &WrkResult {
        &self.runs[0].result
    }
}

/// Warm-up (unless BENCH_WARMUP is 0), then `before_measure` (e.g. a metrics read),
/// then the measured run of `loads` with the CPU of `server_pids` accounted.
pub fn measure(
    bench: &Bench,
    tag: &str,
    loads: &[Wrk],
    server_pids: &[u32],
    before_measure: impl FnOnce(),
) -> Measured {
    if wrk_seconds(&bench.s.warmup).is_some_and(|s| s > 0.0) {
        run_parallel(
            bench,
            &format!("{tag}-warmup"),
            loads,
            &bench.s.warmup,
            false,
        );
    }
    before_measure();
    let window = CpuWindow::start(server_pids);
    let runs = run_parallel(bench, tag, loads, &bench.s.duration, true);
    let cpu = window.finish(server_pids);
    Measured { runs, cpu }
}

#[cfg(test)]
mod tests {
    use super::WrkResult;

    #[test]
    fn result_lines_parse() {
        let text = "Running 3s test\nBENCH_RESULT requests=300 duration_s=3.001 rps=99.9 \
                    p50_us=500 p90_us=800 p99_us=1200 max_us=5000 non2xx=2 connect_err=0 \
                    read_err=1 write_err=0 timeout_err=0\nBENCH_STATUS 200=298 429=2\n";
        let r = WrkResult::parse(text).unwrap();
        assert_eq!((r.requests, r.non2xx, r.read_err), (300, 2, 1));
        assert_eq!((r.rps, r.p99_us), (99.9, 1200.0));
        assert_eq!(r.statuses.as_deref(), Some("200=298 429=2"));
        assert_eq!(
            r.socket_errors().as_deref(),
            Some("connect 0, read 1, write 0, timeout 0")
        );
        assert!(WrkResult::parse("no result").is_none());
    }
}
