//! `GET /admin/ui`: the operator dashboard, one self-contained HTML page
//! (`ui.html`: inline CSS and JavaScript, no external assets) compiled into
//! the binary. The page itself carries no secret and is served without the
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

/// The page, as served.
pub const PAGE: &str = include_str!("ui.html");

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

/// The policy for [`PAGE`] (computed once).
pub fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let script = only_block(PAGE, "<script>", "</script>").expect("ui.html: one <script>");
        let style = only_block(PAGE, "<style>", "</style>").expect("ui.html: one <style>");
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
        .body(PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_self_contained() {
        // One inline script and style block, hashed into the policy.
        assert!(only_block(PAGE, "<script>", "</script>").is_some());
        assert!(only_block(PAGE, "<style>", "</style>").is_some());
        let csp = content_security_policy();
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        // Nothing loaded from elsewhere, no inline handlers or style attributes
        // (the policy would block them), and no HTML built from strings.
        let lower = PAGE.to_ascii_lowercase();
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
