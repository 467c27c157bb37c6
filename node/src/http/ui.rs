//! `GET /admin/ui`: the operator dashboard, one self-contained HTML page
//! (inline CSS and JavaScript, no external assets) compiled into the binary
//! from `ui.html` (markup, style) and its script parts (`ui.js`,
//! `ui_limits.js`). The page itself carries no secret and is served without the
//! admin token. It first calls the admin API without a token: a node that
//! has none (the loopback default) opens the dashboard at once; on a 401 it
//! asks the operator for the token and sends it on every admin API call it
//! makes.
//!
//! The Content-Security-Policy allows exactly the page's one inline script
//! and one inline style block (by their SHA-256), `fetch` to this origin
//! only, and nothing else: no external scripts, frames, forms or plugins.

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::HttpResponse;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The markup and style; its empty `<script></script>` receives the script.
const MARKUP: &str = include_str!("ui.html");
/// The parts of the one inline script, in order, run in one function scope:
/// the connection, cluster view, rates and lookup (`ui.js`, whose `boot`
/// starts the page), then the limits, their chart and the most refused keys
/// (`ui_limits.js`).
const SCRIPT_PARTS: [&str; 2] = [include_str!("ui.js"), include_str!("ui_limits.js")];

/// The page, as served (assembled once).
pub fn page_text() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| {
        let script = format!(
            "<script>\n\"use strict\";\n(function () {{\n{}  boot();\n}})();\n</script>",
            SCRIPT_PARTS.concat()
        );
        MARKUP.replacen("<script></script>", &script, 1)
    })
}

/// The text between `open` and the next `close`, when the page holds
/// exactly one such block.
fn only_block<'a>(page: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = page.find(open)? + open.len();
    let len = page[start..].find(close)?;
    (page.matches(open).count() == 1).then(|| &page[start..start + len])
}

/// `'sha256-<base64>'` of a CSP hash source.
fn hash_source(block: &str) -> String {
    let digest = Sha256::digest(block.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The policy for [`page_text`] (computed once).
pub fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let page = page_text();
        let script = only_block(page, "<script>", "</script>").expect("ui.html: one <script>");
        let style = only_block(page, "<style>", "</style>").expect("ui.html: one <style>");
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash_source(script),
            hash_source(style)
        )
    })
}

/// `GET /admin/ui`.
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, content_security_policy()))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(page_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_self_contained() {
        // One inline script and style block, hashed into the policy.
        let page = page_text();
        assert!(only_block(page, "<script>", "</script>").is_some());
        assert!(only_block(page, "<style>", "</style>").is_some());
        assert!(page.contains("function boot()") && page.contains("function renderTopRefused("));
        let csp = content_security_policy();
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        // Nothing loaded from elsewhere, no inline handlers or style attributes
        // (the policy would block them), and no HTML built from strings.
        let lower = page.to_ascii_lowercase();
        for banned in [
            "http://",
            "https://",
            "<script src",
            " style=\"",
            " onclick",
            " onload",
            " onsubmit",
            "innerhtml",
            "outerhtml",
            "insertadjacenthtml",
            "document.write",
            "eval(",
            "localstorage",
        ] {
            assert!(!lower.contains(banned), "ui.html contains {banned:?}");
        }
    }

    #[test]
    fn hash_source_matches_a_known_digest() {
        // sha256("") = 47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=
        assert_eq!(
            hash_source(""),
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
        );
    }
}
