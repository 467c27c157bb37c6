//! The deployment files that cannot run on this machine (Dockerfile,
//! docker-compose.yml, deploy/k8s/*.yaml) and scripts/cluster.sh only use settings
//! the node really has: every `LLMTRACE_*` variable they set and every flag
//! cluster.sh passes to a node appears in `llmtrace-node --help`, and the ports
//! they publish are the ones their listen addresses use.

use llmtrace_integration::node_help;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The files that configure nodes through the environment.
fn env_files() -> Vec<(String, String)> {
    let mut files = vec!["Dockerfile".to_string(), "docker-compose.yml".to_string()];
    let k8s = root().join("deploy/k8s");
    let mut yamls: Vec<String> = std::fs::read_dir(&k8s)
        .expect("deploy/k8s")
        .filter_map(Result::ok)
        .map(|e| format!("deploy/k8s/{}", e.file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    yamls.sort();
    files.extend(yamls);
    files.into_iter().map(|f| (read(&f), f)).collect()
}

/// Every `LLMTRACE_[A-Z0-9_]+` in `text`.
fn env_vars(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("LLMTRACE_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn deployment_files_use_only_real_settings() {
    let help = node_help();
    let mut checked = 0;
    for (text, file) in env_files() {
        let vars = env_vars(&text);
        let configures_nodes =
            !file.ends_with("services.yaml") && !file.ends_with("kustomization.yaml");
        assert!(
            vars.is_empty() != configures_nodes,
            "{file}: expected LLMTRACE_* settings only in the files that configure nodes"
        );
        for var in vars {
            // `[env: NAME=value]`, or `[env: NAME]` for secrets whose values
            // --help never shows.
            assert!(
                help.contains(&format!("env: {var}=")) || help.contains(&format!("env: {var}]")),
                "{file} uses {var}, which llmtrace-node --help does not list"
            );
            checked += 1;
        }
    }
    // Flags cluster.sh passes to nodes: the `args=(...)` / `args+=(...)` arrays.
    let script = read("scripts/cluster.sh");
    let mut in_args = false;
    let mut flags = BTreeSet::new();
    for line in script.lines() {
        let line = line.trim();
        if line.contains("args=(") || line.contains("args+=(") {
            in_args = true;
        }
        if in_args {
            for word in line.split_whitespace() {
                let word = word.rsplit('(').next().unwrap_or(word);
                if let Some(flag) = word.strip_prefix("--") {
                    let flag: String = flag
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                        .collect();
                    flags.insert(flag);
                }
            }
            in_args = !line.ends_with(')');
        }
    }
    assert!(
        flags.len() >= 5,
        "found too few node flags in cluster.sh: {flags:?}"
    );
    for flag in &flags {
        assert!(
            help.contains(&format!("--{flag} <")),
            "scripts/cluster.sh passes --{flag}, which llmtrace-node --help does not list"
        );
        checked += 1;
    }
    eprintln!("{checked} settings checked against llmtrace-node --help");
}

#[test]
fn published_ports_match_the_listen_addresses() {
    let docker = read("Dockerfile");
    let compose = read("docker-compose.yml");
    let k8s = read("deploy/k8s/statefulset.yaml");
    let services = read("deploy/k8s/services.yaml");
    for (text, file) in [
        (&docker, "Dockerfile"),
        (&compose, "docker-compose.yml"),
        (&k8s, "statefulset.yaml"),
    ] {
        assert!(
            text.contains("LLMTRACE_LISTEN") && text.contains("0.0.0.0:8080"),
            "{file}: public listener on 8080"
        );
        assert!(
            text.contains("0.0.0.0:7946"),
            "{file}: cluster listener on 7946"
        );
        assert!(
            text.contains("127.0.0.1:9090"),
            "{file}: admin listener on loopback"
        );
    }
    assert!(
        docker.contains("EXPOSE 8080 7946/tcp 7946/udp"),
        "Dockerfile EXPOSE"
    );
    assert!(docker.contains("USER 10001"), "Dockerfile runs as non-root");
    for port in [
        "containerPort: 8080",
        "containerPort: 7946, protocol: TCP",
        "containerPort: 7946, protocol: UDP",
    ] {
        assert!(k8s.contains(port), "statefulset.yaml lacks {port}");
    }
    assert!(
        k8s.contains("path: /readyz") && k8s.contains("path: /healthz"),
        "probes"
    );
    assert!(
        k8s.contains("runAsUser: 10001"),
        "statefulset runs as the image's user"
    );
    assert!(
        services.contains("clusterIP: None") && services.contains("publishNotReadyAddresses: true")
    );
    assert!(compose.contains("/dev/tcp/127.0.0.1/8080") && compose.contains("GET /readyz"));
    // The compose nginx renders the same template as cluster.sh and the tests.
    assert!(compose.contains("render-nginx.sh /etc/llmtrace/nginx.conf"));
}

/// `(name, value)` of every `LLMTRACE_*` setting in `text`, as the file writes it:
/// `NAME: value` (compose), `name: NAME, value: "value"` (k8s), `NAME=value` (Dockerfile).
fn settings(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim().trim_end_matches('\\').trim();
        if let Some(rest) = line.strip_prefix("- { name: LLMTRACE_") {
            if let Some((name, value)) = rest.split_once(", value: ") {
                let value = value.trim_end_matches('}').trim().trim_matches('"');
                out.push((format!("LLMTRACE_{name}"), value.to_string()));
            }
        } else if line.starts_with("LLMTRACE_") {
            let (name, value) = line
                .split_once(": ")
                .or_else(|| line.split_once('='))
                .unwrap_or_else(|| panic!("unparsed setting line {line:?}"));
            out.push((name.trim().to_string(), value.trim().to_string()));
        } else if let Some(env) = line.strip_prefix("ENV ") {
            if let Some((name, value)) = env.split_once('=') {
                out.push((name.to_string(), value.to_string()));
            }
        }
    }
    out
}

/// The values these files give really start a node (the harness's flags put the
/// three listeners on loopback port 0; placeholders the orchestrator fills in get
/// local values).
#[test]
fn deployment_settings_start_a_node() {
    for file in [
        "Dockerfile",
        "docker-compose.yml",
        "deploy/k8s/statefulset.yaml",
    ] {
        let found = settings(&read(file));
        assert!(found.len() >= 3, "{file}: settings not found: {found:?}");
        // cluster.advertise stays as written: only peers use it, so an address
        // that is not local still lets the node start.
        let mut node = llmtrace_integration::Node::builder()
            .env("LLMTRACE_CLUSTER_SECRET", "deploy-files-test-secret");
        for (name, value) in &found {
            let value = if value.contains("${") {
                continue; // compose's required secret, set above
            } else {
                value
                    .replace("$(POD_NAME)", "llmtrace-0")
                    .replace("$(POD_IP)", "127.0.0.1")
            };
            node = node.env(name, value);
        }
        let node = node.start();
        let reply = node.public().get("/healthz");
        assert_eq!(reply.status, 200, "{file}: {reply}");
        eprintln!("{file}: a node started with {found:?}");
    }
}
