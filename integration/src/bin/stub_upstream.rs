//! The stub OpenAI-compatible upstream as a process, for `scripts/bench.sh
//! proxy`: prints `stub listening public=ADDR` and serves until killed.
//! Requests are not recorded (a benchmark sends millions).

fn main() {
    let stub = llmtrace_integration::Stub::start_unrecorded();
    println!("stub listening public={}", stub.addr());
    loop {
        std::thread::park();
    }
}
