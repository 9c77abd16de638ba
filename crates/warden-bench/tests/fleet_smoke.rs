//! Smoke test of `warden-bench fleet` against the real broker (warden-testkit's in-process
//! `TestBroker` on 127.0.0.1:0): 50 devices for 2 s, MQTT 3.1.1 and 5, every telemetry message
//! delivered to the shared group and the plain backend, every command to its device.

use std::process::Command;

use serde_json::Value;
use warden_testkit::TestBroker;

/// Run the generator against a fresh broker and return its JSON line.
async fn fleet(extra: &[&str]) -> Value {
    let broker = TestBroker::start().await;
    let port = broker.port().to_string();
    // The broker runs in this process: its CPU is ours.
    let pid = std::process::id().to_string();
    let mut args = vec![
        "fleet",
        "--port",
        &port,
        "--pid",
        &pid,
        "--devices",
        "50",
        "--rate",
        "2",
        "--duration",
        "2",
        "--command-fraction",
        "0.1",
        "--command-interval",
        "0.5",
        "--source-addrs",
        "5",
        "--quiet-timeout",
        "3",
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out =
        tokio::task::spawn_blocking(move || Command::new(env!("CARGO_BIN_EXE_warden-bench")).args(&args).output())
            .await
            .expect("join")
            .expect("run warden-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "warden-bench failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    broker.stop().await;
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not one JSON line ({e}): {stdout}"))
}

fn check(v: &Value) {
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {v}"));
    assert_eq!(v["scenario"], "fleet");
    assert_eq!(n("connections"), 50, "{v}");
    assert_eq!(n("connect_failures"), 0, "{v}");
    // 50 devices × 2 msg/s × 2 s ≈ 200 (jittered phases).
    assert!((150..=250).contains(&n("sent")), "{v}");
    // One delivery to the $share group and one to the plain backend per message.
    assert_eq!(n("expected"), 2 * n("sent"), "{v}");
    assert_eq!(n("delivered"), n("expected"), "{v}");
    assert_eq!(n("lost"), 0, "{v}");
    assert_eq!(n("unacked"), 0, "{v}");
    assert!(n("commands_sent") > 0, "{v}");
    assert_eq!(n("commands_delivered"), n("commands_sent"), "{v}");
    assert_eq!(v["complete"], true, "{v}");
    assert!(n("lat_samples") == n("delivered"), "{v}");
    assert!(v["lat_p99_us"].as_f64().is_some() && v["cmd_lat_p99_us"].as_f64().is_some(), "{v}");
    assert!(v["broker_cpu_s_per_m"].as_f64().is_some() && n("broker_rss_now_kib") > 0, "{v}");
    assert!(v["case"].as_str().is_some_and(|c| c.starts_with("fleet 50 devices")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_v311_against_warden() {
    check(&fleet(&[]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_v5_against_warden() {
    let v = fleet(&["--mqtt5"]).await;
    assert_eq!(v["protocol"], "5.0");
    check(&v);
}
