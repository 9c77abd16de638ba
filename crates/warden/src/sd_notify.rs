//! systemd's readiness protocol (`Type=notify`, sd_notify(3)): a datagram to the socket named
//! by `NOTIFY_SOCKET`, `READY=1` once every listener is bound and the store loaded,
//! `RELOADING=1` … `READY=1` around a SIGHUP reload, `STOPPING=1` at shutdown. Without
//! `NOTIFY_SOCKET` (not started by systemd) nothing is sent. Hand-written: it is one datagram,
//! and the crates for it add nothing but a dependency.

use std::os::unix::net::UnixDatagram;

/// Send `state` (e.g. `"READY=1"`) to systemd, if it asked for notifications. Failures are
/// logged at debug and otherwise ignored: readiness reporting never stops the broker.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let result = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // An abstract socket (Linux).
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), std::path::Path::new(&path))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        tracing::debug!(error = %e, state, "sd_notify failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The states arrive as systemd reads them: one datagram each on `NOTIFY_SOCKET`.
    /// (`NOTIFY_SOCKET` is read from the environment: this test sets it for its process, and
    /// is the only one in this crate's unit tests that does.)
    #[test]
    fn states_are_sent_as_datagrams_to_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify("READY=1");
        notify("STOPPING=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        notify("READY=1"); // without NOTIFY_SOCKET: nothing, no error
    }
}
