//! `[log] file` with the real binary (issue 19): the broker writes its log to the file (0600),
//! and after the file is renamed away (logrotate) a SIGHUP or SIGUSR1 makes it open a new one
//! at the configured path, which gets the next lines; rustls' `WARN Illegal SNI extension` for a
//! TLS client that sends an IP address as SNI stays out of the log unless the operator's
//! filter names rustls.
//!
//! Every wait polls the log file with a bounded deadline.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mqtt_codec::Protocol;
use warden_testkit::{connect_packet, connected};

const BIN: &str = env!("CARGO_BIN_EXE_warden");

/// The real broker process, killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `warden serve` on `dir/warden.toml` = `body` plus `[log] file = "warden.log"`
    /// (relative: next to the configuration). `RUST_LOG` is `rust_log` or unset.
    fn start(dir: &Path, body: &str, rust_log: Option<&str>) -> Proc {
        let cfg = dir.join("warden.toml");
        std::fs::write(
            &cfg,
            format!("data_dir = \"{}\"\n{body}\n[log]\nfile = \"warden.log\"\n", dir.join("data").display()),
        )
        .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config", cfg.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null());
        match rust_log {
            Some(v) => cmd.env("RUST_LOG", v),
            None => cmd.env_remove("RUST_LOG"),
        };
        Proc { child: cmd.spawn().unwrap(), log: dir.join("warden.log") }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    }

    /// The address after `listening: SCHEME://` in the log file.
    fn addr(&self, scheme: &str) -> SocketAddr {
        let needle = format!("listening: {scheme}://");
        let text = wait_for(&self.log, &needle);
        let rest = text.split(&needle).nth(1).unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of `path` once it contains `needle` (20 s at most).
fn wait_for(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "{} never got {needle:?}; it has:\n{text}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_file_is_reopened_on_sighup_and_sigusr1() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let broker =
        Proc::start(dir.path(), "[[listener]]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = true\n", None);
    let addr = broker.addr("mqtt");
    let log = broker.log.clone();
    assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);

    // logrotate's rename, then `postrotate kill -HUP`.
    let first = dir.path().join("warden.log.1");
    std::fs::rename(&log, &first).unwrap();
    broker.signal("-HUP");
    let text = wait_for(&log, "configuration file reloaded");
    assert!(text.contains("log file reopened"), "{text}");
    assert!(!text.contains("listening:"), "the new file starts at the reopen: {text}");
    assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);
    let old = std::fs::read_to_string(&first).unwrap();
    assert!(old.contains("listening: mqtt://"), "{old}");
    assert!(!old.contains("configuration file reloaded"), "{old}");

    // SIGUSR1 only reopens (no reload); the next lines go to the new file.
    let second = dir.path().join("warden.log.2");
    std::fs::rename(&log, &second).unwrap();
    broker.signal("-USR1");
    let text = wait_for(&log, "log file reopened");
    assert!(!text.contains("configuration file reloaded"), "{text}");
    let (_client, _) = connected(addr, connect_packet(Protocol::V311, "after-rotation", true)).await;
    let text = wait_for(&log, "client connected");
    assert!(text.contains("after-rotation"), "{text}");
    let old = std::fs::read_to_string(&second).unwrap();
    assert!(old.contains("configuration file reloaded") && !old.contains("after-rotation"), "{old}");
    let oldest = std::fs::read_to_string(&first).unwrap();
    assert!(!oldest.contains("after-rotation"), "{oldest}");
}

/// A TLS ClientHello whose SNI is the IP address `127.0.0.1` (as OpenSSL-based clients such
/// as mosquitto_pub send when given `-h 127.0.0.1`; rustls' own client leaves SNI out).
fn client_hello_with_ip_sni() -> Vec<u8> {
    let name = b"127.0.0.1";
    let mut entry = vec![0u8]; // host_name
    entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
    entry.extend_from_slice(name);
    let mut sni = (entry.len() as u16).to_be_bytes().to_vec();
    sni.extend_from_slice(&entry);
    let mut ext = vec![0, 0]; // server_name
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0, 4, 0x13, 0x01, 0xc0, 0x2f]); // cipher suites
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1, 0];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// Sends the ClientHello and waits for the broker's answer (an alert) or the close: rustls has
/// parsed the hello, and logged what it logs about it, by then.
fn hello_by_ip(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&client_hello_with_ip_sni()).unwrap();
    let mut buf = [0u8; 512];
    let _ = s.read(&mut buf);
}

#[test]
fn rustls_warning_for_an_ip_address_as_sni_is_not_logged() {
    let dir = tempfile::tempdir().unwrap();
    let pki = warden_testkit::pki::TestPki::new(&dir.path().join("pki"), "sni");
    let s = pki.server();
    let body = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"mqtts\"\ncert = \"{}\"\nkey = \"{}\"\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = true\n",
        s.cert.display(),
        s.key.display()
    );
    // The default filter: the warning is not logged.
    let quiet = dir.path().join("quiet");
    std::fs::create_dir(&quiet).unwrap();
    let broker = Proc::start(&quiet, &body, None);
    hello_by_ip(broker.addr("mqtts"));
    // A line logged after the hello was handled: the log is written in order.
    let _ = TcpStream::connect(broker.addr("mqtt")).unwrap();
    broker.signal("-USR1");
    let text = wait_for(&broker.log, "log file reopened");
    assert!(!text.contains("Illegal SNI"), "{text}");
    drop(broker);

    // The operator's filter names rustls: their choice stands, and the line shows (so the
    // hello above does make rustls warn).
    let loud = dir.path().join("loud");
    std::fs::create_dir(&loud).unwrap();
    let broker = Proc::start(&loud, &body, Some("info,rustls=warn"));
    hello_by_ip(broker.addr("mqtts"));
    wait_for(&broker.log, "Illegal SNI extension");
}
