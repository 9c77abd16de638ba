//! Authorization with a Mosquitto-syntax ACL file against the real broker (SPEC §6): per-user
//! topic rules for publish (per `on_deny`), subscribe and delivery; `%u` / `%c` patterns and
//! their injection safety (CVE-2017-7650); `$SYS`; shared subscriptions; wills; reload.
//!
//! Users come from a password file (all with the password [`PW`]). To show that a message is
//! NOT delivered, a later "fence" message that must arrive first is published: the broker
//! routes a PUBLISH before acknowledging it, so messages acknowledged one after the other are
//! queued to a subscriber in that order, whoever published them. Nothing sleeps to synchronise;
//! the one bounded wait lets `$SYS` refreshes happen.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

use mqtt_codec::{
    Connack, Connect, LastWill, Packet, Properties, Protocol, PubAck, QoS, ReasonCode, Subscribe, SubscriptionOptions,
    TopicFilter, TopicName,
};
use warden_policy::password::hash_password;
use warden_testkit::{connect_packet, connected, publish, RawClient, Recv, TestBroker, WAIT};

const LISTENER: &str = "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n";
const PW: &str = "correct horse";

/// Every user has the password [`PW`]. `+` and `alice/x` are hostile names (a user named `#`
/// cannot exist: a password-file line starting with `#` is a comment).
const USERS: &[&str] = &["alice", "bob", "carol", "dave", "erin", "sysmon", "+", "alice/x", "alice+"];

const ACL: &str = "\
# No topic lines before the first user: anonymous clients get nothing.
pattern readwrite users/%u/#
pattern readwrite clients/%c/#

user alice
topic readwrite sensors/#
topic deny sensors/secret/#
topic read commands/#
topic write will/alice

user bob
topic read sensors/#
topic deny sensors/secret/#
topic read alarms/+/high

user carol
topic read #

user dave
topic readwrite #

user erin
topic read $share/g/private/#

user sysmon
topic read $SYS/#
topic read fence/#
";

fn passwd() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let hash = hash_password(PW.as_bytes());
        USERS.iter().map(|u| format!("{u}:{hash}\n")).collect()
    })
}

/// A broker with the password file, the ACL `acl` and `on_deny`.
async fn broker(acl: &str, on_deny: &str) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("passwd"), passwd()).unwrap();
    std::fs::write(dir.path().join("acl"), acl).unwrap();
    TestBroker::from_toml_in(
        dir,
        &format!(
            "{LISTENER}[auth]\npassword_file = \"{{dir}}/passwd\"\n\
             [authz]\nacl_file = \"{{dir}}/acl\"\non_deny = \"{on_deny}\"\n\
             [limits]\nsys_interval = \"1s\"\n"
        ),
    )
    .await
}

fn login_packet(v: Protocol, client_id: &str, user: &str) -> Connect {
    let mut c = connect_packet(v, client_id, true);
    c.username = Some(user.to_owned());
    c.password = Some(bytes::Bytes::from_static(PW.as_bytes()));
    c
}

/// Connect `user` (must succeed).
async fn login(b: &TestBroker, v: Protocol, client_id: &str, user: &str) -> RawClient {
    connected(b.addr(), login_packet(v, client_id, user)).await.0
}

async fn connack(b: &TestBroker, c: Connect) -> ReasonCode {
    let (_c, r) = RawClient::connect(b.addr(), c).await;
    match r {
        Recv::Packet(Packet::Connack(Connack { reason_code, .. })) => reason_code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Publish at QoS 1 and return the PUBACK's reason code (v3.1.1: always success).
async fn puback(c: &mut RawClient, topic: &str, packet_id: u16) -> ReasonCode {
    c.send(&publish(topic, QoS::AtLeastOnce, packet_id, topic.as_bytes())).await;
    match c.recv().await {
        Recv::Packet(Packet::PubAck(a)) if a.packet_id == packet_id => a.reason_code,
        other => panic!("expected PUBACK {packet_id} for {topic}, got {other:?}"),
    }
}

fn retained(topic: &str, packet_id: u16) -> Packet {
    match publish(topic, QoS::AtLeastOnce, packet_id, topic.as_bytes()) {
        Packet::Publish(mut p) => {
            p.retain = true;
            Packet::Publish(p)
        }
        _ => unreachable!(),
    }
}

async fn assert_alive(c: &mut RawClient) {
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Recv::Packet(Packet::PingResp), "connection should still be up");
}

/// Topics of the PUBLISHes received up to and including `fence` (QoS 1 ones are acknowledged).
async fn topics_until(c: &mut RawClient, fence: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let p = c.expect_publish().await;
        if p.qos != QoS::AtMostOnce {
            c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
        }
        let t = p.topic.as_str().to_owned();
        seen.push(t.clone());
        if t == fence {
            return seen;
        }
    }
}

/// A SUBSCRIBE for several filters at QoS 1; returns the SUBACK's codes.
async fn subscribe_many(c: &mut RawClient, packet_id: u16, filters: &[&str]) -> Vec<ReasonCode> {
    let filters = filters
        .iter()
        .map(|f| (TopicFilter::new(f).unwrap(), SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() }))
        .collect();
    c.send(&Packet::Subscribe(Subscribe { packet_id, properties: Default::default(), filters })).await;
    match c.recv().await {
        Recv::Packet(Packet::SubAck(a)) if a.packet_id == packet_id => a.reason_codes,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

const OK1: ReasonCode = ReasonCode::GRANTED_QOS_1;
const DENIED: ReasonCode = ReasonCode::NOT_AUTHORIZED; // 0x87
const V3_DENIED: ReasonCode = ReasonCode::V3_SUBACK_FAILURE; // 0x80

// ------------------------------------------------------------------------------------------
// 1. Per-user rules: publish, subscribe, receive
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_denied_is_acknowledged_0x87_and_dropped_v5() {
    let b = broker(ACL, "drop").await;
    let mut carol = login(&b, Protocol::V5, "carol-1", "carol").await;
    assert_eq!(carol.subscribe(1, "#", QoS::AtLeastOnce).await, vec![OK1]);

    let mut alice = login(&b, Protocol::V5, "alice-1", "alice").await;
    assert_eq!(puback(&mut alice, "sensors/a", 1).await, ReasonCode::SUCCESS, "readwrite");
    assert_eq!(puback(&mut alice, "sensors/secret/x", 2).await, DENIED, "deny wins over readwrite sensors/#");
    assert_eq!(puback(&mut alice, "commands/x", 3).await, DENIED, "read is not write");
    assert_eq!(puback(&mut alice, "elsewhere/x", 4).await, DENIED, "no rule: denied");
    assert_eq!(puback(&mut alice, "will/alice", 5).await, ReasonCode::SUCCESS, "write");
    // QoS 2: PUBREC 0x87 ends the exchange.
    alice.send(&publish("commands/y", QoS::ExactlyOnce, 6, b"x")).await;
    match alice.recv().await {
        Recv::Packet(Packet::PubRec(a)) => assert_eq!((a.packet_id, a.reason_code), (6, DENIED)),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // QoS 0: nothing to acknowledge, nothing delivered.
    alice.send(&publish("commands/z", QoS::AtMostOnce, 0, b"x")).await;
    assert_eq!(puback(&mut alice, "sensors/fence", 7).await, ReasonCode::SUCCESS);
    assert_alive(&mut alice).await;

    assert_eq!(topics_until(&mut carol, "sensors/fence").await, ["sensors/a", "will/alice", "sensors/fence"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_denied_is_acknowledged_as_usual_and_dropped_v311() {
    let b = broker(ACL, "drop").await;
    let mut carol = login(&b, Protocol::V311, "carol-1", "carol").await;
    assert_eq!(carol.subscribe(1, "#", QoS::AtLeastOnce).await, vec![OK1]);

    let mut alice = login(&b, Protocol::V311, "alice-1", "alice").await;
    assert_eq!(puback(&mut alice, "sensors/a", 1).await, ReasonCode::SUCCESS);
    // Denied: a v3.1.1 PUBACK carries no reason; the connection stays up.
    assert_eq!(puback(&mut alice, "commands/x", 2).await, ReasonCode::SUCCESS);
    assert_eq!(puback(&mut alice, "sensors/secret/x", 3).await, ReasonCode::SUCCESS);
    // QoS 2 denied: the usual PUBREC / PUBREL / PUBCOMP.
    alice.send(&publish("commands/y", QoS::ExactlyOnce, 4, b"x")).await;
    assert!(matches!(alice.recv().await, Recv::Packet(Packet::PubRec(a)) if a.packet_id == 4));
    alice.send(&Packet::PubRel(PubAck::new(4))).await;
    assert!(matches!(alice.recv().await, Recv::Packet(Packet::PubComp(a)) if a.packet_id == 4));
    alice.send(&publish("commands/z", QoS::AtMostOnce, 0, b"x")).await;
    assert_eq!(puback(&mut alice, "sensors/fence", 5).await, ReasonCode::SUCCESS);
    assert_alive(&mut alice).await;

    assert_eq!(topics_until(&mut carol, "sensors/fence").await, ["sensors/a", "sensors/fence"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_denied_disconnects_with_on_deny_disconnect() {
    let b = broker(ACL, "disconnect").await;
    let mut carol = login(&b, Protocol::V5, "carol-1", "carol").await;
    assert_eq!(carol.subscribe(1, "#", QoS::AtLeastOnce).await, vec![OK1]);

    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut alice = login(&b, Protocol::V5, "alice-5", "alice").await;
        assert_eq!(puback(&mut alice, "sensors/a", 1).await, ReasonCode::SUCCESS);
        alice.send(&publish("commands/x", qos, 2, b"x")).await;
        match alice.recv().await {
            Recv::Packet(Packet::Disconnect(d)) => assert_eq!(d.reason_code, DENIED, "{qos:?}"),
            other => panic!("{qos:?}: expected DISCONNECT 0x87, got {other:?}"),
        }
        let rest = alice.expect_closed_within(WAIT).await;
        assert!(rest.is_empty(), "{rest:?}");
    }
    // v3.1.1: closed, no PUBACK.
    let mut alice = login(&b, Protocol::V311, "alice-3", "alice").await;
    alice.send(&publish("commands/x", QoS::AtLeastOnce, 1, b"x")).await;
    let seen = alice.expect_closed_within(WAIT).await;
    assert!(seen.is_empty(), "v3.1.1 received {seen:?}");

    // Nothing denied was delivered.
    let mut dave = login(&b, Protocol::V5, "dave-1", "dave").await;
    assert_eq!(puback(&mut dave, "fence/1", 1).await, ReasonCode::SUCCESS);
    assert_eq!(
        topics_until(&mut carol, "fence/1").await,
        ["sensors/a", "sensors/a", "sensors/a", "fence/1"],
        "the allowed publishes only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_is_granted_only_within_read_rules() {
    let b = broker(ACL, "drop").await;
    let cases: &[(&str, bool)] = &[
        ("sensors/#", true),
        ("sensors/+/temp", true),
        ("sensors/room1/temp", true),
        ("#", false),
        ("+/room1/temp", false),
        ("sensors/secret/#", false), // the deny covers it all
        ("sensors/secret/a", false),
        ("alarms/+/high", true),
        ("alarms/x/high", true),
        ("alarms/#", false), // broader than the rule
        ("alarms/+/low", false),
        ("commands/x", false),
        ("users/bob/#", true), // pattern %u
        ("users/alice/#", false),
    ];
    for (v, denied) in [(Protocol::V5, DENIED), (Protocol::V311, V3_DENIED)] {
        let mut bob = login(&b, v, "bob-1", "bob").await;
        for (i, (filter, ok)) in cases.iter().enumerate() {
            let want = if *ok { OK1 } else { denied };
            assert_eq!(bob.subscribe(i as u16 + 1, filter, QoS::AtLeastOnce).await, vec![want], "{v:?} {filter}");
        }
        // One SUBSCRIBE, several filters: one code each.
        assert_eq!(
            subscribe_many(&mut bob, 100, &["sensors/#", "#", "alarms/+/high", "commands/#"]).await,
            vec![OK1, denied, OK1, denied],
            "{v:?}"
        );
        // Write-only and readwrite rules for alice.
        let mut alice = login(&b, v, "alice-1", "alice").await;
        assert_eq!(
            subscribe_many(&mut alice, 1, &["will/alice", "commands/#", "sensors/#"]).await,
            vec![denied, OK1, OK1],
            "{v:?}: write is not read"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_receives_only_what_its_read_rules_allow() {
    let b = broker(ACL, "drop").await;
    let mut dave = login(&b, Protocol::V5, "dave-1", "dave").await;
    // Retained before anyone subscribes.
    for (i, t) in ["sensors/secret/r", "sensors/r"].iter().enumerate() {
        dave.send(&retained(t, i as u16 + 1)).await;
        assert!(matches!(dave.recv().await, Recv::Packet(Packet::PubAck(a)) if a.reason_code.is_success()));
    }

    for v in [Protocol::V5, Protocol::V311] {
        let id = format!("bob-{v:?}");
        let mut bob = login(&b, v, &id, "bob").await;
        // Broader than the read rules (sensors/secret/# is denied), granted: the deny applies
        // at delivery.
        assert_eq!(bob.subscribe(1, "sensors/#", QoS::AtLeastOnce).await, vec![OK1], "{v:?}");
        assert_eq!(puback(&mut dave, "sensors/secret/x", 10).await, ReasonCode::SUCCESS);
        assert_eq!(puback(&mut dave, "sensors/room1/temp", 11).await, ReasonCode::SUCCESS);
        let mut seen = topics_until(&mut bob, "sensors/room1/temp").await;
        seen.sort();
        assert_eq!(seen, ["sensors/r", "sensors/room1/temp"], "{v:?}: no secret, retained or live");
    }
}

// ------------------------------------------------------------------------------------------
// 2. Patterns: %u / %c are literal (CVE-2017-7650)
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_user_names_and_client_ids_cannot_use_patterns_to_reach_others() {
    let b = broker(ACL, "drop").await;
    let mut dave = login(&b, Protocol::V5, "dave-1", "dave").await;
    assert_eq!(subscribe_many(&mut dave, 1, &["users/#", "clients/#"]).await, vec![OK1, OK1]);

    // The pattern works for alice.
    let mut alice = login(&b, Protocol::V5, "alice-c", "alice").await;
    assert_eq!(puback(&mut alice, "users/alice/x", 1).await, ReasonCode::SUCCESS);
    assert_eq!(alice.subscribe(2, "users/alice/#", QoS::AtLeastOnce).await, vec![OK1]);
    assert_eq!(alice.subscribe(3, "users/bob/#", QoS::AtLeastOnce).await, vec![DENIED]);

    // `+` would make users/+/# out of users/%u/#; `alice/x` would make users/alice/x/#;
    // `alice+` is merely odd (+ inside a level is no wildcard) and still refused (fail closed).
    for (i, user) in ["+", "alice/x", "alice+"].into_iter().enumerate() {
        let mut m = login(&b, Protocol::V5, &format!("mallory-{i}"), user).await;
        for t in ["users/alice/x", "users/alice/x/y", "users/alice"] {
            assert_eq!(puback(&mut m, t, 1).await, DENIED, "user {user:?} publishing {t}");
        }
        for f in ["users/alice/#", "users/alice/x/#", "users/+/x", "users/#"] {
            assert_eq!(m.subscribe(2, f, QoS::AtLeastOnce).await, vec![DENIED], "user {user:?} subscribing {f}");
        }
        let mut v3 = login(&b, Protocol::V311, &format!("mallory-v3-{i}"), user).await;
        assert_eq!(v3.subscribe(1, "users/alice/#", QoS::AtLeastOnce).await, vec![V3_DENIED], "v3 user {user:?}");
    }

    // The same with %c: client ids `+`, `#`, `alice-c/x` (as user bob). `+` is also a user's
    // name here, so the client id is reserved for that user (0x85, [identity]
    // reserve_principal_names): refused before any pattern is reached.
    assert_eq!(connack(&b, login_packet(Protocol::V5, "+", "bob")).await, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    let mut bob = login(&b, Protocol::V5, "bob-c", "bob").await;
    assert_eq!(puback(&mut bob, "clients/bob-c/x", 1).await, ReasonCode::SUCCESS, "%c works");
    for id in ["#", "alice-c/x", "+/#"] {
        let mut m = login(&b, Protocol::V5, id, "bob").await;
        for t in ["clients/alice-c/x", "clients/alice-c/x/y"] {
            assert_eq!(puback(&mut m, t, 1).await, DENIED, "client id {id:?} publishing {t}");
        }
        assert_eq!(m.subscribe(2, "clients/alice-c/#", QoS::AtLeastOnce).await, vec![DENIED], "client id {id:?}");
    }

    assert_eq!(puback(&mut alice, "users/alice/fence", 9).await, ReasonCode::SUCCESS);
    assert_eq!(
        topics_until(&mut dave, "users/alice/fence").await,
        ["users/alice/x", "clients/bob-c/x", "users/alice/fence"],
        "nothing from the hostile names got through"
    );
}

// ------------------------------------------------------------------------------------------
// 3. $SYS needs explicit permission
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_need_an_explicit_rule() {
    let b = broker(ACL, "drop").await;
    for (v, denied) in [(Protocol::V5, DENIED), (Protocol::V311, V3_DENIED)] {
        // `topic read #` does not reach $SYS.
        let mut carol = login(&b, v, "carol-1", "carol").await;
        assert_eq!(
            subscribe_many(&mut carol, 1, &["$SYS/#", "$SYS/broker/uptime", "#"]).await,
            vec![denied, denied, OK1],
            "{v:?}"
        );
        // `#` matches no $SYS topic; the $SYS messages (retained, refreshed every second) do not
        // reach carol: the first thing she gets is the fence.
        let mut dave = login(&b, Protocol::V5, "dave-1", "dave").await;
        assert_eq!(puback(&mut dave, "fence/carol", 1).await, ReasonCode::SUCCESS);
        assert_eq!(topics_until(&mut carol, "fence/carol").await, ["fence/carol"], "{v:?}");

        // `topic read $SYS/#` does.
        let mut sysmon = login(&b, v, "sysmon-1", "sysmon").await;
        assert_eq!(subscribe_many(&mut sysmon, 1, &["$SYS/#", "#"]).await, vec![OK1, denied], "{v:?}");
        let p = sysmon.expect_publish().await;
        assert!(p.topic.as_str().starts_with("$SYS/broker/"), "{v:?}: {}", p.topic.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_hash_rule_does_not_deliver_sys_to_a_live_sys_subscription() {
    // sysmon subscribes to $SYS/# while allowed; then the ACL is reloaded to `topic read #`:
    // the live subscription must stop receiving $SYS (the rule `#` does not match it).
    let b = broker(ACL, "drop").await;
    let mut sysmon = login(&b, Protocol::V5, "sysmon-1", "sysmon").await;
    assert_eq!(subscribe_many(&mut sysmon, 1, &["$SYS/#", "fence/#"]).await, vec![OK1, OK1]);
    assert!(sysmon.expect_publish().await.topic.as_str().starts_with("$SYS/"));

    let acl = b.path("acl");
    std::fs::write(&acl, ACL.replace("topic read $SYS/#", "topic read #")).unwrap();
    b.server.reload();
    let mut dave = login(&b, Protocol::V5, "dave-1", "dave").await;
    assert_eq!(puback(&mut dave, "fence/1", 1).await, ReasonCode::SUCCESS);
    topics_until(&mut sysmon, "fence/1").await; // whatever was queued before the reload
                                                // Let a few $SYS refreshes (every 1 s) happen, then fence again: none was delivered.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(puback(&mut dave, "fence/2", 2).await, ReasonCode::SUCCESS);
    assert_eq!(topics_until(&mut sysmon, "fence/2").await, ["fence/2"]);
}

// ------------------------------------------------------------------------------------------
// 4. Shared subscriptions
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_are_authorized_on_their_filter() {
    let b = broker(ACL, "drop").await;
    let mut bob = login(&b, Protocol::V5, "bob-1", "bob").await;
    assert_eq!(
        subscribe_many(
            &mut bob,
            1,
            &[
                "$share/g/sensors/#",
                "$share/g/commands/#",
                "$share/g/#",
                "$share/alarms/alarms/+/high",
                "$share/sensors/#"
            ]
        )
        .await,
        // The last one is group `sensors`, filter `#`.
        vec![OK1, DENIED, DENIED, OK1, DENIED]
    );
    // A rule naming the `$share/...` string grants nothing: the filter is `private/#`.
    let mut erin = login(&b, Protocol::V5, "erin-1", "erin").await;
    assert_eq!(erin.subscribe(1, "$share/g/private/#", QoS::AtLeastOnce).await, vec![DENIED]);
    let mut erin3 = login(&b, Protocol::V311, "erin-3", "erin").await;
    assert_eq!(erin3.subscribe(1, "$share/g/private/#", QoS::AtLeastOnce).await, vec![V3_DENIED]);

    // Delivery through the share is checked too.
    let mut dave = login(&b, Protocol::V5, "dave-1", "dave").await;
    assert_eq!(puback(&mut dave, "sensors/secret/x", 1).await, ReasonCode::SUCCESS);
    assert_eq!(puback(&mut dave, "sensors/t", 2).await, ReasonCode::SUCCESS);
    assert_eq!(topics_until(&mut bob, "sensors/t").await, ["sensors/t"]);
}

// ------------------------------------------------------------------------------------------
// 5. Wills
// ------------------------------------------------------------------------------------------

fn with_will(mut c: Connect, topic: &str) -> Connect {
    c.will = Some(LastWill {
        topic: TopicName::new(topic).unwrap(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    });
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_the_user_may_not_publish_refuses_the_connect() {
    let b = broker(ACL, "drop").await;
    let mut dave = login(&b, Protocol::V5, "dave-1", "dave").await;
    assert_eq!(dave.subscribe(1, "will/#", QoS::AtLeastOnce).await, vec![OK1]);

    for (v, refused) in [(Protocol::V5, DENIED), (Protocol::V311, ReasonCode::V3_NOT_AUTHORIZED)] {
        let c = |topic: &str| with_will(login_packet(v, "alice-w", "alice"), topic);
        assert_eq!(connack(&b, c("will/alice")).await, ReasonCode::SUCCESS, "{v:?}: write rule");
        assert_eq!(connack(&b, c("users/alice/status")).await, ReasonCode::SUCCESS, "{v:?}: pattern");
        assert_eq!(connack(&b, c("will/bob")).await, refused, "{v:?}: no rule");
        assert_eq!(connack(&b, c("commands/x")).await, refused, "{v:?}: read only");
        assert_eq!(connack(&b, c("sensors/secret/x")).await, refused, "{v:?}: denied");
        assert_eq!(
            connack(&b, with_will(login_packet(v, "carol-w", "carol"), "will/carol")).await,
            refused,
            "{v:?}: read # grants no write"
        );
    }

    // A refused CONNECT touches nothing: the session it would have taken over stays connected.
    let will = |topic: &str| with_will(login_packet(Protocol::V5, "alice-w", "alice"), topic);
    let (mut alice, _) = connected(b.addr(), will("will/alice")).await;
    assert_eq!(connack(&b, will("will/bob")).await, DENIED);
    assert_alive(&mut alice).await;
    // The accepted wills are published when their connections end (three of them: two above,
    // this one), and nothing else is.
    drop(alice);
    for _ in 0..3 {
        assert_eq!(topics_until(&mut dave, "will/alice").await, ["will/alice"]);
    }
    assert_eq!(puback(&mut dave, "will/fence", 2).await, ReasonCode::SUCCESS);
    assert_eq!(topics_until(&mut dave, "will/fence").await, ["will/fence"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_is_authorized_again_when_it_is_sent() {
    let b = broker(ACL, "drop").await;
    let mut dave = login(&b, Protocol::V5, "dave-1", "dave").await;
    assert_eq!(dave.subscribe(1, "will/#", QoS::AtLeastOnce).await, vec![OK1]);
    let (alice, _) = connected(b.addr(), with_will(login_packet(Protocol::V5, "alice-w", "alice"), "will/alice")).await;

    // alice loses the right to publish her will while connected.
    std::fs::write(b.path("acl"), ACL.replace("topic write will/alice\n", "")).unwrap();
    b.server.reload();
    let denied_before = b.server.broker.stats.denied.load(Ordering::Relaxed);
    drop(alice);
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.server.broker.stats.denied.load(Ordering::Relaxed) == denied_before {
        assert!(tokio::time::Instant::now() < deadline, "the will was never checked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(puback(&mut dave, "will/fence", 2).await, ReasonCode::SUCCESS);
    assert_eq!(topics_until(&mut dave, "will/fence").await, ["will/fence"], "the will was not sent");
}

// ------------------------------------------------------------------------------------------
// 6. Reload
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_the_acl_changes_decisions_for_live_connections() {
    let b = broker(ACL, "drop").await;
    let mut bob = login(&b, Protocol::V5, "bob-1", "bob").await;
    let mut alice = login(&b, Protocol::V5, "alice-1", "alice").await;
    let mut dave = login(&b, Protocol::V5, "dave-1", "dave").await;
    assert_eq!(subscribe_many(&mut alice, 1, &["sensors/#", "users/alice/#"]).await, vec![OK1, OK1]);
    assert_eq!(puback(&mut bob, "sensors/x", 1).await, DENIED, "bob may only read sensors");

    // New file: bob may write sensors; alice may no longer read them.
    let new_acl = ACL
        .replace("user bob\ntopic read sensors/#\n", "user bob\ntopic readwrite sensors/#\n")
        .replace("user alice\ntopic readwrite sensors/#\n", "user alice\ntopic write sensors/#\n");
    assert_ne!(new_acl, ACL);
    std::fs::write(b.path("acl"), &new_acl).unwrap();
    b.server.reload();

    // The same live connections: bob's publish is allowed now ...
    assert_eq!(puback(&mut bob, "sensors/x", 2).await, ReasonCode::SUCCESS);
    // ... and alice's existing subscription no longer delivers it.
    assert_eq!(puback(&mut dave, "users/alice/fence", 1).await, ReasonCode::SUCCESS);
    assert_eq!(topics_until(&mut alice, "users/alice/fence").await, ["users/alice/fence"]);
    // New subscriptions are decided by the new file.
    assert_eq!(alice.subscribe(3, "sensors/#", QoS::AtLeastOnce).await, vec![DENIED]);
    let mut bob2 = login(&b, Protocol::V5, "bob-2", "bob").await;
    assert_eq!(bob2.subscribe(1, "sensors/#", QoS::AtLeastOnce).await, vec![OK1]);
    drop(bob2);

    // A broken file is refused and the previous one stays in force.
    std::fs::write(b.path("acl"), "user bob\nfrobnicate sensors/#\n").unwrap();
    b.server.reload();
    assert_eq!(puback(&mut bob, "sensors/y", 4).await, ReasonCode::SUCCESS);
    assert_eq!(puback(&mut alice, "commands/x", 5).await, DENIED);

    // Back to the original rules: the very topic bob was just allowed (an allow the connection
    // remembers for repeated publishes) is denied at once.
    std::fs::write(b.path("acl"), ACL).unwrap();
    b.server.reload();
    assert_eq!(puback(&mut bob, "sensors/y", 6).await, DENIED);
    assert_eq!(puback(&mut bob, "sensors/z", 7).await, DENIED);
}

/// A publisher's connection remembers who received its last topic; a new subscriber, an
/// unsubscription and a reloaded ACL each make it ask again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_publishes_follow_subscription_and_acl_changes() {
    let b = broker(ACL, "drop").await;
    let mut dave = login(&b, Protocol::V5, "dave-1", "dave").await;
    let mut alice = login(&b, Protocol::V5, "alice-1", "alice").await;
    let mut carol = login(&b, Protocol::V5, "carol-1", "carol").await;
    assert_eq!(subscribe_many(&mut alice, 1, &["sensors/#", "users/alice/#"]).await, vec![OK1, OK1]);
    assert_eq!(subscribe_many(&mut carol, 1, &["fence/#"]).await, vec![OK1]);
    assert_eq!(puback(&mut dave, "sensors/a", 1).await, ReasonCode::SUCCESS);
    assert_eq!(topics_until(&mut alice, "sensors/a").await, ["sensors/a"]);

    // A new subscriber gets the very next publish on the same topic.
    assert_eq!(subscribe_many(&mut carol, 2, &["sensors/#"]).await, vec![OK1]);
    assert_eq!(puback(&mut dave, "sensors/a", 2).await, ReasonCode::SUCCESS);
    assert_eq!(topics_until(&mut alice, "sensors/a").await, ["sensors/a"]);
    assert_eq!(topics_until(&mut carol, "sensors/a").await, ["sensors/a"]);

    // An unsubscribed one does not.
    carol
        .send(&Packet::Unsubscribe(mqtt_codec::Unsubscribe {
            packet_id: 3,
            properties: Default::default(),
            filters: vec![TopicFilter::new("sensors/#").unwrap()],
        }))
        .await;
    assert!(matches!(carol.recv().await, Recv::Packet(Packet::UnsubAck(_))));
    assert_eq!(puback(&mut dave, "sensors/a", 3).await, ReasonCode::SUCCESS);
    assert_eq!(puback(&mut dave, "fence/1", 4).await, ReasonCode::SUCCESS);
    assert_eq!(topics_until(&mut carol, "fence/1").await, ["fence/1"]);
    assert_eq!(topics_until(&mut alice, "sensors/a").await, ["sensors/a"]);

    // Alice may no longer read sensors: the same topic again is not delivered to her.
    std::fs::write(b.path("acl"), ACL.replace("user alice\ntopic readwrite sensors/#\n", "user alice\n")).unwrap();
    b.server.reload();
    assert_eq!(puback(&mut dave, "sensors/a", 5).await, ReasonCode::SUCCESS);
    assert_eq!(puback(&mut dave, "users/alice/fence", 6).await, ReasonCode::SUCCESS);
    assert_eq!(topics_until(&mut alice, "users/alice/fence").await, ["users/alice/fence"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_acl_applies_to_messages_already_queued() {
    // Receive is checked again when a queued message is sent, not only when it is queued.
    let b = broker(ACL, "drop").await;
    let persistent = || {
        let mut c = login_packet(Protocol::V5, "bob-p", "bob");
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(300);
        c
    };
    let mut bob = connected(b.addr(), persistent()).await.0;
    assert_eq!(subscribe_many(&mut bob, 1, &["sensors/#", "users/bob/#"]).await, vec![OK1, OK1]);
    bob.send(&Packet::Disconnect(mqtt_codec::Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))).await;
    assert!(bob.expect_closed_within(WAIT).await.is_empty());

    // Queued while bob is away, under rules that allow it.
    let mut dave = login(&b, Protocol::V5, "dave-1", "dave").await;
    assert_eq!(puback(&mut dave, "sensors/queued", 1).await, ReasonCode::SUCCESS);
    // bob loses read access to sensors.
    std::fs::write(b.path("acl"), ACL.replace("user bob\ntopic read sensors/#\n", "user bob\n")).unwrap();
    b.server.reload();
    assert_eq!(puback(&mut dave, "users/bob/fence", 2).await, ReasonCode::SUCCESS);

    let (mut bob, ack) = connected(b.addr(), persistent()).await;
    assert!(ack.session_present);
    assert_eq!(topics_until(&mut bob, "users/bob/fence").await, ["users/bob/fence"], "queued before the reload");
}
