//! The headers every response carries, and the JSON error body.
//!
//! One constant list, applied in one place ([`secure`]), so no route can forget it. The
//! Content-Security-Policy allows scripts, workers and connections to this origin only, WASM
//! compilation (the page's SHA-256 runs in WebAssembly) and nothing inline; no page may frame
//! ours. Downloads get a stricter policy of their own (`sandbox`), so an uploaded `.html` never
//! runs in our origin.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

/// The policy of every page and API response.
pub const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
worker-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; \
base-uri 'none'; frame-ancestors 'none'";

/// The policy of a downloaded file: it is data, never a document of ours.
pub const CSP_DOWNLOAD: &str = "sandbox; default-src 'none'; frame-ancestors 'none'";

const SECURE: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    // Link tokens are in URLs: a page must never hand its address to another site.
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    (
        "permissions-policy",
        "camera=(), microphone=(), geolocation=(), interest-cohort=()",
    ),
    ("strict-transport-security", "max-age=31536000"),
    ("x-frame-options", "DENY"),
];

/// Adds the security headers to a response's headers; a route that set its own
/// Content-Security-Policy (a download) keeps it.
pub fn secure(h: &mut HeaderMap) {
    for (name, value) in SECURE {
        h.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    if !h.contains_key(hyper::header::CONTENT_SECURITY_POLICY) {
        h.insert(
            hyper::header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    if !h.contains_key(hyper::header::CACHE_CONTROL) {
        h.insert(
            hyper::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
    }
}

/// The body of an error answer: a stable code for scripts and a short text for people. Never
/// a path or an operating system's message.
pub fn error_json(code: &str, message: &str) -> String {
    serde_json::json!({ "error": code, "message": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_response_gets_the_policy_and_keeps_a_stricter_one() {
        let mut h = HeaderMap::new();
        secure(&mut h);
        assert_eq!(h["content-security-policy"], CSP);
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
        let mut d = HeaderMap::new();
        d.insert(
            hyper::header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP_DOWNLOAD),
        );
        secure(&mut d);
        assert_eq!(d["content-security-policy"], CSP_DOWNLOAD);
    }

    #[test]
    fn error_bodies_are_json_that_escapes_what_it_carries() {
        let body = error_json("not_found", "no \"such\" route");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "not_found");
        assert_eq!(v["message"], "no \"such\" route");
    }
}
