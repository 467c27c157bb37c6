//! Command-line flags. Every flag can also be given as an environment variable
//! `LLMTRACE_<NAME>` and as a key of the TOML file given by `--config`; the
//! flags are the fields of `llmtrace_cluster_config::NodeSettings` (the same
//! struct the file is read into). Precedence: flag > environment > file >
//! default (see `llmtrace_cluster_config::flags`).

use std::path::PathBuf;

use clap::Parser;
use llmtrace_cluster_config::{ConfigError, Flags, NodeConfig, NodeSettings};

/// One node of an llmtrace cluster: exact per-tenant token-bucket rate
/// limiting over HTTP (`POST /v1/check`), with bucket state snapshotted to
/// memory or Redis.
///
/// Every option is also read from the environment variable shown, and from the
/// TOML file given by --config (same name, snake_case); a flag beats the
/// environment, which beats the file, which beats the default. The file also
/// holds the llmtrace `[rate_limit]` block, including
/// `[rate_limit.tenant_overrides."<tenant>"]`, the `[token_limit]` block
/// (with `[token_limit.tenant_overrides."<tenant>"]`) and the `[proxy]` block.
///
/// Proxy mode (--proxy-listen, off by default) forwards every request to an
/// OpenAI-compatible upstream and streams the answer back, holding each
/// tenant to its requests and tokens limits across the cluster.
#[derive(Debug, Parser)]
#[command(name = "llmtrace-node", version, about, long_about)]
pub struct Cli {
    /// TOML configuration file. [default: none]
    #[arg(long, env = "LLMTRACE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Every other setting, as flags and environment give it.
    #[command(flatten)]
    pub settings: Flags<NodeSettings>,
}

impl Cli {
    /// Reads the file (if any), lays flags and environment over it and
    /// resolves everything into a valid config.
    pub fn load(&self) -> Result<NodeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => NodeSettings::load(path)?,
            None => NodeSettings::default(),
        };
        NodeConfig::resolve(self.settings.over(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_beat_the_file() {
        let dir = std::env::temp_dir().join(format!("llmtrace-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "[rate_limit]\nburst_size = 5\nrequests_per_second = 2\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "llmtrace-node",
            "--config",
            path.to_str().unwrap(),
            "--burst-size",
            "3",
        ])
        .unwrap();
        let c = cli.load().unwrap();
        assert_eq!(
            (c.rate_limit.requests_per_second, c.rate_limit.burst_size),
            (2, 3)
        );
    }

    #[test]
    fn missing_file_is_named() {
        let cli =
            Cli::try_parse_from(["llmtrace-node", "--config", "/nonexistent/x.toml"]).unwrap();
        assert!(cli
            .load()
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/x.toml"));
    }

    /// The config resolved from `args` (after a fixed node id, the one
    /// setting whose default is random).
    fn resolved(args: &[&str]) -> NodeConfig {
        let argv = ["llmtrace-node", "--node-id", "n"].iter().chain(args);
        let mut c = Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .load()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        // Naming the cluster listener, even as its default, asks for
        // clustering; every other field must stay as it was.
        c.cluster.enabled = false;
        c
    }

    /// `--help` shows a default for a setting exactly when the resolver has a
    /// constant one, and shows the value the resolver applies: giving a flag
    /// its shown default changes nothing. A setting without a constant
    /// default says in words what happens without it.
    #[test]
    fn every_shown_default_is_the_default_the_resolver_applies() {
        let defaults = resolved(&[]);
        let mut shown = Vec::new();
        let command = Cli::command();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["help", "version"].contains(&long) {
                continue;
            }
            match arg.get_default_values() {
                [value] => {
                    let value = value.to_str().expect("UTF-8 default");
                    let flag = format!("--{long}");
                    assert_eq!(
                        resolved(&[&flag, value]),
                        defaults,
                        "{flag}: --help shows [default: {value}], the resolver applies another"
                    );
                    shown.push(long);
                }
                [] => {
                    let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                    assert!(
                        help.contains("[default: "),
                        "--{long} neither shows a default value nor says what it is: {help}"
                    );
                }
                many => panic!("--{long}: one default expected, got {many:?}"),
            }
        }
        assert!(
            shown.contains(&"forward-batch-max") && shown.contains(&"burst-size"),
            "{shown:?}"
        );
    }
}
