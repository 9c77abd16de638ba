//! Smoke test of `warden-bench compromised` against the real broker (warden-testkit's
//! in-process `TestBroker` on 127.0.0.1:0, `[watch]` on with 200 ms windows): 5 devices at
//! 10 msg/s learn their baselines, device 0 turns rogue (50x its rate, probing new topics) and
//! is quarantined within the 10 s, no neighbour is alerted on and none loses a message.

use std::process::Command;

use serde_json::Value;
use warden_testkit::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_device_is_quarantined_and_its_neighbours_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hash = |pw: &str| warden_policy::password::hash_password(pw.as_bytes());
    let users: String = (0..5).map(|i| format!("device-{i}:{}\n", hash("devpw"))).collect::<String>()
        + &format!("ops:{}\n", hash("opspw"));
    std::fs::write(dir.path().join("passwd"), users).unwrap();
    let broker = TestBroker::from_toml_in(
        dir,
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtt\"\n[auth]\npassword_file = \"{dir}/passwd\"\n\
         [watch]\nenabled = true\nwindow = \"200ms\"\nlearning_windows = 3\n",
    )
    .await;
    let port = broker.port().to_string();
    let pid = std::process::id().to_string();
    let args: Vec<String> = [
        "compromised",
        "--port",
        &port,
        "--pid",
        &pid,
        "--mqtt5",
        "--username",
        "ops",
        "--password",
        "opspw",
        "--device-password",
        "devpw",
        "--devices",
        "5",
        "--rate",
        "10",
        "--learn",
        "1.5",
        "--factor",
        "50",
        "--probe-rate",
        "50",
        "--deadline",
        "10",
        "--after",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out =
        tokio::task::spawn_blocking(move || Command::new(env!("CARGO_BIN_EXE_warden-bench")).args(&args).output())
            .await
            .expect("join")
            .expect("run warden-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "warden-bench failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    broker.stop().await;
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not one JSON line ({e}): {stdout}"));
    eprintln!("{v}");
    assert_eq!(v["scenario"], "compromised", "{v}");
    let t = v["time_to_quarantine_s"].as_f64().unwrap_or_else(|| panic!("not quarantined: {v}"));
    assert!(t < 10.0, "quarantined after {t} s: {v}");
    assert!(v["watch_rule"].as_str().is_some_and(|r| r.contains("quarantine")), "{v}");
    assert_eq!(v["neighbour_alerts"], 0, "{v}");
    assert!(v["sent"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["delivered"], v["sent"], "{v}");
    assert!(v["case"].as_str().is_some_and(|c| c.starts_with("compromised 5 devices")), "{v}");
}
