//! TLS, mutual TLS and X.509 client identity (issue 4) against the real broker, with a PKI
//! made by the tests (rcgen). Every refusal is tested next to its accept.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use mqtt_codec::{Connack, Packet, Protocol, ReasonCode};
use rcgen::{DnType, ExtendedKeyUsagePurpose};
use warden::config::ListenerProtocol;
use warden_testkit::pki::{tls_connect, warden_cert, CertFiles, TestPki, Validity};
use warden_testkit::{connect_packet, RawClient, Recv, TestBroker};

struct Setup {
    broker: TestBroker,
    pki: TestPki,
}

/// A broker with an mqtts and a wss listener requiring client certificates from `ca`, plus
/// whatever `extra` TOML says (listener keys first, then tables).
async fn setup(listener_extra: &str, tables: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "fleet");
    pki.crl("fleet.crl", &[]); // an empty CRL, for listeners that name one
    let s = pki.server();
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n{listener_extra}",
        s.cert.display(),
        s.key.display(),
        pki.ca_pem().display()
    );
    let body = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtts\"\n{tls}\n[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"wss\"\n{tls}\n{tables}"
    );
    let broker = TestBroker::from_toml_in(dir, &body).await;
    Setup { broker, pki }
}

impl Setup {
    async fn connack(&self, client: Option<&CertFiles>, cid: &str, v: Protocol) -> Result<ReasonCode, String> {
        let addr = self.broker.addr_of(ListenerProtocol::Mqtts);
        let stream = tls_connect(addr, &self.pki.ca_pem(), client).await?;
        match RawClient::connect_over(stream, connect_packet(v, cid, true)).await.1 {
            Recv::Packet(Packet::Connack(Connack { reason_code, .. })) => Ok(reason_code),
            other => Err(format!("no CONNACK: {other:?}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_client_certificate_is_accepted_on_v3_and_v5() {
    let s = setup("", "").await;
    let dev = s.pki.client("dev-001", Validity::Valid);
    assert_eq!(s.connack(Some(&dev), "dev-001", Protocol::V5).await, Ok(ReasonCode(0)));
    assert_eq!(s.connack(Some(&dev), "dev-001", Protocol::V311).await, Ok(ReasonCode(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_certificates_never_reach_mqtt() {
    let s = setup("crl = \"{dir}/pki/fleet.crl\"", "").await;
    let foreign = TestPki::new(&s.pki.dir.join("foreign"), "foreign");
    let revoked = s.pki.client("dev-revoked", Validity::Valid);
    // The broker loaded the CRL at start: write it, then reload, as an operator would.
    s.pki.crl("fleet.crl", &[revoked.serial]);
    s.broker.server.reload();
    let cases = [
        ("no certificate", None),
        ("foreign CA", Some(foreign.client("dev-001", Validity::Valid))),
        ("expired", Some(s.pki.client("dev-old", Validity::Expired))),
        ("not yet valid", Some(s.pki.client("dev-new", Validity::NotYetValid))),
        ("revoked (CRL)", Some(revoked)),
        (
            "serverAuth only (wrong extended key usage)",
            Some(s.pki.leaf("eku", |p| {
                p.distinguished_name.push(DnType::CommonName, "dev-eku");
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            })),
        ),
    ];
    for (what, cert) in cases {
        let r = s.connack(cert.as_ref(), "x", Protocol::V311).await;
        assert!(r.is_err(), "{what}: expected a refused handshake, got {r:?}");
    }
    // The same CA's non-revoked certificates still work after the CRL reload.
    let ok = s.pki.client("dev-ok", Validity::Valid);
    assert_eq!(s.connack(Some(&ok), "dev-ok", Protocol::V5).await, Ok(ReasonCode(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_unsafe_identities_are_refused_not_guessed() {
    let s = setup("", "").await;
    // CN=admin, CN=device-001: two CN attributes (the second written with the CN OID as a
    // custom type, since rcgen keys names by type). Must not become `admin`.
    let two_cn = s.pki.leaf("two-cn", |p| {
        p.distinguished_name.push(DnType::CommonName, "admin");
        p.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 3]), "device-001");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    });
    assert_eq!(s.connack(Some(&two_cn), "admin", Protocol::V5).await, Ok(ReasonCode::NOT_AUTHORIZED));
    assert_eq!(s.connack(Some(&two_cn), "admin", Protocol::V311).await, Ok(ReasonCode(0x05)));
    for bad in ["dev/1", "dev+1", "dev#1", "*"] {
        let c = s.pki.client(bad, Validity::Valid);
        assert_eq!(s.connack(Some(&c), "x", Protocol::V5).await, Ok(ReasonCode::NOT_AUTHORIZED), "CN {bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_must_match_the_certificate_identity() {
    let s = setup("", "[identity]\nclient_id_must_match = \"exact\"\n").await;
    let dev = s.pki.client("dev-001", Validity::Valid);
    assert_eq!(s.connack(Some(&dev), "dev-001", Protocol::V5).await, Ok(ReasonCode(0)));
    assert_eq!(s.connack(Some(&dev), "dev-002", Protocol::V5).await, Ok(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID));
    assert_eq!(s.connack(Some(&dev), "dev-002", Protocol::V311).await, Ok(ReasonCode(0x02)));

    let s = setup("", "[identity]\nclient_id_must_match = \"prefix\"\n").await;
    let dev = s.pki.client("dev-001", Validity::Valid);
    assert_eq!(s.connack(Some(&dev), "dev-001/sensor-a", Protocol::V5).await, Ok(ReasonCode(0)));
    assert_eq!(s.connack(Some(&dev), "dev-00", Protocol::V5).await, Ok(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_principal_cannot_take_over_another_devices_session() {
    // Identity binding with certificate principals: dev-002 cannot reuse dev-001's client id.
    let s = setup("", "").await;
    let one = s.pki.client("dev-001", Validity::Valid);
    let two = s.pki.client("dev-002", Validity::Valid);
    let addr = s.broker.addr_of(ListenerProtocol::Mqtts);
    let stream = tls_connect(addr, &s.pki.ca_pem(), Some(&one)).await.unwrap();
    let (_holder, r) = RawClient::connect_over(stream, connect_packet(Protocol::V5, "dev-001", false)).await;
    assert!(matches!(r, Recv::Packet(Packet::Connack(Connack { reason_code: ReasonCode(0), .. }))));
    let mut cp = connect_packet(Protocol::V5, "dev-001", false);
    cp.properties.session_expiry_interval = Some(60);
    let stream = tls_connect(addr, &s.pki.ca_pem(), Some(&two)).await.unwrap();
    let (_thief, r) = RawClient::connect_over(stream, cp).await;
    assert!(matches!(r, Recv::Packet(Packet::Connack(Connack { reason_code: ReasonCode(0x87), .. }))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates_fall_through_to_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, format!("ann:{}\n", warden_policy::password::hash_password(b"annpw"))).unwrap();
    let s = setup(
        "client_cert = \"optional\"",
        &format!("[auth]\nallow_anonymous = false\npassword_file = \"{}\"\n", passwd.display()),
    )
    .await;
    assert_eq!(s.connack(None, "anon", Protocol::V5).await, Ok(ReasonCode::NOT_AUTHORIZED), "no cert, no password");
    let addr = s.broker.addr_of(ListenerProtocol::Mqtts);
    let stream = tls_connect(addr, &s.pki.ca_pem(), None).await.unwrap();
    let mut cp = connect_packet(Protocol::V5, "ann-laptop", true);
    cp.username = Some("ann".into());
    cp.password = Some(bytes::Bytes::from_static(b"annpw"));
    let (_c, r) = RawClient::connect_over(stream, cp).await;
    assert!(matches!(r, Recv::Packet(Packet::Connack(Connack { reason_code: ReasonCode(0), .. }))), "{r:?}");
    let dev = s.pki.client("dev-001", Validity::Valid);
    assert_eq!(s.connack(Some(&dev), "dev-001", Protocol::V5).await, Ok(ReasonCode(0)));
    let foreign = TestPki::new(&s.pki.dir.join("foreign"), "foreign");
    let f = foreign.client("dev-001", Validity::Valid);
    assert!(s.connack(Some(&f), "dev-001", Protocol::V5).await.is_err(), "a bad certificate is still refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_identity_sources() {
    let s = setup("identity_from_cert = \"fingerprint\"", "[identity]\nclient_id_must_match = \"exact\"\n").await;
    let dev = s.pki.client("dev-001", Validity::Valid);
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(&dev.cert).unwrap();
    let fp =
        warden_policy::cert::identity_from_der(der.as_ref(), warden_policy::cert::IdentitySource::Fingerprint).unwrap();
    assert_eq!(fp.len(), 64);
    assert_eq!(s.connack(Some(&dev), &fp, Protocol::V5).await, Ok(ReasonCode(0)));
    assert_eq!(s.connack(Some(&dev), "dev-001", Protocol::V5).await, Ok(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID));

    let s = setup("identity_from_cert = \"san-dns\"", "[identity]\nclient_id_must_match = \"exact\"\n").await;
    let dev = s.pki.leaf("san", |p| {
        p.distinguished_name.push(DnType::CommonName, "ignored");
        p.subject_alt_names = vec![rcgen::SanType::DnsName("dev-009.fleet.example".try_into().unwrap())];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    });
    assert_eq!(s.connack(Some(&dev), "dev-009.fleet.example", Protocol::V5).await, Ok(ReasonCode(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_dropping_connections() {
    let s = setup("", "").await;
    let dev = s.pki.client("dev-001", Validity::Valid);
    let addr = s.broker.addr_of(ListenerProtocol::Mqtts);
    let stream = tls_connect(addr, &s.pki.ca_pem(), Some(&dev)).await.unwrap();
    let (mut live, _) = RawClient::connect_over(stream, connect_packet(Protocol::V5, "dev-001", true)).await;

    // Swap in a server certificate from a new CA (same file names) and reload.
    let next = TestPki::new(&s.pki.dir.join("next"), "next");
    std::fs::copy(next.server().cert, s.pki.server().cert).unwrap();
    std::fs::copy(next.server().key, s.pki.server().key).unwrap();
    s.broker.server.reload();
    assert!(tls_connect(addr, &next.ca_pem(), Some(&dev)).await.is_ok(), "new certificate served");
    // The live connection was not dropped.
    live.send(&Packet::PingReq).await;
    assert_eq!(live.recv().await, Recv::Packet(Packet::PingResp));

    // A broken file is refused and the certificate in force stays.
    std::fs::write(s.pki.server().key, "not a key").unwrap();
    s.broker.server.reload();
    let stream = tls_connect(addr, &next.ca_pem(), Some(&dev)).await.unwrap();
    let (_c, r) = RawClient::connect_over(stream, connect_packet(Protocol::V5, "dev-001b", true)).await;
    assert!(matches!(r, Recv::Packet(Packet::Connack(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_client_certificate() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let s = setup("", "").await;
    let dev = s.pki.client("dev-002", Validity::Valid);
    let addr = s.broker.addr_of(ListenerProtocol::Wss);
    let tls = tls_connect(addr, &s.pki.ca_pem(), Some(&dev)).await.unwrap();
    let mut req = format!("wss://localhost:{}/mqtt", addr.port()).into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.expect("upgrade over TLS");
    let mut buf = bytes::BytesMut::new();
    Packet::Connect(Box::new(connect_packet(Protocol::V311, "dev-002", true))).encode(Protocol::V311, &mut buf);
    ws.send(Message::Binary(buf.to_vec().into())).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(msg.into_data().as_ref(), b"\x20\x02\x00\x00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_over_tls_with_a_client_certificate() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet as RPacket, QoS, TlsConfiguration, Transport};
    let s = setup("", "").await;
    let dev = s.pki.client("dev-003", Validity::Valid);
    let addr = s.broker.addr_of(ListenerProtocol::Mqtts);
    let mut o = MqttOptions::new("dev-003", "localhost", addr.port());
    o.set_transport(Transport::Tls(TlsConfiguration::Simple {
        ca: std::fs::read(s.pki.ca_pem()).unwrap(),
        alpn: None,
        client_auth: Some((std::fs::read(&dev.cert).unwrap(), std::fs::read(&dev.key).unwrap())),
    }));
    let (client, mut el) = AsyncClient::new(o, 10);
    client.subscribe("tls/t", QoS::AtLeastOnce).await.unwrap();
    client.publish("tls/t", QoS::AtLeastOnce, false, b"over tls".to_vec()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(RPacket::Publish(p))) => return p.payload,
                Ok(_) => {}
                Err(e) => panic!("rumqttc: {e}"),
            }
        }
    })
    .await
    .expect("round trip");
    assert_eq!(&got[..], b"over tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_counts_against_connect_timeout() {
    let s = setup("", "[limits]\nconnect_timeout = \"1s\"\n").await;
    let addr = s.broker.addr_of(ListenerProtocol::Mqtts);
    let mut raw = RawClient::open(addr, Protocol::V311).await;
    raw.send_bytes(b"\x16\x03\x01").await; // the start of a ClientHello, then nothing
    raw.expect_closed_within(Duration::from_secs(4)).await;
}

/// Issue 17 (smaller ones): CRLs are checked for the whole chain, not the end-entity
/// certificate only. A device certificate issued by an intermediate CA: once the root's CRL
/// revokes the intermediate (SIGHUP), the device's live connection ends (0x87) and its new
/// handshakes are refused. `crl_scope = "end_entity"` keeps the old, leaf-only check. With the
/// chain checked, every issuing CA needs its CRL: without the root's, the intermediate's status
/// is unknown and its certificates are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_intermediate_ca_refuses_its_certificates_and_ends_their_connections() {
    for scope in ["chain", "end_entity"] {
        let dir = tempfile::tempdir().unwrap();
        let root = TestPki::new(&dir.path().join("pki"), "fleet");
        let ops = root.intermediate("ops");
        let (root_crl, ops_crl) = (root.crl("root.crl", &[]), ops.crl("ops.crl", &[]));
        let s = root.server();
        let body = format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtts\"\ncert = \"{}\"\nkey = \"{}\"\n\
             client_ca = \"{}\"\ncrl = [\"{}\", \"{}\"]\ncrl_scope = \"{scope}\"\n",
            s.cert.display(),
            s.key.display(),
            root.ca_pem().display(),
            root_crl.display(),
            ops_crl.display()
        );
        let b = TestBroker::from_toml_in(dir, &body).await;
        let addr = b.addr_of(ListenerProtocol::Mqtts);
        let dev = ops.client("dev-i", Validity::Valid);
        let connect = |id: &'static str| {
            let (ca, dev) = (root.ca_pem(), dev.clone());
            async move {
                let stream = tls_connect(addr, &ca, Some(&dev)).await?;
                let (c, r) = RawClient::connect_over(stream, connect_packet(Protocol::V5, id, true)).await;
                match r {
                    Recv::Packet(Packet::Connack(a)) if a.reason_code == ReasonCode(0) => Ok(c),
                    other => Err(format!("{other:?}")),
                }
            }
        };
        let mut live = connect("dev-i").await.expect("issued by the intermediate: accepted");
        root.crl("root.crl", &[ops.serial]);
        b.server.reload();
        if scope == "chain" {
            let seen = live.expect_closed_within(Duration::from_secs(5)).await;
            assert!(
                seen.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.reason_code == ReasonCode::NOT_AUTHORIZED)),
                "{scope}: {seen:?}"
            );
            assert!(connect("dev-i2").await.is_err(), "the revoked intermediate's certificates are refused");
        } else {
            live.send(&Packet::PingReq).await;
            assert_eq!(live.recv_within(Duration::from_secs(5)).await, Recv::Packet(Packet::PingResp));
            assert!(connect("dev-i2").await.is_ok(), "end_entity: the intermediate is not checked");
        }
    }

    // Chain checked, the root's CRL missing: the intermediate's status is unknown -> refused.
    let dir = tempfile::tempdir().unwrap();
    let root = TestPki::new(&dir.path().join("pki"), "fleet");
    let ops = root.intermediate("ops");
    let ops_crl = ops.crl("ops.crl", &[]);
    let s = root.server();
    let body = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtts\"\ncert = \"{}\"\nkey = \"{}\"\n\
         client_ca = \"{}\"\ncrl = \"{}\"\n",
        s.cert.display(),
        s.key.display(),
        root.ca_pem().display(),
        ops_crl.display()
    );
    let b = TestBroker::from_toml_in(dir, &body).await;
    let dev = ops.client("dev-u", Validity::Valid);
    let addr = b.addr_of(ListenerProtocol::Mqtts);
    let refused = match tls_connect(addr, &root.ca_pem(), Some(&dev)).await {
        Err(_) => true,
        Ok(stream) => !matches!(
            RawClient::connect_over(stream, connect_packet(Protocol::V5, "dev-u", true)).await.1,
            Recv::Packet(Packet::Connack(_))
        ),
    };
    assert!(refused, "unknown revocation status of the intermediate is a refusal");
}

/// Issue 17 (smaller ones): a CRL without a CRL Number (RFC 5280 §5.2.3) is refused at start
/// with an error naming the CRL file, not the client CA; the same CRL with a number is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_without_a_crl_number_is_refused_by_its_own_name() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "fleet");
    let s = pki.server();
    let crl = dir.path().join("numberless.crl");
    std::fs::write(&crl, warden_testkit::pki::crl_der(false)).unwrap();
    let cfg_path = dir.path().join("warden.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "data_dir = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtts\"\ncert = \"{}\"\nkey = \"{}\"\n\
             client_ca = \"{}\"\ncrl = \"{}\"\n",
            dir.path().display(),
            s.cert.display(),
            s.key.display(),
            pki.ca_pem().display(),
            crl.display()
        ),
    )
    .unwrap();
    let cfg = warden::config::Config::load(&cfg_path).unwrap();
    let Err(err) = warden::server::Server::start(&cfg).await else { panic!("started with a numberless CRL") };
    let err = format!("{err:#}");
    assert!(err.contains("numberless.crl") && err.contains("no CRL Number"), "{err}");
    assert!(!err.contains("fleet-ca.pem"), "the CA file is not blamed: {err}");

    let mut revoked = warden_policy::trust::RevokedCerts::default();
    revoked.add_der(&warden_testkit::pki::crl_der(true)).unwrap();
    assert_eq!(revoked.len(), 1);
}

/// Issue 17 (smaller ones): a success for principal X does not lift the backoff of the user
/// name Y the CONNECT claimed — here a device certificate sent with `ann`'s name and a wrong
/// password (the certificate authenticates, the password is not consulted) leaves `ann`'s
/// backoff from this address in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_principals_success_does_not_lift_a_user_names_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, format!("ann:{}\n", warden_policy::password::hash_password(b"annpw"))).unwrap();
    let s = setup(
        "client_cert = \"optional\"",
        &format!(
            "[auth]\npassword_file = \"{}\"\n[limits]\nauth_fail_ban = {{ failures = 1000 }}\n\
             auth_fail_backoff = {{ failures = 2, initial = \"60s\", max = \"60s\" }}\n",
            passwd.display()
        ),
    )
    .await;
    let addr = s.broker.addr_of(ListenerProtocol::Mqtts);
    let login = |cert: Option<CertFiles>, cid: &'static str, pw: &'static [u8]| {
        let ca = s.pki.ca_pem();
        async move {
            let stream = tls_connect(addr, &ca, cert.as_ref()).await.unwrap();
            let mut cp = connect_packet(Protocol::V5, cid, true);
            cp.username = Some("ann".into());
            cp.password = Some(bytes::Bytes::from_static(pw));
            match RawClient::connect_over(stream, cp).await.1 {
                Recv::Packet(Packet::Connack(a)) => a.reason_code,
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(login(None, "ann-1", b"guess").await, ReasonCode(0x86));
    assert_eq!(login(None, "ann-2", b"guess").await, ReasonCode(0x86));
    assert_eq!(login(None, "ann-3", b"annpw").await, ReasonCode::CONNECTION_RATE_EXCEEDED, "ann backs off");
    let dev = s.pki.client("dev-001", Validity::Valid);
    assert_eq!(login(Some(dev), "dev-001", b"guess").await, ReasonCode(0), "the certificate authenticates");
    assert_eq!(
        login(None, "ann-4", b"annpw").await,
        ReasonCode::CONNECTION_RATE_EXCEEDED,
        "dev-001's success is not ann's: her backoff stays"
    );
}

/// `warden cert revoke` end to end: a CA and two device certificates made by the binary, one
/// revoked; a listener with `crl = "DIR/ca.crl"` refuses it and accepts the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_written_by_cert_revoke_refuses_that_device_and_accepts_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let cert = |args: &[&str]| warden_cert(env!("CARGO_BIN_EXE_warden"), &pki, args);
    for args in [&["ca"][..], &["server"], &["client", "--cn", "dev-8"], &["client", "--cn", "dev-9"]] {
        cert(args);
    }
    cert(&["revoke", "--cn", "dev-9"]);
    let body = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtts\"\ncert = \"{p}/server.pem\"\nkey = \"{p}/server.key\"\n\
         client_ca = \"{p}/ca.pem\"\nclient_cert = \"required\"\nidentity_from_cert = \"cn\"\ncrl = \"{p}/ca.crl\"\n",
        p = pki.display()
    );
    let broker = TestBroker::from_toml_in(dir, &body).await;
    let addr = broker.addr_of(ListenerProtocol::Mqtts);
    let files =
        |n: &str| CertFiles { cert: pki.join(format!("{n}.pem")), key: pki.join(format!("{n}.key")), serial: 0 };
    let connack = |n: &'static str| {
        let f = files(n);
        let ca = pki.join("ca.pem");
        async move {
            let stream = tls_connect(addr, &ca, Some(&f)).await?;
            match RawClient::connect_over(stream, connect_packet(Protocol::V5, n, true)).await.1 {
                Recv::Packet(Packet::Connack(Connack { reason_code, .. })) => Ok(reason_code),
                other => Err(format!("no CONNACK: {other:?}")),
            }
        }
    };
    assert_eq!(connack("dev-8").await, Ok(ReasonCode(0)));
    assert!(connack("dev-9").await.is_err(), "the revoked certificate got through");
}
