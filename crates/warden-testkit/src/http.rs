//! HTTP calls to a [`TestBroker`]'s HTTP listener (admin API, token service, `/enroll`):
//! ureq on tokio's blocking pool, any status answered (a 4xx is an answer, not an error).

use serde_json::Value;

use crate::{TestBroker, WAIT};

/// An HTTP answer: its status, headers and body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// Every header, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub text: String,
}

impl HttpAnswer {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is none).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// The `Authorization` header for a bearer token.
pub fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

impl TestBroker {
    /// `method path` on the broker's HTTP listener with these headers and, when given, a JSON
    /// body (`Content-Type: application/json`). Panics only when no answer comes (within
    /// [`WAIT`]).
    pub async fn http(&self, method: &str, path: &str, headers: &[(&str, String)], body: Option<String>) -> HttpAnswer {
        let url = format!("http://{}{path}", self.server.http_addr.expect("http listener"));
        let method = method.to_owned();
        let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        tokio::task::spawn_blocking(move || {
            let mut req = ureq::request(&method, &url).timeout(WAIT);
            for (k, v) in &headers {
                req = req.set(k, v);
            }
            let resp = match body {
                Some(b) => req.set("Content-Type", "application/json").send_string(&b),
                None => req.call(),
            };
            let resp = match resp {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(e) => panic!("HTTP {method} {url}: {e}"),
            };
            let status = resp.status();
            let headers = resp
                .headers_names()
                .into_iter()
                .filter_map(|n| resp.header(&n).map(|v| (n.to_ascii_lowercase(), v.to_owned())))
                .collect();
            HttpAnswer { status, headers, text: resp.into_string().unwrap_or_default() }
        })
        .await
        .expect("http task")
    }
}
