//! The security console (SPEC §12): a single page served at `/console/`, its assets embedded
//! in the binary (built from `crates/warden-http/console/src` by `npm run build` in
//! `crates/warden-http/console`; the built files are committed and CI checks they match their
//! sources). The page calls the admin API ([`crate::admin`]) with the admin token in the
//! `Authorization` header, held in the page's memory; nothing here is authenticated (the page
//! holds no data), and no other origin is ever granted access (no CORS headers anywhere).
//!
//! Every answer carries a Content-Security-Policy that allows only this origin's own script,
//! style and API (no inline script, no other host, no framing), `X-Content-Type-Options`,
//! `Referrer-Policy: no-referrer` and `X-Frame-Options: DENY`.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// The built page and its assets.
const INDEX: &str = include_str!("../console/dist/index.html");
const SCRIPT: &str = include_str!("../console/dist/console.js");
const STYLE: &str = include_str!("../console/dist/console.css");

/// The policy every console answer carries.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes (`/console`, `/console/`, `/console/console.js`, `/console/console.css`).
pub fn console_router() -> Router {
    Router::new()
        .route("/console", get(|| async { Redirect::permanent("/console/") }))
        .route("/console/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console/index.html", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console/console.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/console/console.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Revalidated each time: a new binary's page is never mixed with an old script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use axum::http::StatusCode;
    use tower::ServiceExt;

    async fn get(path: &str) -> Response {
        console_router().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_a_strict_policy() {
        for (path, ct) in [
            ("/console/", "text/html"),
            ("/console/console.js", "text/javascript"),
            ("/console/console.css", "text/css"),
        ] {
            let r = get(path).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let h = r.headers();
            assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with(ct), "{path}");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP);
            assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        }
    }

    #[tokio::test]
    async fn the_page_loads_only_its_own_assets() {
        // No CDN, no inline script: every script and stylesheet is one of ours.
        assert!(INDEX.contains(r#"src="./console.js""#) || INDEX.contains(r#"src="console.js""#));
        assert!(!INDEX.contains("http://") && !INDEX.contains("https://"));
        assert!(!INDEX.contains("<script>"), "inline script would be refused by the policy");
    }

    #[tokio::test]
    async fn console_without_slash_redirects_and_unknown_paths_are_404() {
        let r = get("/console").await;
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(r.headers()[header::LOCATION], "/console/");
        assert_eq!(get("/console/nope.js").await.status(), StatusCode::NOT_FOUND);
    }
}
