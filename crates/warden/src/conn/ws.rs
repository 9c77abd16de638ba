//! MQTT over WebSocket (MQTT 5.0 §6): HTTP upgrade on the configured path (default `/mqtt`),
//! subprotocol `mqtt` selected when offered [MQTT-6.0.0-3], binary frames only
//! [MQTT-6.0.0-1]. The frames are bridged into a byte stream so the same connection driver
//! serves TCP and WebSocket: MQTT packets may span frames and frames may hold several packets
//! [MQTT-6.0.0-2].
//!
//! A browser sends `Origin`; a handshake whose origin is neither the listener's own host nor
//! one of its `allowed_origins` is refused with 403, so that a page elsewhere cannot use a
//! visitor's browser — its network position, its client certificate — to reach the broker
//! (cross-site WebSocket hijacking). Clients that are not browsers send no `Origin` (or, like
//! paho, their own host) and are not concerned.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info};

use crate::conn::ConnContext;
use crate::logsafe::Escaped;
use crate::tls::CertIdentity;

/// A WebSocket listener's settings: its path and the browser origins it accepts.
#[derive(Debug)]
pub struct WsSettings {
    path: String,
    any_origin: bool,
    origins: Vec<String>,
}

impl WsSettings {
    /// From the listener's `path` and `allowed_origins` (`"*"`: any origin).
    pub fn new(path: &str, allowed_origins: &[String]) -> WsSettings {
        WsSettings {
            path: path.to_owned(),
            any_origin: allowed_origins.iter().any(|o| o == "*"),
            origins: allowed_origins.iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect(),
        }
    }

    /// May a handshake with this `Origin` (if any) and `Host` go on? No origin: not a browser.
    /// The listener's own host (any scheme and port: a page of the same host) and the listed
    /// origins may; anything else, `null` included unless listed, may not.
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        if self.any_origin {
            return true;
        }
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if self.origins.contains(&origin) {
            return true;
        }
        let origin_host = origin.split_once("://").map(|(_, rest)| host_part(rest));
        let own_host = host.map(|h| host_part(&h.trim().to_ascii_lowercase()).to_owned());
        matches!((origin_host, own_host), (Some(o), Some(h)) if !o.is_empty() && o == h)
    }
}

/// The host of `host[:port]` (an IPv6 literal keeps its brackets).
fn host_part(s: &str) -> &str {
    let s = s.split('/').next().unwrap_or(s);
    if s.starts_with('[') {
        return s.split_inclusive(']').next().unwrap_or(s);
    }
    s.rsplit_once(':').map_or(s, |(h, _)| h)
}

/// Accept a WebSocket upgrade on `stream` and run the MQTT connection over it.
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    cert: CertIdentity,
    listener: warden_policy::authn::ListenerAuth,
    slot: Option<crate::admission::guard::Admitted>,
    settings: Arc<WsSettings>,
    ctx: Arc<ConnContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The callback signature is tungstenite's; its error type is large by design.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != settings.path {
            let mut e = ErrorResponse::new(Some("not found".into()));
            *e.status_mut() = StatusCode::NOT_FOUND;
            return Err(e);
        }
        let header = |name: &str| req.headers().get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
        if !settings.origin_allowed(header("origin"), header("host")) {
            info!(%peer, origin = %Escaped(header("origin").unwrap_or_default()), "websocket origin refused");
            let mut e = ErrorResponse::new(Some("origin not allowed".into()));
            *e.status_mut() = StatusCode::FORBIDDEN;
            return Err(e);
        }
        let offered = req.headers().get_all("sec-websocket-protocol");
        let has_mqtt = offered
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("mqtt"));
        if has_mqtt {
            resp.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        }
        Ok(resp)
    };
    let mut cfg = WebSocketConfig::default();
    let max = ctx.max_packet_size as usize + 16;
    cfg.max_message_size = Some(max.max(64 * 1024));
    cfg.max_frame_size = Some(max.max(64 * 1024));
    let ws = match tokio::time::timeout(
        ctx.connect_timeout,
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(cfg)),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "websocket handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "websocket handshake timed out");
            return;
        }
    };
    let (mut sink, mut stream) = ws.split();
    let (mqtt_side, bridge_side) = tokio::io::duplex(64 * 1024);
    let (mut from_client, mut to_client) = tokio::io::split(bridge_side);
    let inbound = async move {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Binary(data)) => {
                    if to_client.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                // Text frames are not MQTT [MQTT-6.0.0-1]; close.
                Ok(Message::Text(_) | Message::Close(_)) | Err(_) => break,
            }
        }
        let _ = to_client.shutdown().await;
    };
    let outbound = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    let mqtt = crate::conn::run(mqtt_side, peer, cert, listener, slot, None, ctx);
    // The MQTT side ends first in every orderly case; its end closes the duplex, which ends
    // the outbound pump; the inbound pump ends with the socket.
    tokio::join!(mqtt, outbound, async {
        inbound.await;
    });
}

#[cfg(test)]
mod tests {
    use super::WsSettings;

    #[test]
    fn origins_are_the_listeners_own_host_or_listed() {
        let s = WsSettings::new("/mqtt", &["https://Console.example/".to_owned()]);
        let ok = |o: Option<&str>, h: &str| s.origin_allowed(o, Some(h));
        assert!(ok(None, "b:9001"), "no Origin: not a browser");
        assert!(ok(Some("https://b:9001"), "b:9001"));
        assert!(ok(Some("http://B:8080"), "b:9001"), "same host, another port and scheme");
        assert!(ok(Some("https://console.example"), "b:9001"), "listed (case and slash ignored)");
        assert!(ok(Some("https://[::1]:1"), "[::1]:9001"));
        assert!(!ok(Some("https://evil.example"), "b:9001"));
        assert!(!ok(Some("https://b.evil:9001"), "b:9001"));
        assert!(!ok(Some("null"), "b:9001"));
        assert!(!ok(Some("https://[::2]:1"), "[::1]:9001"));
        assert!(!s.origin_allowed(Some("https://b"), None), "no Host: only the list");
        let any = WsSettings::new("/mqtt", &["*".to_owned()]);
        assert!(any.origin_allowed(Some("https://evil.example"), Some("b")));
    }
}
