//! `llmtrace-node`: parses configuration, sets up logging, runs the node.

use clap::Parser;
use llmtrace_node::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match cli.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("llmtrace-node: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    llmtrace_node::logging::init(config.log_format);
    for warning in config.rate_limit.warnings() {
        tracing::warn!("{warning}");
    }
    match actix_rt::System::new().block_on(llmtrace_node::node::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("llmtrace-node stopped: {e:#}");
            eprintln!("llmtrace-node: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
