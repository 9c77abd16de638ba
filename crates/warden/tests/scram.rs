//! MQTT 5 enhanced authentication with SCRAM-SHA-256 (RFC 5802 / RFC 7677) against the real
//! broker, with a client written here from the RFC (no shared code with the server).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use mqtt_codec::{Auth, Connack, Packet, Properties, Protocol, ReasonCode};
use ring::{digest, hmac, pbkdf2};
use warden_testkit::{connect_packet, RawClient, Recv, TestBroker};

const METHOD: &str = "SCRAM-SHA-256";

fn hmac256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg).as_ref().to_vec()
}

/// The client-final message for `server_first`, and the server-final message to expect.
fn client_final(bare: &str, nonce: &str, server_first: &str, password: &str) -> (String, String) {
    let mut r = String::new();
    let mut salt = Vec::new();
    let mut iters = 0u32;
    for part in server_first.split(',') {
        if let Some(v) = part.strip_prefix("r=") {
            r = v.into();
        } else if let Some(v) = part.strip_prefix("s=") {
            salt = B64.decode(v).unwrap();
        } else if let Some(v) = part.strip_prefix("i=") {
            iters = v.parse().unwrap();
        }
    }
    assert!(r.starts_with(nonce), "server nonce extends the client's");
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iters).unwrap(),
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let client_key = hmac256(&salted, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, &client_key);
    let without_proof = format!("c=biws,r={r}");
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let signature = hmac256(stored_key.as_ref(), auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(signature).map(|(a, b)| a ^ b).collect();
    let server_key = hmac256(&salted, b"Server Key");
    let expected = format!("v={}", B64.encode(hmac256(&server_key, auth_message.as_bytes())));
    (format!("{without_proof},p={}", B64.encode(proof)), expected)
}

fn auth_packet(code: ReasonCode, data: String) -> Packet {
    let props = Properties {
        authentication_method: Some(METHOD.into()),
        authentication_data: Some(data.into_bytes().into()),
        ..Default::default()
    };
    Packet::Auth(Auth { reason_code: code, properties: props.into() })
}

/// Run the client side; returns what the broker finally answered.
async fn scram_login(b: &TestBroker, user: &str, password: &str) -> Recv {
    scram_login_keep(b, user, password).await.1
}

/// Like [`scram_login`], keeping the connection.
async fn scram_login_keep(b: &TestBroker, user: &str, password: &str) -> (RawClient, Recv) {
    scram_login_as(b, "scram-client", user, password, || {}).await
}

/// The client side with client id `client_id`; `between` runs once the server-first message
/// has arrived, before the client-final message is sent.
async fn scram_login_as(
    b: &TestBroker,
    client_id: &str,
    user: &str,
    password: &str,
    between: impl FnOnce(),
) -> (RawClient, Recv) {
    let nonce = "fyko+d2lbbFgONRv9qkxdawL";
    let bare = format!("n={user},r={nonce}");
    let mut c = connect_packet(Protocol::V5, client_id, true);
    c.properties.authentication_method = Some(METHOD.into());
    c.properties.authentication_data = Some(format!("n,,{bare}").into_bytes().into());
    let (mut cl, r) = RawClient::connect(b.addr(), c).await;
    let server_first = match r {
        Recv::Packet(Packet::Auth(a)) => {
            assert_eq!(a.reason_code, ReasonCode::CONTINUE_AUTHENTICATION);
            assert_eq!(a.properties.authentication_method.as_deref(), Some(METHOD));
            String::from_utf8(a.properties.authentication_data.clone().unwrap().to_vec()).unwrap()
        }
        other => return (cl, other),
    };
    between();
    let (final_msg, expected) = client_final(&bare, nonce, &server_first, password);
    cl.send(&auth_packet(ReasonCode::CONTINUE_AUTHENTICATION, final_msg)).await;
    let answer = cl.recv().await;
    if let Recv::Packet(Packet::Connack(a)) = &answer {
        if a.reason_code.is_success() {
            // The server proves it knows the credentials too (v=ServerSignature).
            assert_eq!(a.properties.authentication_data.as_deref(), Some(expected.as_bytes()));
        }
    }
    (cl, answer)
}

async fn broker() -> TestBroker {
    broker_and_file().await.0
}

/// The broker and its password file (ann: SCRAM "annpw", ben: argon2id "benpw").
async fn broker_and_file() -> (TestBroker, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let text = format!(
        "ann:{}\nben:{}\n",
        warden_policy::password::hash_password_scram(b"annpw"),
        warden_policy::password::hash_password(b"benpw")
    );
    std::fs::write(&passwd, text).unwrap();
    let b = TestBroker::with_config(&format!(
        "[auth]\nallow_anonymous = false\npassword_file = \"{}\"\n",
        passwd.display()
    ))
    .await;
    std::mem::forget(dir);
    (b, passwd)
}

fn code(r: &Recv) -> Option<ReasonCode> {
    match r {
        Recv::Packet(Packet::Connack(Connack { reason_code, .. })) => Some(*reason_code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_login_succeeds_with_the_right_password_and_proves_the_server() {
    let b = broker().await;
    assert_eq!(code(&scram_login(&b, "ann", "annpw").await), Some(ReasonCode(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_refusals_look_the_same_for_unknown_users() {
    let b = broker().await;
    assert_eq!(code(&scram_login(&b, "ann", "wrong").await), Some(ReasonCode::BAD_USER_NAME_OR_PASSWORD));
    // An unknown user gets a well-formed challenge and fails only at the proof.
    assert_eq!(code(&scram_login(&b, "nobody", "x").await), Some(ReasonCode::BAD_USER_NAME_OR_PASSWORD));
    // A user stored as argon2id has no SCRAM credentials: same refusal.
    assert_eq!(code(&scram_login(&b, "ben", "benpw").await), Some(ReasonCode::BAD_USER_NAME_OR_PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_users_can_still_log_in_with_a_password_and_other_methods_get_0x8c() {
    let b = broker().await;
    let mut c = connect_packet(Protocol::V5, "plain", true);
    c.username = Some("ann".into());
    c.password = Some(bytes::Bytes::from_static(b"annpw"));
    assert_eq!(code(&RawClient::connect(b.addr(), c).await.1), Some(ReasonCode(0)));
    let mut c = connect_packet(Protocol::V5, "k", true);
    c.properties.authentication_method = Some("KERBEROS".into());
    assert_eq!(code(&RawClient::connect(b.addr(), c).await.1), Some(ReasonCode::BAD_AUTHENTICATION_METHOD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scram_connection_can_re_authenticate_and_a_failed_one_is_disconnected() {
    // MQTT 5 §4.12.1: AUTH 0x19 starts re-authentication with the same method.
    let b = broker().await;
    let (mut c, r) = scram_login_keep(&b, "ann", "annpw").await;
    assert_eq!(code(&r), Some(ReasonCode(0)));
    for round in 0..2 {
        let nonce = format!("again{round}xyz");
        let bare = format!("n=ann,r={nonce}");
        c.send(&auth_packet(ReasonCode::REAUTHENTICATE, format!("n,,{bare}"))).await;
        let server_first = match c.recv().await {
            Recv::Packet(Packet::Auth(a)) if a.reason_code == ReasonCode::CONTINUE_AUTHENTICATION => {
                String::from_utf8(a.properties.authentication_data.clone().unwrap().to_vec()).unwrap()
            }
            other => panic!("{other:?}"),
        };
        let (final_msg, expected) = client_final(&bare, &nonce, &server_first, "annpw");
        c.send(&auth_packet(ReasonCode::CONTINUE_AUTHENTICATION, final_msg)).await;
        match c.recv().await {
            Recv::Packet(Packet::Auth(a)) => {
                assert_eq!(a.reason_code, ReasonCode::SUCCESS);
                assert_eq!(a.properties.authentication_data.as_deref(), Some(expected.as_bytes()));
            }
            other => panic!("{other:?}"),
        }
    }
    // A wrong password on re-authentication ends the connection (0x87).
    let bare = "n=ann,r=badbadbad".to_string();
    c.send(&auth_packet(ReasonCode::REAUTHENTICATE, format!("n,,{bare}"))).await;
    let Recv::Packet(Packet::Auth(a)) = c.recv().await else { panic!("no challenge") };
    let server_first = String::from_utf8(a.properties.authentication_data.clone().unwrap().to_vec()).unwrap();
    let (final_msg, _) = client_final(&bare, "badbadbad", &server_first, "wrong");
    c.send(&auth_packet(ReasonCode::CONTINUE_AUTHENTICATION, final_msg)).await;
    let seen = c.expect_closed_within(std::time::Duration::from_secs(3)).await;
    assert!(
        seen.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.reason_code == ReasonCode::NOT_AUTHORIZED)),
        "{seen:?}"
    );

    // Another user's name on re-authentication is refused too.
    let (mut c, _) = scram_login_keep(&b, "ann", "annpw").await;
    c.send(&auth_packet(ReasonCode::REAUTHENTICATE, "n,,n=ben,r=abcdef".into())).await;
    let seen = c.expect_closed_within(std::time::Duration::from_secs(3)).await;
    assert!(
        seen.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.reason_code == ReasonCode::NOT_AUTHORIZED)),
        "{seen:?}"
    );
}

/// Disable (or enable again) `user` in the policy store, as the admin API does.
fn set_disabled(b: &TestBroker, user: &str, disabled: bool) {
    b.server
        .policy
        .update(&mut |s| {
            s.users.entry(user.to_owned()).or_default().disabled = disabled;
            Ok(())
        })
        .unwrap();
}

/// Wait until the server sends DISCONNECT and closes; its reason codes.
async fn disconnect_codes(c: &mut RawClient) -> Vec<ReasonCode> {
    let seen = c.expect_closed_within(warden_testkit::WAIT).await;
    seen.iter()
        .filter_map(|p| match p {
            Packet::Disconnect(d) => Some(d.reason_code),
            _ => None,
        })
        .collect()
}

/// SPEC §10: a user disabled in the policy store is refused by SCRAM as by every method
/// (CONNACK 0x87 after a correct proof; a wrong one still reads 0x86), and its live
/// SCRAM-authenticated connection ends with DISCONNECT 0x87 [MQTT-3.14.2-1]; another SCRAM
/// user is untouched, and enabled again the user logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_is_refused_by_scram_and_its_scram_connection_ends() {
    let (b, passwd) = broker_and_file().await;
    let text = std::fs::read_to_string(&passwd).unwrap();
    std::fs::write(&passwd, format!("{text}cat:{}\n", warden_policy::password::hash_password_scram(b"catpw"))).unwrap();
    b.server.reload();
    let (mut live, r) = scram_login_as(&b, "ann-1", "ann", "annpw", || {}).await;
    assert_eq!(code(&r), Some(ReasonCode::SUCCESS));
    let (mut other, r) = scram_login_as(&b, "cat-1", "cat", "catpw", || {}).await;
    assert_eq!(code(&r), Some(ReasonCode::SUCCESS));

    set_disabled(&b, "ann", true);
    assert_eq!(disconnect_codes(&mut live).await, vec![ReasonCode::NOT_AUTHORIZED]);
    other.send(&Packet::PingReq).await;
    assert!(matches!(other.recv_within(warden_testkit::WAIT).await, Recv::Packet(Packet::PingResp)));

    let (_, r) = scram_login_as(&b, "ann-2", "ann", "annpw", || {}).await;
    assert_eq!(code(&r), Some(ReasonCode::NOT_AUTHORIZED), "SCRAM cannot bring a disabled user back");
    let (_, r) = scram_login_as(&b, "ann-3", "ann", "wrong", || {}).await;
    assert_eq!(code(&r), Some(ReasonCode::BAD_USER_NAME_OR_PASSWORD));

    set_disabled(&b, "ann", false);
    let (_, r) = scram_login_as(&b, "ann-4", "ann", "annpw", || {}).await;
    assert_eq!(code(&r), Some(ReasonCode::SUCCESS));
}

/// A user disabled while its SCRAM exchange waits for the client-final message is not let in
/// for good: the CONNECT's verdict was read before the change, but the connection is ended
/// (DISCONNECT 0x87) as soon as it is registered where trust changes reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_disabled_during_the_scram_exchange_does_not_stay_connected() {
    let b = broker().await;
    let (mut c, r) = scram_login_as(&b, "ann-1", "ann", "annpw", || set_disabled(&b, "ann", true)).await;
    match code(&r) {
        Some(ReasonCode::NOT_AUTHORIZED) => {}
        Some(ReasonCode::SUCCESS) => assert_eq!(disconnect_codes(&mut c).await, vec![ReasonCode::NOT_AUTHORIZED]),
        other => panic!("{other:?} {r:?}"),
    }
}

/// A user removed from the password file (SIGHUP): its live SCRAM connection ends (0x87) and
/// a new SCRAM login fails at the proof like an unknown user's (0x86).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_removed_from_the_password_file_is_refused_by_scram_and_its_connection_ends() {
    let (b, passwd) = broker_and_file().await;
    let (mut live, r) = scram_login_as(&b, "ann-1", "ann", "annpw", || {}).await;
    assert_eq!(code(&r), Some(ReasonCode::SUCCESS));
    let text = std::fs::read_to_string(&passwd).unwrap();
    let kept: String = text.lines().filter(|l| !l.starts_with("ann:")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&passwd, kept).unwrap();
    b.server.reload();
    assert_eq!(disconnect_codes(&mut live).await, vec![ReasonCode::NOT_AUTHORIZED]);
    let (_, r) = scram_login_as(&b, "ann-2", "ann", "annpw", || {}).await;
    assert_eq!(code(&r), Some(ReasonCode::BAD_USER_NAME_OR_PASSWORD));
}
