//! Drains a child's stdout and stderr in background threads so the child never blocks on
//! a full pipe, hands the first line matching a predicate to the waiting test, and keeps
//! the tail of everything for failure messages.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How much of each stream is kept (the tail) for failure messages.
const KEEP_BYTES: usize = 256 * 1024;

/// The captured tail of a child's stdout and stderr.
#[derive(Clone, Default)]
pub struct Captured {
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// How many of the two streams reached end of file.
    closed: Arc<AtomicUsize>,
}

impl Captured {
    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits (at most `timeout`) until both streams are closed, so that everything a
    /// child that exited wrote is captured.
    pub fn wait_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.closed.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Both streams, labelled, for a panic message.
    pub fn describe(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr (tail) ---\n{}",
            self.stdout(),
            tail(&self.stderr(), 8 * 1024)
        )
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn append(buf: &Mutex<String>, line: &str) {
    if let Ok(mut b) = buf.lock() {
        b.push_str(line);
        b.push('\n');
        if b.len() > 2 * KEEP_BYTES {
            let keep = tail(&b, KEEP_BYTES).to_string();
            *b = keep;
        }
    }
}

fn drain_lines(stream: impl Read, buf: Arc<Mutex<String>>, mut on_line: impl FnMut(&str)) {
    let mut reader = BufReader::new(stream);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&raw);
                let line = line.trim_end_matches(['\n', '\r']);
                append(&buf, line);
                on_line(line);
            }
        }
    }
}

/// Spawns `cmd` with stdin closed and its stdout / stderr drained by [`capture`];
/// panics when it cannot be spawned.
pub fn spawn_captured(
    cmd: &mut Command,
    is_ready: impl Fn(&str) -> bool + Send + 'static,
) -> (Child, Captured, Receiver<String>) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    let (captured, ready) = capture(
        child.stdout.take().expect("stdout piped"),
        child.stderr.take().expect("stderr piped"),
        is_ready,
    );
    (child, captured, ready)
}

/// Starts the drain threads. The receiver yields the first stdout line for which
/// `is_ready` holds; it disconnects when stdout closes without such a line.
pub fn capture(
    stdout: impl Read + Send + 'static,
    stderr: impl Read + Send + 'static,
    is_ready: impl Fn(&str) -> bool + Send + 'static,
) -> (Captured, Receiver<String>) {
    let captured = Captured::default();
    let (tx, rx) = channel();
    let out = captured.stdout.clone();
    let closed = captured.closed.clone();
    thread::spawn(move || {
        let mut tx = Some(tx);
        drain_lines(stdout, out, |line| {
            if is_ready(line) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line.to_string());
                }
            }
        });
        closed.fetch_add(1, Ordering::SeqCst);
    });
    let err = captured.stderr.clone();
    let closed = captured.closed.clone();
    thread::spawn(move || {
        drain_lines(stderr, err, |_| {});
        closed.fetch_add(1, Ordering::SeqCst);
    });
    (captured, rx)
}
