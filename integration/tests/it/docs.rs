//! The documentation agrees with the binary and with the OpenAPI document:
//! `docs/configuration.md` names exactly the flags and environment variables
//! `llmtrace-node --help` lists, and its tables pair each flag with the same
//! variable, TOML key and default as `--help`; `docs/api.md` describes every
//! operation of `docs/openapi.json` and no public or admin route beyond them;
//! and no page (README.md, docs/*.md) names a node flag or an `LLMTRACE_*`
//! variable that nothing reads.

use llmtrace_integration::node_help;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Flags of other tools that the pages quote in commands, with the tool.
const OTHER_TOOLS_FLAGS: &[(&str, &str)] = &[
    ("release", "cargo build / cargo run"),
    ("test", "cargo test"),
    ("check", "cargo fmt"),
    ("locked", "cargo build, in the Dockerfile"),
    ("nocapture", "the Rust test harness"),
    ("build", "docker compose up"),
    ("from-literal", "kubectl create secret"),
];

/// One option of `--help`: its flag, variable, default and TOML key, when given.
#[derive(Debug, Default)]
struct HelpOption {
    env: Option<String>,
    default: Option<String>,
    /// `section.key` when the description starts with it.
    key: Option<String>,
}

/// Every `--name` in `text` (a letter right after the two dashes).
fn flags_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices("--") {
        let before = i.checked_sub(1).map(|j| bytes[j]);
        if before.is_some_and(|b| b == b'-' || b.is_ascii_alphanumeric()) {
            continue;
        }
        let name: String = text[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if name.starts_with(|c: char| c.is_ascii_lowercase()) {
            out.insert(name.trim_end_matches('-').to_string());
        }
    }
    out
}

/// Every `LLMTRACE_NAME` in `text` (the bare prefix, as in `LLMTRACE_<NAME>`, is not one).
fn env_vars_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("LLMTRACE_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let name = name.trim_end_matches('_');
        if name.len() > "LLMTRACE".len() {
            out.insert(name.to_string());
        }
    }
    out
}

/// The text between `open` and the next `]` or `=`, e.g. `[env: NAME=]`.
fn bracketed<'a>(text: &'a str, open: &str, stop: &[char]) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(stop)?;
    Some(text[start..start + len].trim())
}

/// The options of `--help`, by flag. An option starts at a line indented less
/// than its description (`  -h, --help`, `      --listen <ADDR>`); everything
/// indented deeper below it is its description.
fn help_options(help: &str) -> BTreeMap<String, HelpOption> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if text.starts_with('-') && (1..=6).contains(&indent) {
            let flag = flags_in(text).into_iter().next().expect("a long flag");
            blocks.push((flag, String::new()));
        } else if indent > 6 {
            if let Some((_, description)) = blocks.last_mut() {
                description.push_str(text);
                description.push(' ');
            }
        } else if !text.is_empty() && blocks.last().is_some() {
            // A heading (`Proxy:`) ends the block before it.
            blocks.push((String::new(), String::new()));
        }
    }
    blocks
        .into_iter()
        .filter(|(flag, _)| !flag.is_empty())
        .map(|(flag, d)| {
            let head = d.split(':').next().unwrap_or_default();
            let is_key = head.contains('.')
                && head
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.');
            let option = HelpOption {
                env: bracketed(&d, "[env: ", &['=', ']']).map(str::to_string),
                default: bracketed(&d, "[default: ", &[']']).map(str::to_string),
                key: is_key.then(|| head.to_string()),
            };
            (flag, option)
        })
        .collect()
}

/// The rows of the settings tables: `| `--flag` | `ENV` | `key` | default | meaning |`.
fn table_rows(doc: &str) -> Vec<[String; 4]> {
    doc.lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let cells: Vec<String> = l
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect();
            assert!(cells.len() == 7, "a settings row has 5 cells: {l}");
            [
                cells[1].trim_start_matches('-').to_string(),
                cells[2].clone(),
                cells[3].clone(),
                cells[4].clone(),
            ]
        })
        .collect()
}

fn assert_same(what: &str, help: &BTreeSet<String>, doc: &BTreeSet<String>) {
    let missing: Vec<_> = help.difference(doc).collect();
    let unknown: Vec<_> = doc.difference(help).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{what}: in --help but not in docs/configuration.md: {missing:?}; \
         in docs/configuration.md but not in --help: {unknown:?}"
    );
}

#[test]
fn configuration_page_matches_help() {
    let help = node_help();
    let doc = read("docs/configuration.md");
    let options = help_options(&help);
    assert!(
        options.len() >= 30 && options.contains_key("help"),
        "parsed too few options from --help: {:?}",
        options.keys()
    );
    let help_flags: BTreeSet<String> = options.keys().cloned().collect();
    assert_same("flags", &help_flags, &flags_in(&doc));
    assert_same("variables", &env_vars_in(&help), &env_vars_in(&doc));

    let rows = table_rows(&doc);
    let mut seen = BTreeSet::new();
    // Every wrong default at once, so one run names all the rows to fix.
    let mut wrong_defaults = Vec::new();
    for [flag, env, key, default] in &rows {
        assert!(seen.insert(flag.clone()), "--{flag} has two rows");
        let option = &options[flag];
        assert_eq!(
            option.env.as_deref(),
            Some(env.as_str()),
            "--{flag}: variable"
        );
        if let Some(help_default) = option.default.as_ref().filter(|d| *d != default) {
            wrong_defaults.push(format!(
                "--{flag}: docs say `{default}`, --help says `{help_default}`"
            ));
        }
        match &option.key {
            Some(help_key) => assert_eq!(help_key, key, "--{flag}: TOML key"),
            None => assert!(
                *key == flag.replace('-', "_") || key == "—",
                "--{flag}: TOML key {key:?} is not the flag's name in snake_case"
            ),
        }
    }
    assert!(wrong_defaults.is_empty(), "{wrong_defaults:#?}");
    let with_env: BTreeSet<String> = options
        .iter()
        .filter(|(_, o)| o.env.is_some())
        .map(|(f, _)| f.clone())
        .collect();
    assert_same("settings rows", &with_env, &seen);
    eprintln!(
        "{} flags, {} settings rows checked against --help",
        help_flags.len(),
        rows.len()
    );
}

#[test]
fn api_page_describes_every_openapi_operation() {
    let doc = read("docs/api.md");
    let openapi: Value =
        serde_json::from_str(&read("docs/openapi.json")).expect("docs/openapi.json is JSON");
    let mut documented = BTreeSet::new();
    for (path, item) in openapi["paths"].as_object().expect("paths") {
        for method in ["get", "put", "post", "delete"] {
            if item.get(method).is_some() {
                let op = format!("{} {path}", method.to_uppercase());
                assert!(
                    doc.contains(&format!("`{op}")),
                    "docs/api.md does not describe `{op}` of docs/openapi.json"
                );
                documented.insert(op);
            }
        }
    }
    assert!(documented.len() >= 10, "too few operations: {documented:?}");
    // The other way: every route the page names is in the document, except the
    // internal node-to-node routes, which the document leaves out on purpose.
    for (i, _) in doc.match_indices('`') {
        let rest = &doc[i + 1..];
        let Some((method, tail)) = rest.split_once(' ') else {
            continue;
        };
        if !["GET", "PUT", "POST", "DELETE"].contains(&method) || !tail.starts_with('/') {
            continue;
        }
        let path = &tail[..tail.find(['`', '[', '?']).unwrap_or(tail.len())];
        let op = format!("{method} {path}");
        assert!(
            documented.contains(&op) || path.starts_with("/cluster/v1/"),
            "docs/api.md names `{op}`, which docs/openapi.json does not have"
        );
    }
}

/// Every file under `dir` (recursively) whose name ends with one of `exts`.
fn sources(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, exts, out);
        } else if exts
            .iter()
            .any(|e| path.extension().is_some_and(|x| x == *e))
        {
            out.push(path);
        }
    }
}

#[test]
fn pages_name_only_real_flags_and_variables() {
    let help = node_help();
    let options = help_options(&help);
    let help_vars = env_vars_in(&help);
    // Variables the scripts and the test harness read (cluster.sh's state
    // directory, the binary under test, ...).
    let mut files = Vec::new();
    sources(&root().join("scripts"), &["sh"], &mut files);
    sources(&root().join("integration"), &["rs", "py"], &mut files);
    let tool_vars: BTreeSet<String> = files
        .iter()
        .filter(|f| f.file_name().is_none_or(|n| n != "docs.rs"))
        .flat_map(|f| env_vars_in(&std::fs::read_to_string(f).unwrap_or_default()))
        .collect();
    let mut pages = vec!["README.md".to_string()];
    let mut md = Vec::new();
    sources(&root().join("docs"), &["md"], &mut md);
    pages.extend(md.iter().map(|p| {
        format!(
            "docs/{}",
            p.file_name().expect("file name").to_string_lossy()
        )
    }));
    assert!(pages.len() >= 6, "pages found: {pages:?}");
    for page in &pages {
        let text = read(page);
        for flag in flags_in(&text) {
            assert!(
                options.contains_key(&flag) || OTHER_TOOLS_FLAGS.iter().any(|(f, _)| *f == flag),
                "{page} names --{flag}, which llmtrace-node --help does not list"
            );
        }
        for var in env_vars_in(&text) {
            assert!(
                help_vars.contains(&var) || tool_vars.contains(&var),
                "{page} names {var}, which neither --help nor any script or test reads"
            );
        }
    }
}

/// The anchor GitHub gives a heading: lower case, punctuation dropped, spaces
/// turned into dashes.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn links_between_pages_resolve() {
    let mut pages = vec![root().join("README.md")];
    sources(&root().join("docs"), &["md"], &mut pages);
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("read page");
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let target = &rest[..rest.find(')').expect("closed link")];
            if target.contains("://") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let file = if file.is_empty() {
                page.clone()
            } else {
                page.parent().expect("page directory").join(file)
            };
            let shown = format!("{} links to {target}", page.display());
            assert!(file.is_file(), "{shown}: no such file");
            if !anchor.is_empty() {
                let target_text = std::fs::read_to_string(&file).expect("read link target");
                let found = target_text
                    .lines()
                    .filter_map(|l| l.strip_prefix('#'))
                    .any(|h| slug(h.trim_start_matches('#')) == anchor);
                assert!(found, "{shown}: no such heading");
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "found only {checked} links");
}
