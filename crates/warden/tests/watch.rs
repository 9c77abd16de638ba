//! The behaviour watch (issue 23, docs/watch.md) against the real broker: a device publishing at
//! its baseline is untouched while one that jumps to 50× its rate and probes new topics is
//! quarantined (its probes refused with v5 PUBACK 0x87, its own topic still served) and a
//! neighbour's messages all arrive (read by a real MQTT 5 client, rumqttc); the operator lifts
//! the quarantine; a ban rule ends the device's connection with DISCONNECT 0x98 and refuses
//! its reconnection; a throttle rule holds the device to its rate and its alert is POSTed to the
//! webhook; the admin API refuses malformed rules (400) and callers without a token (401).
//!
//! Windows are 200 ms and baselines are learned over 3 of them. Every wait is for the broker's
//! own word: the watch's event messages on `$warden/events/watch/#` (read by an operator's
//! client), acknowledgements, DISCONNECT and CONNACK. The devices publish at a fixed pace
//! (their workload), never to wait for something.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use mqtt_codec::{Packet, Protocol, QoS, ReasonCode};
use rumqttc::v5::mqttbytes::v5::Packet as P5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use warden_testkit::{connect_packet, connected, publish, RawClient, Recv, TestBroker, WAIT};

const ADMIN_TOKEN: &str = "admin-token-for-watch-tests-0123456";

/// How long a device may take to be caught (the bound).
const CAUGHT_WITHIN: Duration = Duration::from_secs(10);

fn hash(pw: &str) -> String {
    warden_policy::password::hash_password(pw.as_bytes())
}

fn token_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| hash(ADMIN_TOKEN))
}

/// A broker with users `dev1`, `dev2`, `ops` (password: the name + `pw`), the admin API and
/// the watch on with 200 ms windows and 3-window baselines.
async fn broker() -> TestBroker {
    broker_with("").await
}

/// [`broker`] with more `[watch]` keys.
async fn broker_with(watch: &str) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let users: String =
        ["dev1", "dev2", "dev3", "ops"].iter().map(|u| format!("{u}:{}\n", hash(&format!("{u}pw")))).collect();
    std::fs::write(dir.path().join("passwd"), users).unwrap();
    TestBroker::from_toml_in(
        dir,
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[auth]\npassword_file = \"{{dir}}/passwd\"\n\
             [http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash = \"{}\"\n\
             [watch]\nenabled = true\nwindow = \"200ms\"\nlearning_windows = 3\n{watch}\n[limits]\nmax_publish_rate = 100000\n",
            token_hash()
        ),
    )
    .await
}

/// One admin API call (`token`: send the admin token); the status and the JSON body.
async fn http(b: &TestBroker, method: &str, path: &str, body: Option<Value>, token: bool) -> (u16, Value) {
    let headers: Vec<_> = token.then(|| warden_testkit::http::bearer(ADMIN_TOKEN)).into_iter().collect();
    let a = b.http(method, path, &headers, body.map(|v| v.to_string())).await;
    (a.status, a.json())
}

fn login(id: &str, user: &str) -> mqtt_codec::Connect {
    let mut c = connect_packet(Protocol::V5, id, true);
    c.username = Some(user.into());
    c.password = Some(Bytes::from(format!("{user}pw")));
    c
}

/// The operator's client: the watch's event messages, forwarded as JSON.
async fn events(b: &TestBroker) -> mpsc::UnboundedReceiver<Value> {
    let (mut c, _) = connected(b.addr(), login("ops-events", "ops")).await;
    let codes = c.subscribe(1, "$warden/events/watch/#", QoS::AtMostOnce).await;
    assert_eq!(codes, [ReasonCode::SUCCESS]);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match c.recv_within(Duration::from_secs(3600)).await {
                Recv::Packet(Packet::Publish(p)) => {
                    let mut v: Value = serde_json::from_slice(&p.payload).unwrap();
                    v["topic"] = json!(p.topic.as_str());
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                Recv::Packet(_) => {}
                _ => return,
            }
        }
    });
    rx
}

/// The first event of `principal` whose action is `action`, within [`CAUGHT_WITHIN`]; every
/// event seen on the way is returned too.
async fn event_for(
    rx: &mut mpsc::UnboundedReceiver<Value>,
    principal: &str,
    action: &str,
    seen: &mut Vec<Value>,
) -> Value {
    let deadline = tokio::time::Instant::now() + CAUGHT_WITHIN;
    loop {
        let v = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {action} event for {principal} within {CAUGHT_WITHIN:?}; saw {seen:?}"))
            .expect("events client ended");
        seen.push(v.clone());
        if v["principal"] == principal && v["action"] == action {
            return v;
        }
    }
}

/// A neighbour's subscriber, a real MQTT 5 client (rumqttc): the payloads it receives.
fn neighbour_sink(b: &TestBroker, filter: &'static str) -> mpsc::UnboundedReceiver<Bytes> {
    let mut o = MqttOptions::new("ops-sink", "127.0.0.1", b.port());
    o.set_credentials("ops", "opspw");
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(o, 1024);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut subscribed = false;
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(P5::ConnAck(_))) if !subscribed => {
                    subscribed = true;
                    client.subscribe(filter, Q5::AtLeastOnce).await.unwrap();
                }
                Ok(Event::Incoming(P5::SubAck(_))) => {
                    // Ready: an empty payload says so.
                    if tx.send(Bytes::new()).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(P5::Publish(p))) => {
                    if tx.send(p.payload).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

/// PUBLISH QoS 1 and return the PUBACK's reason code (skipping anything else that comes).
async fn publish_acked(c: &mut RawClient, topic: &str, id: u16) -> ReasonCode {
    c.send(&publish(topic, QoS::AtLeastOnce, id, b"x")).await;
    loop {
        match c.recv().await {
            Recv::Packet(Packet::PubAck(a)) if a.packet_id == id => return a.reason_code,
            Recv::Packet(_) => {}
            other => panic!("expected PUBACK {id}, got {other:?}"),
        }
    }
}

/// A steady device: one QoS 1 message to `devices/<user>/t` every 20 ms (each acknowledged),
/// numbered, until told to stop; returns how many it sent.
fn steady(b: &TestBroker, user: &'static str) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<u32>) {
    let addr = b.addr();
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let (mut c, _) = connected(addr, login(&format!("{user}-c"), user)).await;
        let topic = format!("devices/{user}/t");
        let mut every = tokio::time::interval(Duration::from_millis(20));
        let mut n = 0u32;
        loop {
            tokio::select! {
                _ = &mut stop => return n,
                _ = every.tick() => {
                    n += 1;
                    c.send(&publish(&topic, QoS::AtLeastOnce, (n % 60_000 + 1) as u16, n.to_string().as_bytes())).await;
                    match c.recv().await {
                        Recv::Packet(Packet::PubAck(a)) => assert!(a.reason_code.is_success(), "{user}: {a:?}"),
                        other => panic!("{user}: expected PUBACK, got {other:?}"),
                    }
                }
            }
        }
    });
    (stop_tx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_at_fifty_times_its_baseline_probing_topics_is_quarantined_and_its_neighbour_loses_nothing() {
    let b = broker().await;
    let mut ev = events(&b).await;
    let mut sink = neighbour_sink(&b, "devices/dev2/#");
    assert_eq!(tokio::time::timeout(WAIT, sink.recv()).await.unwrap().unwrap(), Bytes::new(), "subscribed");
    // The neighbour publishes steadily for the whole test.
    let (stop_dev2, dev2) = steady(&b, "dev2");
    // dev1 learns its baseline: one topic, 10 messages a second (2 a window).
    let (mut dev1, _) = connected(b.addr(), login("dev1-c", "dev1")).await;
    let mut every = tokio::time::interval(Duration::from_millis(100));
    for i in 0..16u16 {
        every.tick().await;
        assert!(publish_acked(&mut dev1, "devices/dev1/t", i + 1).await.is_success());
    }
    // Then it turns rogue: over 50x its rate (QoS 0 bursts) and new topics, until it is
    // caught.
    let mut every = tokio::time::interval(Duration::from_millis(20));
    let started = tokio::time::Instant::now();
    let mut seen = Vec::new();
    let mut probe = 0u32;
    let caught = loop {
        for _ in 0..20 {
            dev1.send(&publish("devices/dev1/t", QoS::AtMostOnce, 0, b"flood")).await;
        }
        {
            probe += 1;
            dev1.send(&publish(&format!("probe/{probe}"), QoS::AtMostOnce, 0, b"?")).await;
        }
        tokio::select! {
            _ = every.tick() => {}
            v = ev.recv() => {
                let v = v.expect("events client ended");
                seen.push(v.clone());
                if v["principal"] == "dev1" && v["action"] == "quarantine" {
                    break v;
                }
            }
        }
        assert!(started.elapsed() < CAUGHT_WITHIN, "dev1 not quarantined within {CAUGHT_WITHIN:?}; events: {seen:?}");
    };
    assert_eq!(caught["topic"], "$warden/events/watch/user/dev1");
    assert!(["publish-flood", "topic-probe"].contains(&caught["rule"].as_str().unwrap()), "{caught}");
    assert_eq!(caught["principal_kind"], "user");
    // Its probes are refused (v5 PUBACK 0x87), its own topic still works, and so do those of
    // the quarantine for the connection that was already there.
    assert_eq!(publish_acked(&mut dev1, "probe/new", 101).await, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(publish_acked(&mut dev1, "devices/dev1/t", 102).await, ReasonCode::SUCCESS);
    // The restriction is listed; the operator lifts it and the device may probe again.
    let (s, list) = http(&b, "GET", "/admin/watch/restrictions", None, true).await;
    assert_eq!(s, 200);
    assert!(list.as_array().unwrap().iter().any(|r| r["principal"] == "dev1" && r["action"] == "quarantine"), "{list}");
    let (s, v) = http(&b, "DELETE", "/admin/watch/restrictions/user/dev1", None, true).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(publish_acked(&mut dev1, "probe/after-lift", 103).await, ReasonCode::SUCCESS);
    let (s, _) = http(&b, "DELETE", "/admin/watch/restrictions/user/dev1", None, true).await;
    assert_eq!(s, 404, "nothing left to lift");
    // The neighbour: never alerted, and every message it published arrived.
    stop_dev2.send(()).unwrap();
    let sent = dev2.await.unwrap();
    assert!(sent > 50, "dev2 published throughout ({sent})");
    let mut got = Vec::new();
    while got.len() < sent as usize {
        let p = tokio::time::timeout(WAIT, sink.recv()).await.expect("a neighbour's message is missing").unwrap();
        got.push(String::from_utf8(p.to_vec()).unwrap().parse::<u32>().unwrap());
    }
    assert_eq!(got, (1..=sent).collect::<Vec<_>>(), "in order, none lost");
    let (s, alerts) = http(&b, "GET", "/admin/watch/alerts?limit=1000", None, true).await;
    assert_eq!(s, 200);
    let alerts = alerts.as_array().unwrap();
    assert!(alerts.iter().any(|a| a["principal"] == "dev1" && a["action"] == "quarantine"));
    assert!(alerts.iter().all(|a| a["principal"] != "dev2"), "the steady neighbour is untouched: {alerts:?}");
    assert!(seen.iter().all(|a| a["principal"] != "dev2"), "{seen:?}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_rule_disconnects_with_0x98_and_refuses_the_reconnection() {
    let b = broker().await;
    let mut ev = events(&b).await;
    let rule = json!({"metric": "new_topics", "above": 2, "action": "ban", "duration_secs": 600});
    let (s, v) = http(&b, "PUT", "/admin/watch/rules/probe-ban", Some(rule), true).await;
    assert_eq!(s, 200, "{v}");
    let (s, rules) = http(&b, "GET", "/admin/watch/rules", None, true).await;
    assert_eq!(s, 200);
    assert_eq!(rules["enabled"], true);
    assert_eq!(rules["defaults"], false, "the store holds the rules now");
    assert!(rules["rules"].as_array().unwrap().iter().any(|r| r["id"] == "probe-ban" && r["action"] == "ban"));
    assert!(rules["rules"].as_array().unwrap().iter().any(|r| r["id"] == "publish-flood"), "the defaults were kept");
    let (mut dev, _) = connected(b.addr(), login("dev3-c", "dev3")).await;
    // Probing fresh topics (learned at first, new once the baseline is): banned.
    let mut every = tokio::time::interval(Duration::from_millis(40));
    let started = tokio::time::Instant::now();
    let mut n = 0u32;
    let closed = loop {
        every.tick().await;
        for _ in 0..3 {
            n += 1;
            dev.send(&publish(&format!("scan/{n}"), QoS::AtMostOnce, 0, b"?")).await;
        }
        match dev.recv_within(Duration::from_millis(1)).await {
            Recv::Packet(Packet::Disconnect(d)) => break d,
            Recv::Timeout => {}
            other => panic!("expected DISCONNECT or nothing, got {other:?}"),
        }
        assert!(started.elapsed() < CAUGHT_WITHIN, "not banned within {CAUGHT_WITHIN:?}");
    };
    assert_eq!(closed.reason_code, ReasonCode::ADMINISTRATIVE_ACTION);
    let mut seen = Vec::new();
    let e = event_for(&mut ev, "dev3", "ban", &mut seen).await;
    assert_eq!(e["rule"], "probe-ban");
    // The ban is the operator's list's: listed, and the reconnection refused (0x8A Banned).
    let (_, bans) = http(&b, "GET", "/admin/bans", None, true).await;
    assert!(bans.as_array().unwrap().iter().any(|x| x["value"] == "dev3" && x["kind"] == "username"), "{bans}");
    let (_, r) = RawClient::connect(b.addr(), login("dev3-c", "dev3")).await;
    match r {
        Recv::Packet(Packet::Connack(a)) => assert_eq!(a.reason_code, ReasonCode::BANNED),
        other => panic!("expected CONNACK 0x8A, got {other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn the_admin_api_refuses_malformed_rules_and_callers_without_a_token() {
    let b = broker().await;
    let cases = [
        (json!({"metric": "publishes", "action": "alert"}), "set 'above', 'baseline_times' or both"),
        (json!({"metric": "publishes", "above": 1, "action": "throttle"}), "throttle_rate"),
        (json!({"metric": "nope", "above": 1, "action": "alert"}), "invalid rule"),
        (json!({"id": "other", "metric": "publishes", "above": 1, "action": "alert"}), "the one in the path"),
        (json!([1]), "JSON object"),
    ];
    for (body, why) in cases {
        let (s, v) = http(&b, "PUT", "/admin/watch/rules/r1", Some(body.clone()), true).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap_or("").contains(why) || v.to_string().contains(why), "{body}: {v}");
    }
    let (s, v) =
        http(&b, "PUT", "/admin/watch/quarantine-topics", Some(json!({"quarantine_topics": ["a/#/b"]})), true).await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = http(&b, "GET", "/admin/watch/alerts?limit=0", None, true).await;
    assert_eq!(s, 400);
    let (s, _) = http(&b, "DELETE", "/admin/watch/rules/none-such", None, true).await;
    assert_eq!(s, 404);
    let (s, _) = http(&b, "DELETE", "/admin/watch/restrictions/robot/x", None, true).await;
    assert_eq!(s, 400);
    for (m, p) in [("GET", "/admin/watch/rules"), ("GET", "/admin/watch/alerts"), ("DELETE", "/admin/watch/rules/r1")] {
        let (s, _) = http(&b, m, p, None, false).await;
        assert_eq!(s, 401, "{m} {p} without a token");
    }
    let rule =
        json!({"metric": "publishes", "above": 1000, "action": "throttle", "throttle_rate": 5, "duration_secs": 60});
    let (s, v) = http(&b, "PUT", "/admin/watch/rules/slow-down", Some(rule), true).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = http(&b, "DELETE", "/admin/watch/rules/slow-down", None, true).await;
    assert_eq!(s, 200);
    // The changes (and the refusals) are in the audit trail.
    let (_, audit) = http(&b, "GET", "/admin/audit", None, true).await;
    let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|r| r["action"].as_str()).collect();
    assert!(actions.contains(&"watch.rule.put") && actions.contains(&"watch.rule.delete"), "{actions:?}");
    b.stop().await;
}

/// A webhook receiver on 127.0.0.1:0: the bodies of the requests it answers (200).
async fn webhook() -> (String, mpsc::UnboundedReceiver<Value>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then Content-Length bytes of body.
                let body = loop {
                    let Ok(n) = s.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break buf[end + 4..end + 4 + len].to_vec();
                        }
                    }
                };
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
            });
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_rule_lowers_the_rate_and_every_alert_reaches_the_webhook() {
    let (url, mut hook) = webhook().await;
    let b = broker_with(&format!("webhook_url = \"{url}\"")).await;
    let mut ev = events(&b).await;
    let rule =
        json!({"metric": "publishes", "above": 40, "action": "throttle", "throttle_rate": 5, "duration_secs": 600});
    let (s, v) = http(&b, "PUT", "/admin/watch/rules/slow-down", Some(rule), true).await;
    assert_eq!(s, 200, "{v}");
    let (mut dev, _) = connected(b.addr(), login("dev1-c", "dev1")).await;
    // 20 messages every 20 ms (200 a window) to its one topic: throttled (absolute threshold,
    // learning or not).
    let mut every = tokio::time::interval(Duration::from_millis(20));
    let started = tokio::time::Instant::now();
    let throttled = loop {
        tokio::select! {
            _ = every.tick() => {
                for _ in 0..20 {
                    dev.send(&publish("devices/dev1/t", QoS::AtMostOnce, 0, b"x")).await;
                }
            }
            e = ev.recv() => {
                let e = e.expect("events client ended");
                if e["principal"] == "dev1" && e["action"] == "throttle" {
                    break e;
                }
            }
        }
        assert!(started.elapsed() < CAUGHT_WITHIN, "not throttled within {CAUGHT_WITHIN:?}");
    };
    assert_eq!(throttled["rule"], "slow-down");
    // The webhook got the same alert.
    let posted = tokio::time::timeout(WAIT, async {
        loop {
            let v = hook.recv().await.expect("webhook receiver ended");
            if v["principal"] == "dev1" && v["action"] == "throttle" {
                return v;
            }
        }
    })
    .await
    .expect("no alert POSTed to the webhook");
    assert_eq!(posted["rule"], "slow-down");
    assert_eq!(posted["metric"], "publishes");
    // Listed with its rate and expiry; lifted by the operator.
    let (_, list) = http(&b, "GET", "/admin/watch/restrictions", None, true).await;
    let r = list.as_array().unwrap().iter().find(|r| r["principal"] == "dev1").cloned().unwrap_or_default();
    assert_eq!((r["action"].as_str(), r["rate"].as_u64()), (Some("throttle"), Some(5)), "{list}");
    assert!(r["until"].as_u64().unwrap() >= r["since"].as_u64().unwrap() + 600, "{r}");
    // A new connection of the principal (its flood's debt left behind) is held to 5 messages
    // a second (burst 5): 15 QoS 1 messages take at least 2 s to be acknowledged (the socket
    // is not read while the bucket is in debt).
    drop(dev);
    let (mut dev, _) = connected(b.addr(), login("dev1-c2", "dev1")).await;
    let t0 = tokio::time::Instant::now();
    for i in 0..15u16 {
        assert!(publish_acked(&mut dev, "devices/dev1/t", i + 1).await.is_success());
    }
    assert!(t0.elapsed() >= Duration::from_millis(1500), "not throttled: {:?}", t0.elapsed());
    let (s, _) = http(&b, "DELETE", "/admin/watch/restrictions/user/dev1", None, true).await;
    assert_eq!(s, 200);
    b.stop().await;
}

/// `warden admin ARGS` against `b` (the admin token in the environment): success and output.
async fn cli(b: &TestBroker, args: &[&str]) -> (bool, String) {
    let url = format!("http://{}", b.server.http_addr.unwrap());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .arg("admin")
            .arg("--url")
            .arg(&url)
            .args(&args)
            .env("WARDEN_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .expect("run warden");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warden_admin_watch_manages_rules_and_lifts_a_quarantine() {
    let b = broker().await;
    let mut ev = events(&b).await;
    let (ok, out) = cli(&b, &["watch", "rules"]).await;
    assert!(ok && out.contains("watch enabled; default rules") && out.contains("publish-flood"), "{out}");
    let (ok, out) = cli(
        &b,
        &[
            "watch",
            "put",
            "burst",
            "--metric",
            "publishes",
            "--above",
            "30",
            "--action",
            "quarantine",
            "--duration",
            "600",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = cli(&b, &["watch", "quarantine-topics", "devices/%c/#"]).await;
    assert!(ok, "{out}");
    let (ok, out) = cli(&b, &["watch", "rules"]).await;
    assert!(ok && !out.contains("default rules") && out.contains("burst\tpublishes\tabove=30"), "{out}");
    assert!(out.contains("quarantine topics: devices/%c/#"), "{out}");
    // A refused rule: the broker's reason, and a failure exit.
    let (ok, out) = cli(&b, &["watch", "put", "bad", "--metric", "publishes", "--action", "alert"]).await;
    assert!(!ok && out.contains("400") && out.contains("set 'above'"), "{out}");
    // A burst quarantines dev1; the CLI lists it, its alert, and lifts it.
    let (mut dev, _) = connected(b.addr(), login("dev1-c", "dev1")).await;
    let mut every = tokio::time::interval(Duration::from_millis(20));
    let started = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = every.tick() => {
                for _ in 0..10 {
                    dev.send(&publish("devices/dev1/t", QoS::AtMostOnce, 0, b"x")).await;
                }
            }
            e = ev.recv() => {
                let e = e.expect("events client ended");
                if e["principal"] == "dev1" && e["action"] == "quarantine" {
                    break;
                }
            }
        }
        assert!(started.elapsed() < CAUGHT_WITHIN, "not quarantined within {CAUGHT_WITHIN:?}");
    }
    // The quarantine topic pattern (%c = dev1-c) is kept; other topics are refused.
    assert_eq!(publish_acked(&mut dev, "devices/dev1-c/status", 1).await, ReasonCode::SUCCESS);
    assert_eq!(publish_acked(&mut dev, "elsewhere", 2).await, ReasonCode::NOT_AUTHORIZED);
    let (ok, out) = cli(&b, &["watch", "restrictions"]).await;
    assert!(ok && out.contains("user:dev1\tquarantine\trule=burst"), "{out}");
    let (ok, out) = cli(&b, &["watch", "alerts", "--limit", "5"]).await;
    assert!(ok && out.contains("user:dev1\tburst\tpublishes="), "{out}");
    let (ok, out) = cli(&b, &["watch", "alerts", "--json"]).await;
    assert!(ok && out.lines().any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["rule"] == "burst")), "{out}");
    let (ok, out) = cli(&b, &["watch", "lift", "user", "dev1"]).await;
    assert!(ok, "{out}");
    assert_eq!(publish_acked(&mut dev, "elsewhere", 3).await, ReasonCode::SUCCESS);
    let (ok, out) = cli(&b, &["watch", "lift", "user", "dev1"]).await;
    assert!(!ok && out.contains("404"), "{out}");
    let (ok, out) = cli(&b, &["watch", "remove", "burst"]).await;
    assert!(ok, "{out}");
    // The quarantine is in the admin audit trail, by the watch; the lift by the operator.
    let (_, audit) = http(&b, "GET", "/admin/audit", None, true).await;
    let rec =
        |action: &str| audit.as_array().unwrap().iter().find(|r| r["action"] == action).cloned().unwrap_or_default();
    let q = rec("watch.quarantine");
    assert_eq!((q["actor"].as_str(), q["target"].as_str()), (Some("behaviour-watch"), Some("user:dev1")), "{audit}");
    assert_eq!(q["detail"]["rule"], "burst");
    assert_eq!(rec("watch.lift")["target"], "user:dev1");
    b.stop().await;
}
