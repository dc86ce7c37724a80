//! The web app's files, embedded in the binary: no CDN, and `cargo build` needs no JavaScript
//! toolchain (the files in `web/` are plain modules and vendored bundles, committed as they
//! are served). Each is served at `/assets/<name>` with a strong `ETag` (its SHA-256) and
//! revalidated on every use, under the same Content-Security-Policy as every page.

use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::parse;
use super::router::{Body, error, full};

/// An embedded file: its name under `/assets/`, its type and its bytes.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

/// Every file of `web/` that is served (a test checks none is missing).
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../../web/style.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../../web/app.js"),
    },
    Asset {
        name: "drop.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../../web/drop.js"),
    },
    Asset {
        name: "upload.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../../web/upload.js"),
    },
    Asset {
        name: "store.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../../web/store.js"),
    },
    Asset {
        name: "ui.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../../web/ui.js"),
    },
    Asset {
        name: "hash-worker.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../../web/hash-worker.js"),
    },
    Asset {
        name: "vendor/hash-wasm/sha256.umd.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../../web/vendor/hash-wasm/sha256.umd.min.js"),
    },
];

/// The web app's page, served at `/` (not under `/assets/`).
pub const INDEX: &[u8] = include_bytes!("../../../web/index.html");

/// Files of `web/` that are kept in the repository but not served.
pub const NOT_SERVED: &[&str] = &[
    "index.html",
    "vendor/hash-wasm/LICENSE",
    "vendor/hash-wasm/VENDORED.md",
];

/// `GET|HEAD /assets/<name>`.
pub fn serve<B>(req: &Request<B>, segments: &[String]) -> Response<Body> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this method is not allowed here",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let name = segments.join("/");
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such file");
    };
    let etag = etag(asset.bytes);
    if let Some(inm) = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        && parse::if_none_match(inm, &etag)
    {
        let mut r = Response::new(super::router::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        if let Ok(v) = HeaderValue::from_str(&etag) {
            r.headers_mut().insert(header::ETAG, v);
        }
        return r;
    }
    let mut r = Response::new(full(asset.bytes));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    r
}

fn etag(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("\"sha256-{}\"", hex::encode(sha2::Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `web/` is either served or listed as kept only.
    #[test]
    fn every_file_in_web_is_accounted_for() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut stack = vec![root.clone()];
        let mut found = Vec::new();
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p
                        .strip_prefix(&root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    found.push(rel);
                }
            }
        }
        for f in &found {
            assert!(
                ASSETS.iter().any(|a| a.name == f) || NOT_SERVED.contains(&f.as_str()),
                "web/{f} is neither served (ASSETS) nor listed in NOT_SERVED"
            );
        }
        for a in ASSETS {
            assert!(
                found.iter().any(|f| f == a.name),
                "{} is not in web/",
                a.name
            );
        }
    }

    /// The vendored bundle is the one VENDORED.md names.
    #[test]
    fn the_vendored_hasher_is_the_recorded_one() {
        use sha2::Digest;
        let a = ASSETS
            .iter()
            .find(|a| a.name.ends_with("sha256.umd.min.js"))
            .unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(a.bytes)),
            "0ab0ba5a8242ca02d4403e08a60b9308cb7322a175c3a5c3071c595fad1e65de"
        );
        let note = include_str!("../../../web/vendor/hash-wasm/VENDORED.md");
        assert!(note.contains("0ab0ba5a8242ca02d4403e08a60b9308cb7322a175c3a5c3071c595fad1e65de"));
    }
}
