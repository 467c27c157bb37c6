//! Stopping every child on SIGINT / SIGTERM / SIGHUP: the harness's guards kill their
//! processes on drop (also on a panic), but a signal ends this process without running
//! them. The pids of running children are kept in a fixed table the signal handler can
//! read without locking; it SIGKILLs each and exits.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicI32, Ordering};

const SLOTS: usize = 64;
static PIDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];

extern "C" fn on_signal(signal: libc::c_int) {
    for slot in &PIDS {
        let pid = slot.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) is async-signal-safe and touches no memory of ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // SAFETY: _exit(2) is async-signal-safe; nothing else may run after a signal.
    unsafe { libc::_exit(128 + signal) };
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP.
pub fn install() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only reads atomics and calls async-signal-safe functions.
        let previous = unsafe { libc::signal(signal, handler as libc::sighandler_t) };
        assert_ne!(
            previous,
            libc::SIG_ERR,
            "install the handler of signal {signal}"
        );
    }
}

/// Kill `pid` if a signal ends this process.
pub fn track(pid: u32) {
    let pid = i32::try_from(pid).expect("pid fits i32");
    let free = PIDS.iter().find(|slot| {
        slot.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    });
    assert!(free.is_some(), "more than {SLOTS} children at once");
}

/// `pid` was reaped: never signal it again (the number may be reused).
pub fn untrack(pid: u32) {
    let pid = i32::try_from(pid).expect("pid fits i32");
    for slot in &PIDS {
        let _ = slot.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// A harness object (node, cluster, redis-server) whose processes are tracked while
/// it lives; dropping it stops them (the object's own drop), then untracks them.
pub struct Guarded<T> {
    inner: Option<T>,
    pids: Vec<u32>,
}

impl<T> Guarded<T> {
    pub fn new(inner: T, pids: Vec<u32>) -> Guarded<T> {
        pids.iter().copied().for_each(track);
        Guarded {
            inner: Some(inner),
            pids,
        }
    }
}

impl<T> Deref for Guarded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.inner.as_ref().expect("guarded value")
    }
}

impl<T> DerefMut for Guarded<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.inner.as_mut().expect("guarded value")
    }
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        drop(self.inner.take());
        self.pids.iter().copied().for_each(untrack);
    }
}
