//! Enrollment by claim (issue 23) against the real broker, with real TLS clients: a device
//! holding only the batch's claim certificate asks for a certificate of its own over
//! `$warden/enroll/<id>/request` (rumqttc, and raw v5 / v3.1.1 clients), gets it on
//! `.../accepted`, comes back with it and works within its own topics; the claim certificate
//! can do nothing else; every refusal (malformed or forged request, an id already registered or
//! outside the claim's prefix, an exhausted claim, another device's id, the pre-provisioning
//! hook saying no or not answering) gives the device a clear `.../rejected` answer; a revoked
//! claim certificate ends its connection; a device renews its own certificate the same way.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use mqtt_codec::{Packet, Protocol, QoS, ReasonCode};
use serde_json::{json, Value};
use warden::config::ListenerProtocol;
use warden_testkit::http::bearer;
use warden_testkit::pki::{tls_connect, CertFiles, TestPki, Validity};
use warden_testkit::{connect_packet, publish, RawClient, Recv, TestBroker, WAIT};

const ADMIN_TOKEN: &str = "admin-token-for-enroll-tests-0123";

fn token_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| warden_policy::password::hash_password(ADMIN_TOKEN.as_bytes()))
}

struct Setup {
    broker: TestBroker,
    pki: TestPki,
    claim: CertFiles,
}

/// A broker with an mqtts listener requiring client certificates of the test CA, enrollment
/// signing with that same CA, the admin API, a role giving every client `devices/<its id>/#`,
/// and a claim `batch-1` (template: type sensor, owner acme, site berlin) for `claim`'s
/// certificate; `extra` is added to `[enroll]` (and may open other tables after it).
async fn setup(claim: Value, extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "fleet");
    let ca_dir = pki.write_ca_dir(&dir.path().join("signing"));
    let s = pki.server();
    let body = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtts\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\
         [http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash = \"{}\"\n[authz]\non_deny = \"drop\"\n\
         [enroll]\nenabled = true\nca_dir = \"{}\"\ncertificate_days = 30\n{extra}",
        s.cert.display(),
        s.key.display(),
        pki.ca_pem().display(),
        token_hash(),
        ca_dir.display(),
    );
    let broker = TestBroker::from_toml_in(dir, &body).await;
    let claim_cert = pki.client("factory-claim", Validity::Valid);
    let setup = Setup { broker, pki, claim: claim_cert };
    let rule = |id: &str, action: &str| json!({"id": id, "action": action, "topic": "devices/%i/#", "effect": "allow"});
    setup
        .admin(
            "POST",
            "/admin/roles",
            json!({"name": "fleet", "rules": [rule("pub", "publish"), rule("sub", "subscribe")]}),
        )
        .await;
    setup.admin("POST", "/admin/groups", json!({"name": "anyone-authenticated", "roles": ["fleet"]})).await;
    let mut claim = claim;
    claim["certificates"] = json!([{"pem": std::fs::read_to_string(&setup.claim.cert).unwrap()}]);
    setup.admin("POST", "/admin/claims", claim).await;
    setup
}

fn batch_1() -> Value {
    json!({"name": "batch-1", "type": "sensor", "owner": "acme", "attributes": {"site": "berlin"}})
}

impl Setup {
    /// One admin API call; the status and the JSON body.
    async fn http(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let a = self.broker.http(method, path, &[bearer(ADMIN_TOKEN)], body.map(|v| v.to_string())).await;
        (a.status, a.json())
    }

    async fn admin(&self, method: &str, path: &str, body: Value) -> Value {
        let (s, v) = self.http(method, path, Some(body)).await;
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }

    /// TLS with `cert`, then CONNECT as `id`: the client and the CONNACK's reason code.
    async fn open(&self, cert: &CertFiles, id: &str, v: Protocol) -> (RawClient, Option<ReasonCode>) {
        let addr = self.broker.addr_of(ListenerProtocol::Mqtts);
        let stream = tls_connect(addr, &self.pki.ca_pem(), Some(cert)).await.expect("handshake");
        let (c, r) = RawClient::connect_over(stream, connect_packet(v, id, true)).await;
        match r {
            Recv::Packet(Packet::Connack(a)) => (c, Some(a.reason_code)),
            _ => (c, None),
        }
    }

    async fn connected(&self, cert: &CertFiles, id: &str, v: Protocol) -> RawClient {
        let (c, code) = self.open(cert, id, v).await;
        assert_eq!(code, Some(ReasonCode::SUCCESS), "{id}");
        c
    }
}

/// A PKCS#10 request (PEM) for a fresh P-256 key, asking for `cn` (the broker decides the CN),
/// and the key (PKCS#8 PEM).
fn csr(cn: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    (params.serialize_request(&key).unwrap().pem().unwrap(), key.serialize_pem())
}

/// Subscribe to the answers, send `body` as the request (v5: with correlation data), and wait
/// for the answer: its last topic level, its JSON body and the correlation data it echoes.
async fn ask(c: &mut RawClient, id: &str, v: Protocol, body: &[u8]) -> (String, Value, Option<Bytes>) {
    let codes = c.subscribe(1, &format!("$warden/enroll/{id}/+"), QoS::AtLeastOnce).await;
    assert_eq!(codes, [ReasonCode::GRANTED_QOS_1], "subscribing to its own answers [MQTT-3.9.3-1]");
    let mut p = publish(&format!("$warden/enroll/{id}/request"), QoS::AtLeastOnce, 2, body);
    if v == Protocol::V5 {
        if let Packet::Publish(p) = &mut p {
            p.properties.correlation_data = Some(Bytes::from_static(b"req-7"));
        }
    }
    c.send(&p).await;
    let mut acked = false;
    loop {
        match c.recv_within(WAIT).await {
            Recv::Packet(Packet::PubAck(a)) if a.packet_id == 2 => {
                assert_eq!(a.reason_code, ReasonCode::SUCCESS, "the request is taken");
                acked = true;
            }
            Recv::Packet(Packet::Publish(p)) => {
                assert!(acked, "the answer comes after the PUBACK");
                if p.qos != QoS::AtMostOnce {
                    c.send(&Packet::PubAck(mqtt_codec::PubAck::new(p.packet_id))).await;
                }
                let last = p.topic.as_str().rsplit('/').next().unwrap().to_owned();
                assert_eq!(p.topic.as_str(), format!("$warden/enroll/{id}/{last}"));
                let correlation = p.properties.get().and_then(|p| p.correlation_data.clone());
                return (last, serde_json::from_slice(&p.payload).unwrap(), correlation);
            }
            other => panic!("waiting for the enrollment answer: {other:?}"),
        }
    }
}

/// Write an issued certificate and its key as files a TLS client presents.
fn cert_files(dir: &Path, name: &str, answer: &Value, key_pem: &str) -> CertFiles {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, answer["certificate"].as_str().unwrap()).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    CertFiles { cert, key, serial: 0 }
}

/// The next PUBLISH within WAIT, acknowledging QoS 1.
async fn next_publish(c: &mut RawClient) -> mqtt_codec::Publish {
    loop {
        match c.recv_within(WAIT).await {
            Recv::Packet(Packet::Publish(p)) => return p,
            Recv::Packet(_) => {}
            other => panic!("waiting for a PUBLISH: {other:?}"),
        }
    }
}

/// Publish at QoS 1 and return the PUBACK's reason code.
async fn puback(c: &mut RawClient, topic: &str, id: u16) -> ReasonCode {
    c.send(&publish(topic, QoS::AtLeastOnce, id, b"x")).await;
    loop {
        match c.recv_within(WAIT).await {
            Recv::Packet(Packet::PubAck(a)) if a.packet_id == id => return a.reason_code,
            Recv::Packet(_) => {}
            other => panic!("waiting for PUBACK {id}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_enrolls_with_the_claim_certificate_and_comes_back_as_itself() {
    let s = setup(batch_1(), "").await;
    let mut claim = s.connected(&s.claim, "sensor-100", Protocol::V5).await;
    // The claim certificate may do nothing but enroll: not its (future) own topics, not `#`,
    // not another device's answers.
    assert_eq!(puback(&mut claim, "devices/sensor-100/t", 9).await, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(claim.subscribe(3, "#", QoS::AtMostOnce).await, [ReasonCode::NOT_AUTHORIZED]);
    assert_eq!(claim.subscribe(4, "$warden/enroll/+/accepted", QoS::AtMostOnce).await, [ReasonCode::NOT_AUTHORIZED]);
    assert_eq!(claim.subscribe(5, "$warden/enroll/other/+", QoS::AtMostOnce).await, [ReasonCode::NOT_AUTHORIZED]);
    // Nobody publishes the broker's answers: a forged one is refused, never routed.
    assert_eq!(puback(&mut claim, "$warden/enroll/sensor-100/accepted", 10).await, ReasonCode::NOT_AUTHORIZED);

    let (csr_pem, key_pem) = csr("admin"); // it asks to be "admin": it gets its client id
    let body = json!({"csr": csr_pem, "context": {"serial": "SN-100"}}).to_string();
    let (last, answer, correlation) = ask(&mut claim, "sensor-100", Protocol::V5, body.as_bytes()).await;
    assert_eq!(last, "accepted", "{answer}");
    assert_eq!(correlation.as_deref(), Some(&b"req-7"[..]), "correlation data echoed [MQTT-4.10.0-?]");
    assert_eq!(answer["device_id"], "sensor-100");
    assert!(answer["ca"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    let fp = answer["fingerprint"].as_str().unwrap().to_owned();

    // Registered with the claim's template, its certificate active.
    let d = s.admin("GET", "/admin/devices/sensor-100", Value::Null).await;
    assert_eq!(
        (&d["type"], &d["owner"], &d["attributes"]["site"]),
        (&json!("sensor"), &json!("acme"), &json!("berlin"))
    );
    assert_eq!(d["certificates"][0]["fingerprint"], json!(fp));
    assert_eq!(d["certificates"][0]["status"], "active");
    let c = s.admin("GET", "/admin/claims/batch-1", Value::Null).await;
    assert_eq!(c["enrolled"], 1);

    // Back with its own certificate (the claim connection is still open: the device takes its
    // client id over), it works within its own topics.
    let files = cert_files(s.broker.dir(), "sensor-100", &answer, &key_pem);
    let mut dev = s.connected(&files, "sensor-100", Protocol::V5).await;
    match claim.recv_within(WAIT).await {
        Recv::Packet(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::SESSION_TAKEN_OVER),
        other => panic!("the claim connection should be taken over: {other:?}"),
    }
    assert_eq!(dev.subscribe(1, "devices/sensor-100/cmd", QoS::AtLeastOnce).await, [ReasonCode::GRANTED_QOS_1]);
    assert_eq!(puback(&mut dev, "devices/sensor-100/cmd", 2).await, ReasonCode::SUCCESS);
    assert_eq!(next_publish(&mut dev).await.topic.as_str(), "devices/sensor-100/cmd");
    assert_eq!(puback(&mut dev, "devices/sensor-101/cmd", 3).await, ReasonCode::NOT_AUTHORIZED);

    // The enrollment is in the audit trail.
    let audit = s.admin("GET", "/admin/audit?limit=50", Value::Null).await;
    let rec = audit.as_array().unwrap().iter().find(|r| r["action"] == "device.enroll").expect("audited");
    assert_eq!(
        (&rec["target"], &rec["result"], &rec["detail"]["fingerprint"]),
        (&json!("sensor-100"), &json!("ok"), &json!(fp))
    );

    // It renews its own certificate the same way (rotation): both stay active.
    let (csr2, _) = csr("sensor-100");
    let (last, answer2, _) = ask(&mut dev, "sensor-100", Protocol::V5, csr2.as_bytes()).await;
    assert_eq!(last, "accepted", "{answer2}");
    let d = s.admin("GET", "/admin/devices/sensor-100", Value::Null).await;
    assert_eq!(d["certificates"].as_array().unwrap().len(), 2);
    assert_eq!(s.admin("GET", "/admin/claims/batch-1", Value::Null).await["enrolled"], 1, "a renewal is no enrollment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v311_device_enrolls_with_rumqttc() {
    let s = setup(batch_1(), "").await;
    let tls = rumqttc::TlsConfiguration::Simple {
        ca: std::fs::read(s.pki.ca_pem()).unwrap(),
        alpn: None,
        client_auth: Some((std::fs::read(&s.claim.cert).unwrap(), std::fs::read(&s.claim.key).unwrap())),
    };
    let mut o = rumqttc::MqttOptions::new("sensor-7", "localhost", s.broker.addr_of(ListenerProtocol::Mqtts).port());
    o.set_transport(rumqttc::Transport::Tls(tls));
    let (client, mut ev) = rumqttc::AsyncClient::new(o, 10);
    client.subscribe("$warden/enroll/sensor-7/+", rumqttc::QoS::AtLeastOnce).await.unwrap();
    let (csr_pem, key_pem) = csr("whatever");
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut sent = false;
    let answer = loop {
        let e = tokio::time::timeout_at(deadline, ev.poll()).await.expect("answer in time").expect("rumqttc event");
        match e {
            rumqttc::Event::Incoming(rumqttc::Packet::SubAck(a)) if !sent => {
                assert_eq!(a.return_codes, [rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)]);
                // The bare PEM is a request too.
                client
                    .publish("$warden/enroll/sensor-7/request", rumqttc::QoS::AtLeastOnce, false, csr_pem.clone())
                    .await
                    .unwrap();
                sent = true;
            }
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                assert_eq!(p.topic, "$warden/enroll/sensor-7/accepted", "{:?}", String::from_utf8_lossy(&p.payload));
                break serde_json::from_slice::<Value>(&p.payload).unwrap();
            }
            _ => {}
        }
    };
    client.disconnect().await.unwrap();
    let files = cert_files(s.broker.dir(), "sensor-7", &answer, &key_pem);
    let mut dev = s.connected(&files, "sensor-7", Protocol::V311).await;
    assert_eq!(dev.subscribe(1, "devices/sensor-7/#", QoS::AtLeastOnce).await, [ReasonCode::GRANTED_QOS_1]);
    // ... and not with another id: the certificate names it.
    let (_, code) = s.open(&files, "sensor-8", Protocol::V311).await;
    assert_eq!(code, Some(ReasonCode::SUCCESS), "no client_id_must_match here: the principal is sensor-7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_give_the_device_a_clear_answer() {
    let mut claim = batch_1();
    claim["id_prefix"] = json!("sensor-");
    claim["max_devices"] = json!(2);
    let s = setup(claim, "").await;
    let rejected = |v: &Value, reason: &str| {
        assert_eq!(v["reason"], reason, "{v}");
        assert!(!v["message"].as_str().unwrap().is_empty());
    };
    for v in [Protocol::V5, Protocol::V311] {
        let id = if v == Protocol::V5 { "sensor-1" } else { "sensor-2" };
        let mut c = s.connected(&s.claim, id, v).await;
        // Not a request.
        let (last, a, _) = ask(&mut c, id, v, b"{\"csr\": 7}").await;
        assert_eq!(last, "rejected");
        rejected(&a, "malformed");
        // A forged request: the signature does not verify (no proof of possession).
        let (pem, _) = csr("x");
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents;
        let mut der = der.clone();
        *der.last_mut().unwrap() ^= 1;
        let forged = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der)
        );
        let (_, a, _) = ask(&mut c, id, v, forged.as_bytes()).await;
        rejected(&a, "malformed");
        // The device id in the body must be the client id.
        let (_, a, _) = ask(&mut c, id, v, json!({"csr": pem, "device_id": "sensor-9"}).to_string().as_bytes()).await;
        rejected(&a, "id_not_allowed");
        // And now a good one.
        let (last, a, _) = ask(&mut c, id, v, pem.as_bytes()).await;
        assert_eq!(last, "accepted", "{a}");
    }
    // The claim is exhausted (2 devices), then: outside its prefix, or an id registered.
    let mut c = s.connected(&s.claim, "sensor-3", Protocol::V5).await;
    let (_, a, _) = ask(&mut c, "sensor-3", Protocol::V5, csr("x").0.as_bytes()).await;
    rejected(&a, "claim_exhausted");
    let mut c = s.connected(&s.claim, "camera-1", Protocol::V5).await;
    let (_, a, _) = ask(&mut c, "camera-1", Protocol::V5, csr("x").0.as_bytes()).await;
    rejected(&a, "id_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_claim_enrolls_new_ids_and_a_revoked_claim_ends_its_connections() {
    let s = setup(batch_1(), "").await;
    // An id the registry holds already is not the claim's to enroll.
    let known = s.pki.client("sensor-50", Validity::Valid);
    s.admin("POST", "/admin/devices", json!({"id": "sensor-50"})).await;
    let pem = std::fs::read_to_string(&known.cert).unwrap();
    s.admin("POST", "/admin/devices/sensor-50/certificates", json!({"pem": pem})).await;
    let mut c = s.connected(&s.claim, "sensor-50", Protocol::V5).await;
    let (_, a, _) = ask(&mut c, "sensor-50", Protocol::V5, csr("x").0.as_bytes()).await;
    assert_eq!(a["reason"], "already_registered", "{a}");
    drop(c);
    // A device certificate asks for another id, or an unregistered one for itself: refused.
    let mut d = s.connected(&known, "sensor-51", Protocol::V5).await;
    let (_, a, _) = ask(&mut d, "sensor-51", Protocol::V5, csr("x").0.as_bytes()).await;
    assert_eq!(a["reason"], "id_not_allowed", "{a}");
    let stranger = s.pki.client("sensor-52", Validity::Valid);
    let mut d = s.connected(&stranger, "sensor-52", Protocol::V5).await;
    let (_, a, _) = ask(&mut d, "sensor-52", Protocol::V5, csr("x").0.as_bytes()).await;
    assert_eq!(a["reason"], "id_not_allowed", "{a}");

    // Revoking the claim certificate ends its live connections and refuses it afterwards.
    let mut c = s.connected(&s.claim, "sensor-53", Protocol::V5).await;
    let fp = s.admin("GET", "/admin/claims/batch-1", Value::Null).await["certificates"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    s.admin("PUT", &format!("/admin/claims/batch-1/certificates/{fp}"), json!({"status": "revoked"})).await;
    match c.recv_within(WAIT).await {
        Recv::Packet(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("the claim connection should end with 0x87: {other:?}"),
    }
    let (_, code) = s.open(&s.claim, "sensor-53", Protocol::V5).await;
    assert_eq!(code, Some(ReasonCode::NOT_AUTHORIZED));
    // A revoked claim certificate stays refused: the claim cannot be deleted, nor the
    // certificate made active again.
    assert_eq!(s.http("DELETE", "/admin/claims/batch-1", None).await.0, 409);
    let (st, _) =
        s.http("PUT", &format!("/admin/claims/batch-1/certificates/{fp}"), Some(json!({"status": "active"}))).await;
    assert_eq!(st, 409);
    // The API refuses malformed claims.
    let (st, _) = s.http("POST", "/admin/claims", Some(json!({"name": "b2", "id_prefix": "a/b"}))).await;
    assert_eq!(st, 400);
    let (st, _) =
        s.http("POST", "/admin/claims", Some(json!({"name": "b3", "certificates": [{"fingerprint": "zz"}]}))).await;
    assert_eq!(st, 400);
    let (st, _) = s.http("POST", "/admin/claims", Some(json!({"name": "b4", "bogus": 1}))).await;
    assert_eq!(st, 400);
}

/// A pre-provisioning hook on loopback answering every request with `answer` (HTTP 200 and
/// JSON; `None`: HTTP 500), keeping the requests' bodies.
fn hook(answer: Option<Value>) -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/provision", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let n = conn.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break Some(buf[end + 4..end + 4 + len].to_vec());
                    }
                }
            };
            if let Some(b) = body {
                kept.lock().unwrap().push(serde_json::from_slice(&b).unwrap());
            }
            let resp = match &answer {
                Some(a) => {
                    let a = a.to_string();
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{a}", a.len())
                }
                None => {
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
                }
            };
            let _ = conn.write_all(resp.as_bytes());
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_provisioning_hook_approves_adds_attributes_or_refuses() {
    // It approves, adding an attribute (the claim's template keeps what it sets).
    let (url, seen) = hook(Some(json!({"allow": true, "attributes": {"line": "7", "site": "paris"}})));
    let s = setup(batch_1(), &format!("hook_url = \"{url}\"\n")).await;
    let mut c = s.connected(&s.claim, "sensor-1", Protocol::V5).await;
    let body = json!({"csr": csr("x").0, "context": {"serial": "SN-1"}}).to_string();
    let (last, a, _) = ask(&mut c, "sensor-1", Protocol::V5, body.as_bytes()).await;
    assert_eq!(last, "accepted", "{a}");
    let d = s.admin("GET", "/admin/devices/sensor-1", Value::Null).await;
    assert_eq!((&d["attributes"]["line"], &d["attributes"]["site"]), (&json!("7"), &json!("berlin")));
    let req = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (&req["device_id"], &req["claim"], &req["rotation"]),
        (&json!("sensor-1"), &json!("batch-1"), &json!(false))
    );
    assert_eq!(req["context"]["serial"], "SN-1");
    assert_eq!(req["peer"], "127.0.0.1");
    assert_eq!(req["public_key_sha256"].as_str().unwrap().len(), 64);

    // It refuses, saying why: the device hears why.
    let (url, _) = hook(Some(json!({"allow": false, "reason": "serial SN-2 is not in the shipment"})));
    let s = setup(batch_1(), &format!("hook_url = \"{url}\"\n")).await;
    let mut c = s.connected(&s.claim, "sensor-2", Protocol::V5).await;
    let (last, a, _) = ask(&mut c, "sensor-2", Protocol::V5, csr("x").0.as_bytes()).await;
    assert_eq!(
        (last.as_str(), &a["reason"], &a["message"]),
        ("rejected", &json!("refused"), &json!("serial SN-2 is not in the shipment"))
    );
    assert_eq!(s.http("GET", "/admin/devices/sensor-2", None).await.0, 404, "nothing registered");

    // It fails (HTTP 500) or is not there: refused (fail closed), nothing registered.
    let (url, _) = hook(None);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/provision", l.local_addr().unwrap())
    };
    for url in [url, closed] {
        let s = setup(batch_1(), &format!("hook_url = \"{url}\"\nhook_timeout = \"2s\"\n")).await;
        let mut c = s.connected(&s.claim, "sensor-3", Protocol::V5).await;
        let (_, a, _) = ask(&mut c, "sensor-3", Protocol::V5, csr("x").0.as_bytes()).await;
        assert_eq!(a["reason"], "hook_unavailable", "{url}: {a}");
        assert_eq!(s.http("GET", "/admin/devices/sensor-3", None).await.0, 404);
    }
}

/// `POST /enroll` with `token` (`None`: no Authorization) and `body`: status and JSON.
async fn post_enroll(s: &Setup, token: Option<&str>, body: Value) -> (u16, Value, Option<String>) {
    let headers: Vec<_> = token.map(bearer).into_iter().collect();
    let a = s.broker.http("POST", "/enroll", &headers, Some(body.to_string())).await;
    (a.status, a.json(), a.header("WWW-Authenticate").map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_enrolls_over_http_with_a_one_time_token() {
    let s = setup(batch_1(), "").await;
    // A token bound to one device id; shown once, never listed.
    let t = s.admin("POST", "/admin/claims/batch-1/tokens", json!({"device_id": "sensor-h1", "ttl": 3600})).await;
    let token = t["token"].as_str().unwrap().to_owned();
    let listed = s.admin("GET", "/admin/claims/batch-1", Value::Null).await;
    assert_eq!(listed["tokens"][0]["id"], t["id"]);
    assert_eq!(listed["tokens"][0]["device_id"], "sensor-h1");
    assert!(!listed.to_string().contains(token.split('.').nth(1).unwrap()), "the secret is never shown again");

    // Refusals first: no token, a wrong one, a malformed request (the token stays good),
    // another device id than the token's.
    let (csr_pem, key_pem) = csr("x");
    let (st, a, challenge) = post_enroll(&s, None, json!({"csr": csr_pem})).await;
    assert_eq!((st, &a["reason"], challenge.as_deref()), (401, &json!("unauthorized"), Some("Bearer")));
    let wrong = format!("{}.{}", t["id"].as_str().unwrap(), "A".repeat(43));
    assert_eq!(post_enroll(&s, Some(&wrong), json!({"csr": csr_pem})).await.0, 401);
    assert_eq!(post_enroll(&s, Some("not-a-token"), json!({"csr": csr_pem})).await.0, 401);
    let (st, a, _) = post_enroll(
        &s,
        Some(&token),
        json!({"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}),
    )
    .await;
    assert_eq!((st, &a["reason"]), (400, &json!("malformed")));
    let (st, a, _) = post_enroll(&s, Some(&token), json!({"csr": csr_pem, "device_id": "sensor-h2"})).await;
    assert_eq!((st, &a["reason"]), (403, &json!("id_not_allowed")));

    // The good request: the device's certificate; the token is used up.
    let (st, a, _) = post_enroll(&s, Some(&token), json!({"csr": csr_pem})).await;
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["device_id"], "sensor-h1");
    let (st, a2, _) = post_enroll(&s, Some(&token), json!({"csr": csr("y").0})).await;
    assert_eq!((st, &a2["reason"]), (401, &json!("unauthorized")), "one-time");
    assert_eq!(s.admin("GET", "/admin/claims/batch-1", Value::Null).await["tokens"], json!([]));
    let audit = s.admin("GET", "/admin/audit?limit=100", Value::Null).await;
    let rec = audit.as_array().unwrap().iter().find(|r| r["action"] == "device.enroll" && r["result"] == "ok").unwrap();
    assert_eq!(rec["actor"], format!("token:{}", t["id"].as_str().unwrap()));
    assert!(!audit.to_string().contains(token.split('.').nth(1).unwrap()), "no secret in the audit trail");

    // With it, the device connects over mqtts and works within its own topics.
    let files = cert_files(s.broker.dir(), "sensor-h1", &a, &key_pem);
    let mut dev = s.connected(&files, "sensor-h1", Protocol::V5).await;
    assert_eq!(puback(&mut dev, "devices/sensor-h1/t", 1).await, ReasonCode::SUCCESS);

    // An unbound token enrolls the id the body names (within the claim's rules).
    let t = s.admin("POST", "/admin/claims/batch-1/tokens", json!({})).await;
    let token = t["token"].as_str().unwrap();
    let (st, a, _) = post_enroll(&s, Some(token), json!({"csr": csr("z").0})).await;
    assert_eq!((st, &a["reason"]), (400, &json!("malformed")), "no device_id: {a}");
    let (st, a, _) = post_enroll(&s, Some(token), json!({"csr": csr("z").0, "device_id": "sensor-h1"})).await;
    assert_eq!((st, &a["reason"]), (409, &json!("already_registered")));
    let (st, a, _) = post_enroll(&s, Some(token), json!({"csr": csr("z").0, "device_id": "sensor-h3"})).await;
    assert_eq!(st, 200, "{a}");
    // Token refusals of the admin API.
    for bad in [json!({"ttl": 0}), json!({"ttl": 99_999_999}), json!({"device_id": "a/b"}), json!({"x": 1})] {
        assert_eq!(s.http("POST", "/admin/claims/batch-1/tokens", Some(bad.clone())).await.0, 400, "{bad}");
    }
    assert_eq!(s.http("POST", "/admin/claims/nope/tokens", Some(json!({}))).await.0, 404);
}

/// `warden admin claim …` against the running broker; (success, stdout, stderr).
async fn cli(s: &Setup, args: &[&str]) -> (bool, String, String) {
    let url = format!("http://{}", s.broker.server.http_addr.unwrap());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["admin", "--url", &url, "claim"])
            .args(&args)
            .env("WARDEN_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run warden");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    })
    .await
    .unwrap()
}

/// The CLI manages claims: add with a certificate file, list, a token printed alone on
/// standard output (which enrolls over HTTP), revoke; refusals come back as the API's errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_manages_claims() {
    let s = setup(batch_1(), "").await;
    let cert = s.pki.client("claim-2", Validity::Valid);
    let path = cert.cert.display().to_string();
    let (ok, out, err) =
        cli(&s, &["add", "batch-2", "--cert", &path, "--type", "camera", "--id-prefix", "cam-", "--max-devices", "5"])
            .await;
    assert!(ok, "{out}{err}");
    let (ok, out, _) = cli(&s, &["list"]).await;
    assert!(ok && out.contains("batch-2\ttype=camera\towner=-\tid_prefix=cam-\tenrolled=0/5"), "{out}");
    let fp = out
        .lines()
        .skip_while(|l| !l.starts_with("batch-2"))
        .find_map(|l| l.strip_prefix("  cert "))
        .and_then(|l| l.split('\t').next())
        .unwrap()
        .to_owned();
    let (ok, token, err) = cli(&s, &["token", "batch-2", "--device-id", "cam-1", "--ttl", "600"]).await;
    assert!(ok && err.contains("shown once"), "{err}");
    let (st, a, _) = post_enroll(&s, Some(token.trim()), json!({"csr": csr("x").0})).await;
    assert_eq!((st, &a["device_id"]), (200, &json!("cam-1")), "{a}");
    let (ok, out, err) = cli(&s, &["cert-status", "batch-2", &fp, "revoked"]).await;
    assert!(ok, "{out}{err}");
    let (ok, _, err) = cli(&s, &["remove", "batch-2"]).await;
    assert!(!ok && err.contains("409"), "{err}");
    let (ok, _, err) = cli(&s, &["token", "batch-2", "--ttl", "0"]).await;
    assert!(!ok && err.contains("400"), "{err}");
    let (ok, _, err) = cli(&s, &["add", "bad:name"]).await;
    assert!(!ok && err.contains("400"), "{err}");
}

/// Revoking an enrolled certificate in the registry also writes it into the signing CA's CRL
/// (`<ca_dir>/ca.crl`, as `warden cert revoke` does), so that every other party that trusts
/// the CA learns it; `warden cert revoke --cn` finds enrolled certificates too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_in_the_registry_reaches_the_cas_crl() {
    let s = setup(batch_1(), "").await;
    let mut serials = Vec::new();
    let mut fps = Vec::new();
    for id in ["sensor-r1", "sensor-r2"] {
        let t = s.admin("POST", "/admin/claims/batch-1/tokens", json!({"device_id": id})).await;
        let (st, a, _) = post_enroll(&s, t["token"].as_str(), json!({"csr": csr("x").0})).await;
        assert_eq!(st, 200, "{a}");
        serials.push(a["serial"].as_str().unwrap().to_owned());
        fps.push(a["fingerprint"].as_str().unwrap().to_owned());
    }
    let signing = s.broker.dir().join("signing");
    let issued: Value = serde_json::from_slice(&std::fs::read(signing.join("issued.json")).unwrap()).unwrap();
    assert_eq!(issued["certificates"].as_array().unwrap().len(), 2, "{issued}");
    assert!(!signing.join("ca.crl").exists(), "nothing revoked yet");

    s.admin("PUT", &format!("/admin/devices/sensor-r1/certificates/{}", fps[0]), json!({"status": "revoked"})).await;
    let crl_serials = |p: &Path| -> Vec<String> {
        let pem = std::fs::read(p).unwrap();
        let der = x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents;
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        crl.iter_revoked_certificates().map(|r| r.raw_serial_as_string().replace(':', "")).collect()
    };
    // Written before the admin call answered.
    assert_eq!(crl_serials(&signing.join("ca.crl")), [serials[0].clone()]);
    // Inactive is not revoked: the CRL does not change.
    s.admin("PUT", &format!("/admin/devices/sensor-r2/certificates/{}", fps[1]), json!({"status": "inactive"})).await;
    assert_eq!(crl_serials(&signing.join("ca.crl")), [serials[0].clone()]);
    // The CLI revokes an enrolled certificate by device id, into the same CRL.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["cert", "revoke", "--dir"])
        .arg(&signing)
        .args(["--cn", "sensor-r2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut got = crl_serials(&signing.join("ca.crl"));
    got.sort();
    let mut want = serials.clone();
    want.sort();
    assert_eq!(got, want);
}
