//! TLS session resumption (issue 24, "session resumption for reconnect storms") against the real
//! broker: a rustls client that keeps its session tickets reconnects without a full handshake,
//! the resumed session yields the principal of the first handshake's certificate, and a
//! certificate revoked after that first handshake is refused on resumption.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;

use mqtt_codec::{Connack, Packet, Protocol, ReasonCode};
use rustls::HandshakeKind;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use warden::config::ListenerProtocol;
use warden_testkit::pki::{CertFiles, TestPki, Validity};
use warden_testkit::{connect_packet, RawClient, Recv, TestBroker};

/// A broker with one mqtts listener requiring client certificates from its CA, a CRL (empty at
/// first), `[identity] client_id_must_match = "exact"` (a CONNACK 0 for client id X proves the
/// principal is X) and `listener_extra` keys.
async fn broker(listener_extra: &str) -> (TestBroker, TestPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "fleet");
    let crl = pki.crl("fleet.crl", &[]);
    let s = pki.server();
    let body = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtts\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\ncrl = \"{}\"\n{listener_extra}\n[identity]\nclient_id_must_match = \"exact\"\n",
        s.cert.display(),
        s.key.display(),
        pki.ca_pem().display(),
        crl.display()
    );
    (TestBroker::from_toml_in(dir, &body).await, pki)
}

/// A device: one rustls client configuration (and so one session cache) for all its connections,
/// as a real client library keeps it between reconnects.
struct Device(Arc<rustls::ClientConfig>);

impl Device {
    fn new(pki: &TestPki, cert: &CertFiles, tls13: bool) -> Device {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(pki.ca_pem()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let versions: &[&rustls::SupportedProtocolVersion] =
            if tls13 { &[&rustls::version::TLS13] } else { &[&rustls::version::TLS12] };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&cert.cert).unwrap().map(|c| c.unwrap()).collect();
        let key = PrivateKeyDer::from_pem_file(&cert.key).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        Device(Arc::new(cfg))
    }

    /// Connect and send CONNECT for `cid`: whether the handshake resumed, and the broker's
    /// CONNACK reason code (`None`: the connection ended without one).
    async fn connect(&self, addr: SocketAddr, cid: &str) -> (bool, Option<ReasonCode>) {
        let sock = TcpStream::connect(addr).await.unwrap();
        let stream: TlsStream<TcpStream> = match tokio_rustls::TlsConnector::from(self.0.clone())
            .connect(ServerName::try_from("localhost").unwrap(), sock)
            .await
        {
            Ok(s) => s,
            Err(_) => return (false, None), // refused during the handshake
        };
        let resumed = stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
        // Reading the CONNACK also reads the session tickets the broker sends after the handshake.
        let code = match RawClient::connect_over(stream, connect_packet(Protocol::V5, cid, true)).await.1 {
            Recv::Packet(Packet::Connack(Connack { reason_code, .. })) => Some(reason_code),
            _ => None,
        };
        (resumed, code)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_keeps_the_certificate_principal_on_tls13_and_tls12() {
    let (b, pki) = broker("").await;
    let addr = b.addr_of(ListenerProtocol::Mqtts);
    let cert = pki.client("dev-001", Validity::Valid);
    for tls13 in [true, false] {
        let dev = Device::new(&pki, &cert, tls13);
        assert_eq!(dev.connect(addr, "dev-001").await, (false, Some(ReasonCode(0))), "tls13={tls13}");
        // Resumed: the principal is still dev-001 (its client id is accepted, another refused).
        assert_eq!(dev.connect(addr, "dev-001").await, (true, Some(ReasonCode(0))), "tls13={tls13}");
        assert_eq!(
            dev.connect(addr, "dev-002").await,
            (true, Some(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)),
            "tls13={tls13}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_after_the_first_handshake_is_refused_on_resumption() {
    let (b, pki) = broker("").await;
    let addr = b.addr_of(ListenerProtocol::Mqtts);
    let (bad, good) = (pki.client("dev-bad", Validity::Valid), pki.client("dev-good", Validity::Valid));
    for tls13 in [true, false] {
        pki.crl("fleet.crl", &[]);
        b.server.reload();
        let (dev_bad, dev_good) = (Device::new(&pki, &bad, tls13), Device::new(&pki, &good, tls13));
        assert_eq!(dev_bad.connect(addr, "dev-bad").await, (false, Some(ReasonCode(0))), "tls13={tls13}");
        assert_eq!(dev_good.connect(addr, "dev-good").await, (false, Some(ReasonCode(0))), "tls13={tls13}");
        // The operator revokes dev-bad's certificate and reloads (SIGHUP).
        pki.crl("fleet.crl", &[bad.serial]);
        b.server.reload();
        // Its session still resumes at the TLS layer (the ticket keys outlive a CRL reload) but
        // the broker refuses it before MQTT: no CONNACK.
        assert_eq!(dev_bad.connect(addr, "dev-bad").await, (true, None), "tls13={tls13}");
        // The other device resumes across the same reload.
        assert_eq!(dev_good.connect(addr, "dev-good").await, (true, Some(ReasonCode(0))), "tls13={tls13}");
    }
    // Without a ticket the revoked certificate fails the full handshake, as before.
    let fresh = Device::new(&pki, &bad, true);
    let sock = TcpStream::connect(addr).await.unwrap();
    let refused = match tokio_rustls::TlsConnector::from(fresh.0.clone())
        .connect(ServerName::try_from("localhost").unwrap(), sock)
        .await
    {
        Err(_) => true,
        Ok(s) => !matches!(
            RawClient::connect_over(s, connect_packet(Protocol::V5, "dev-bad", true)).await.1,
            Recv::Packet(Packet::Connack(Connack { reason_code: ReasonCode(0), .. }))
        ),
    };
    assert!(refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tickets_false_means_a_full_handshake_every_time() {
    let (b, pki) = broker("session_tickets = false").await;
    let addr = b.addr_of(ListenerProtocol::Mqtts);
    let cert = pki.client("dev-001", Validity::Valid);
    for tls13 in [true, false] {
        let dev = Device::new(&pki, &cert, tls13);
        for _ in 0..2 {
            assert_eq!(dev.connect(addr, "dev-001").await, (false, Some(ReasonCode(0))), "tls13={tls13}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_ca_makes_the_old_tickets_useless() {
    let (b, pki) = broker("").await;
    let addr = b.addr_of(ListenerProtocol::Mqtts);
    let cert = pki.client("dev-001", Validity::Valid);
    for tls13 in [true, false] {
        std::fs::copy(pki.dir.join("ca.keep"), pki.ca_pem()).ok();
        std::fs::copy(pki.ca_pem(), pki.dir.join("ca.keep")).unwrap();
        b.server.reload();
        let dev = Device::new(&pki, &cert, tls13);
        assert_eq!(dev.connect(addr, "dev-001").await, (false, Some(ReasonCode(0))), "tls13={tls13}");
        // The operator trusts another CA only (same file, SIGHUP): the device's ticket was
        // issued under the old one, so no resumption, and its certificate no longer verifies.
        let other = TestPki::new(&pki.dir.join("other"), "other");
        std::fs::copy(other.ca_pem(), pki.ca_pem()).unwrap();
        b.server.reload();
        assert_eq!(dev.connect(addr, "dev-001").await, (false, None), "tls13={tls13}");
    }
}
