//! The portal's stylesheet and script, embedded in the binary and served under a
//! name holding their content hash (`/assets/portal-<hash>.css`), so a browser
//! may keep them for a year: a new build with a changed file has a new name.

use std::sync::LazyLock;

use bytes::Bytes;
use http_body_util::Full;
use sha2::{Digest, Sha256};
use tonic::codegen::http::{header, HeaderValue, Response, StatusCode};

type Body = tonic::body::Body;

const CSS: &str = include_str!("assets/portal.css");
const JS: &str = include_str!("assets/portal.js");

struct Asset {
    path: String,
    body: &'static str,
    content_type: &'static str,
}

fn named(body: &'static str, ext: &str, content_type: &'static str) -> Asset {
    let hash = hex::encode(&Sha256::digest(body.as_bytes())[..6]);
    Asset {
        path: format!("/assets/portal-{hash}.{ext}"),
        body,
        content_type,
    }
}

static ASSETS: LazyLock<[Asset; 2]> = LazyLock::new(|| {
    [
        named(CSS, "css", "text/css; charset=utf-8"),
        named(JS, "js", "text/javascript; charset=utf-8"),
    ]
});

/// The stylesheet's URL path.
pub fn css() -> &'static str {
    &ASSETS[0].path
}

/// The script's URL path.
pub fn js() -> &'static str {
    &ASSETS[1].path
}

/// Bytes of every asset (for the page weight in docs/portal.md).
pub fn total_bytes() -> usize {
    CSS.len() + JS.len()
}

/// `GET /assets/{name}`.
pub fn answer(name: &str) -> Response<Body> {
    let path = format!("/assets/{name}");
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        let mut r = Response::new(Body::new(Full::new(Bytes::from_static(
            b"no such asset (an old page? reload it)\n",
        ))));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return r;
    };
    let mut r = Response::new(Body::new(Full::new(Bytes::from_static(
        asset.body.as_bytes(),
    ))));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_named_by_their_content_and_cached_for_long() {
        assert!(css().starts_with("/assets/portal-") && css().ends_with(".css"));
        assert_ne!(css(), js());
        let r = answer(css().trim_start_matches("/assets/"));
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("immutable"));
        assert_eq!(answer("portal-0000.css").status(), StatusCode::NOT_FOUND);
    }
}
