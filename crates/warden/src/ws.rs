//! MQTT over WebSocket (MQTT 5.0 §6): HTTP upgrade on the configured path (default `/mqtt`),
//! subprotocol `mqtt` selected when offered [MQTT-6.0.0-3], binary frames only
//! [MQTT-6.0.0-1]. The frames are bridged into a byte stream so the same connection driver
//! serves TCP and WebSocket: MQTT packets may span frames and frames may hold several packets
//! [MQTT-6.0.0-2].

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use crate::conn::ConnContext;
use crate::tls::CertIdentity;

/// Accept a WebSocket upgrade on `stream` and run the MQTT connection over it.
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    cert: CertIdentity,
    slot: Option<crate::guard::Admitted>,
    path: Arc<str>,
    ctx: Arc<ConnContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The callback signature is tungstenite's; its error type is large by design.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != &*path {
            let mut e = ErrorResponse::new(Some("not found".into()));
            *e.status_mut() = StatusCode::NOT_FOUND;
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
    let mqtt = crate::conn::run(mqtt_side, peer, cert, slot, None, ctx);
    // The MQTT side ends first in every orderly case; its end closes the duplex, which ends
    // the outbound pump; the inbound pump ends with the socket.
    tokio::join!(mqtt, outbound, async {
        inbound.await;
    });
}
