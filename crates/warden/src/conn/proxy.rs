//! PROXY protocol v1 (text) and v2 (binary) headers, as sent by HAProxy (`send-proxy`,
//! `send-proxy-v2`), nginx stream (`proxy_protocol on`), AWS NLB and others in front of a
//! listener with `proxy_protocol = true` (SPEC §13).
//!
//! [`parse`] is pure (sans-IO): it is given the bytes read so far and says whether they hold a
//! complete header, need more, or are not a header. [`bytes_wanted`] says how many more bytes can
//! be read without reading past the header (the MQTT or TLS bytes behind it belong to the
//! connection), so the shell reads exactly the header and nothing more. [`read_header`] is that
//! shell. [`Cidr`](crate::config::Cidr) is the `proxy_trusted` list's element.
//!
//! Reference: "The PROXY protocol, versions 1 & 2" (haproxy.org/download/2.9/doc/proxy-protocol.txt).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature that starts every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (the protocol's own bound).
pub const V1_MAX: usize = 107;
/// Longest v2 address block (addresses and TLVs) accepted. The protocol allows 65535 bytes; what
/// balancers send (addresses, a unique id, ALPN, TLS details) fits well within this.
pub const V2_MAX_PAYLOAD: usize = 1024;
const V2_FIXED: usize = 16;
const V1_PREFIX: &[u8] = b"PROXY ";
/// Shortest v1 header: `PROXY UNKNOWN\r\n`.
const V1_MIN: usize = 15;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The client's address as the proxy saw it; `None` for v1 `UNKNOWN`, a v2 `LOCAL` command
    /// (the proxy's own health check) or an address family other than IPv4/IPv6 (the socket's
    /// own address is kept then).
    pub source: Option<SocketAddr>,
}

/// Why bytes are not a PROXY header. The connection is closed; nothing is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Neither the v1 `PROXY ` prefix nor the v2 signature.
    Signature,
    /// A v1 line longer than 107 bytes, or a v2 address block longer than [`V2_MAX_PAYLOAD`].
    TooLong,
    /// A v1 line not ended by CRLF (a lone CR or LF).
    LineEnd,
    /// A v1 protocol other than `TCP4`, `TCP6`, `UNKNOWN`, or the wrong number of fields.
    V1Syntax,
    /// An address that does not parse, or does not match its declared family.
    Address,
    /// A port that is not a decimal number in 0..=65535.
    Port,
    /// A v2 version other than 2, or a command other than LOCAL and PROXY.
    Version,
    /// A v2 family/transport other than UNSPEC, or INET/INET6/UNIX over STREAM.
    Family,
    /// A v2 address block shorter than its family's addresses.
    Short,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Signature => "not a PROXY protocol header",
            Self::TooLong => "PROXY header too long",
            Self::LineEnd => "PROXY v1 line not ended by CRLF",
            Self::V1Syntax => "malformed PROXY v1 line",
            Self::Address => "bad address in PROXY header",
            Self::Port => "bad port in PROXY header",
            Self::Version => "unsupported PROXY v2 version or command",
            Self::Family => "unsupported PROXY v2 address family or transport",
            Self::Short => "PROXY v2 address block too short",
        })
    }
}

impl std::error::Error for ProxyError {}

/// Parses the start of a connection: `Ok(Some((header, consumed)))` when `buf` begins with a
/// complete header of `consumed` bytes (what follows belongs to the connection), `Ok(None)` when
/// `buf` is a valid beginning that needs more bytes, `Err` when it cannot become a header.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() { Ok(None) } else { parse_v2(buf) };
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return if n < V1_PREFIX.len() { Ok(None) } else { parse_v1(buf) };
    }
    Err(ProxyError::Signature)
}

/// How many more bytes can certainly be read without going past the header that `buf` begins
/// (at least 1). Only meaningful while [`parse`] returns `Ok(None)`.
pub fn bytes_wanted(buf: &[u8]) -> usize {
    let have = buf.len();
    if have >= V2_FIXED && buf[..V2_SIGNATURE.len()] == V2_SIGNATURE {
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        return (V2_FIXED + len).saturating_sub(have).max(1);
    }
    if have < V1_MIN.min(V2_FIXED) {
        return V1_MIN.min(V2_FIXED) - have;
    }
    if buf.starts_with(V1_PREFIX) {
        // The line ends at a CRLF that can come at any byte from here on.
        return 1;
    }
    V2_FIXED.saturating_sub(have).max(1)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= V1_MAX { Err(ProxyError::TooLong) } else { Ok(None) };
    };
    if window[end] == b'\n' {
        return Err(ProxyError::LineEnd);
    }
    match buf.get(end + 1) {
        None if end + 1 >= V1_MAX => return Err(ProxyError::TooLong),
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::LineEnd),
    }
    let consumed = end + 2;
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| ProxyError::V1Syntax)?;
    let mut fields = line.split(' ');
    let proto = fields.next().unwrap_or_default();
    if proto == "UNKNOWN" {
        // The receiver ignores whatever follows UNKNOWN on the line.
        return Ok(Some((Header { source: None }, consumed)));
    }
    let (Some(src), Some(dst), Some(sport), Some(dport), None) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(ProxyError::V1Syntax);
    };
    let addr = |s: &str| -> Result<IpAddr, ProxyError> {
        match proto {
            "TCP4" => Ipv4Addr::from_str(s).map(IpAddr::V4).map_err(|_| ProxyError::Address),
            _ => Ipv6Addr::from_str(s).map(IpAddr::V6).map_err(|_| ProxyError::Address),
        }
    };
    if proto != "TCP4" && proto != "TCP6" {
        return Err(ProxyError::V1Syntax);
    }
    let ip = addr(src)?;
    addr(dst)?;
    let port = v1_port(sport)?;
    v1_port(dport)?;
    Ok(Some((Header { source: Some(SocketAddr::new(ip, port)) }, consumed)))
}

fn v1_port(s: &str) -> Result<u16, ProxyError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return Err(ProxyError::Port);
    }
    s.parse().map_err(|_| ProxyError::Port)
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let Some(&ver_cmd) = buf.get(12) else { return Ok(None) };
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0f > 1 {
        return Err(ProxyError::Version);
    }
    let Some(&fam) = buf.get(13) else { return Ok(None) };
    // Family (high nibble): 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX; transport: 0 UNSPEC, 1 STREAM.
    let (family, transport) = (fam >> 4, fam & 0x0f);
    let known = matches!((family, transport), (0, 0) | (1..=3, 1));
    if !known {
        return Err(ProxyError::Family);
    }
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else { return Ok(None) };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > V2_MAX_PAYLOAD {
        return Err(ProxyError::TooLong);
    }
    let need = match family {
        1 => 12,
        2 => 36,
        _ => 0,
    };
    if len < need {
        return Err(ProxyError::Short);
    }
    let consumed = V2_FIXED + len;
    let Some(block) = buf.get(V2_FIXED..consumed) else { return Ok(None) };
    // LOCAL: the proxy speaks for itself (health checks); the block, if any, is ignored.
    if ver_cmd & 0x0f == 0 {
        return Ok(Some((Header { source: None }, consumed)));
    }
    // Addresses first, then TLVs up to `len`, which are skipped.
    let source = match family {
        1 => {
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([block[8], block[9]])))
        }
        2 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&block[..16]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), u16::from_be_bytes([block[32], block[33]])))
        }
        _ => None,
    };
    Ok(Some((Header { source }, consumed)))
}

/// Why [`read_header`] gave up.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes are not a header ([`ProxyError`]).
    Invalid(ProxyError),
    /// No complete header within the time allowed.
    Timeout,
    /// The peer closed or the read failed before a complete header.
    Closed,
}

/// Reads a PROXY header from the start of `sock` within `within`, and not one byte past it.
pub async fn read_header<S: AsyncRead + Unpin>(sock: &mut S, within: Duration) -> Result<Header, ReadError> {
    let read = async {
        let mut buf: Vec<u8> = Vec::with_capacity(V1_MAX);
        loop {
            match parse(&buf) {
                Ok(Some((h, _))) => return Ok(h),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Invalid(e)),
            }
            let at = buf.len();
            buf.resize(at + bytes_wanted(&buf), 0);
            match sock.read(&mut buf[at..]).await {
                Ok(0) | Err(_) => return Err(ReadError::Closed),
                Ok(n) => buf.truncate(at + n),
            }
        }
    };
    tokio::time::timeout(within, read).await.unwrap_or(Err(ReadError::Timeout))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v2(cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x20 | cmd);
        b.push(fam);
        b.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        b.extend_from_slice(block);
        b
    }

    fn v2_inet(tlvs: &[u8]) -> Vec<u8> {
        let mut block = vec![10, 1, 2, 3, 192, 168, 0, 1, 0x30, 0x39, 0x07, 0x5b];
        block.extend_from_slice(tlvs);
        v2(1, 0x11, &block)
    }

    fn v2_inet6() -> Vec<u8> {
        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut block = src.octets().to_vec();
        block.extend_from_slice(&dst.octets());
        block.extend_from_slice(&[0xea, 0x60, 0x07, 0x5b]);
        v2(1, 0x21, &block)
    }

    fn src(b: &[u8]) -> Option<SocketAddr> {
        parse(b).unwrap().unwrap().0.source
    }

    fn valid_headers() -> Vec<Vec<u8>> {
        vec![
            b"PROXY TCP4 10.1.2.3 192.168.0.1 12345 1883\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 60000 1883\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".to_vec(),
            v2_inet(&[]),
            v2_inet(&[0x04, 0x00, 0x03, b'a', b'b', b'c', 0x01, 0x00, 0x02, b'h', b'2']),
            v2_inet6(),
            v2(0, 0x00, &[]),
            v2(0, 0x11, &[0; 12]),
        ]
    }

    #[test]
    fn v1_tcp4() {
        let h = b"PROXY TCP4 10.1.2.3 192.168.0.1 12345 1883\r\n\x10\x00";
        let (hdr, n) = parse(h).unwrap().unwrap();
        assert_eq!(hdr.source, Some("10.1.2.3:12345".parse().unwrap()));
        assert_eq!(n, h.len() - 2, "the bytes after the header are the connection's");
    }

    #[test]
    fn v1_tcp6() {
        assert_eq!(
            src(b"PROXY TCP6 2001:db8::7 2001:db8::1 60000 1883\r\n"),
            Some("[2001:db8::7]:60000".parse().unwrap())
        );
    }

    #[test]
    fn v1_unknown_keeps_the_socket_address() {
        assert_eq!(src(b"PROXY UNKNOWN\r\n"), None);
        assert_eq!(src(b"PROXY UNKNOWN whatever follows is ignored\r\n"), None);
    }

    #[test]
    fn v2_proxy_v4_v6() {
        assert_eq!(src(&v2_inet(&[])), Some("10.1.2.3:12345".parse().unwrap()));
        assert_eq!(src(&v2_inet6()), Some("[2001:db8::7]:60000".parse().unwrap()));
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let tlvs = [0x04, 0x00, 0x03, b'a', b'b', b'c', 0x01, 0x00, 0x02, b'h', b'2'];
        let mut h = v2_inet(&tlvs);
        let len = h.len();
        h.extend_from_slice(b"\x10rest");
        let (hdr, n) = parse(&h).unwrap().unwrap();
        assert_eq!(hdr.source, Some("10.1.2.3:12345".parse().unwrap()));
        assert_eq!(n, len);
    }

    #[test]
    fn v2_local_and_unspec_keep_the_socket_address() {
        assert_eq!(src(&v2(0, 0x00, &[])), None);
        assert_eq!(src(&v2(0, 0x11, &[0; 12])), None);
        assert_eq!(src(&v2(1, 0x00, &[])), None);
        assert_eq!(src(&v2(1, 0x31, &[0; 216])), None, "AF_UNIX");
    }

    #[test]
    fn every_truncation_needs_more_and_never_over_reads() {
        for h in valid_headers() {
            for cut in 0..h.len() {
                assert_eq!(parse(&h[..cut]), Ok(None), "{:?} cut at {cut}", String::from_utf8_lossy(&h));
                let w = bytes_wanted(&h[..cut]);
                assert!(w >= 1 && cut + w <= h.len(), "wants {w} at {cut} of {}", h.len());
            }
            assert_eq!(parse(&h).unwrap().unwrap().1, h.len());
        }
    }

    #[test]
    fn oversize_is_refused() {
        let mut long = b"PROXY TCP4 10.1.2.3 192.168.0.1 12345 1883".to_vec();
        long.resize(V1_MAX, b' ');
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
        // CR as the 107th byte: the LF would be the 108th.
        let mut cr = long[..V1_MAX - 1].to_vec();
        cr.push(b'\r');
        assert_eq!(parse(&cr), Err(ProxyError::TooLong));
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11]);
        big.extend_from_slice(&u16::try_from(V2_MAX_PAYLOAD + 1).unwrap().to_be_bytes());
        assert_eq!(parse(&big), Err(ProxyError::TooLong));
    }

    #[test]
    fn bad_signature_is_refused() {
        assert_eq!(parse(b"\x10\x0c\x00\x04MQTT"), Err(ProxyError::Signature));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Signature));
        assert_eq!(parse(b"\x16\x03\x01"), Err(ProxyError::Signature), "a TLS ClientHello");
        assert_eq!(parse(b"proxy TCP4"), Err(ProxyError::Signature));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIZ\n"), Err(ProxyError::Signature));
    }

    #[test]
    fn bad_v1_lines_are_refused() {
        use ProxyError::*;
        for (line, e) in [
            (&b"PROXY TCP4 10.1.2.3 192.168.0.1 12345 1883\n"[..], LineEnd),
            (b"PROXY TCP4 10.1.2.3 192.168.0.1 12345 1883\rX", LineEnd),
            (b"PROXY TCP4 10.1.2.300 192.168.0.1 12345 1883\r\n", Address),
            (b"PROXY TCP4 2001:db8::7 192.168.0.1 12345 1883\r\n", Address),
            (b"PROXY TCP6 10.1.2.3 2001:db8::1 12345 1883\r\n", Address),
            (b"PROXY TCP4 10.1.2.3 nowhere 12345 1883\r\n", Address),
            (b"PROXY TCP4 10.1.2.3 192.168.0.1 65536 1883\r\n", Port),
            (b"PROXY TCP4 10.1.2.3 192.168.0.1 -1 1883\r\n", Port),
            (b"PROXY TCP4 10.1.2.3 192.168.0.1 012 1883\r\n", Port),
            (b"PROXY TCP4 10.1.2.3 192.168.0.1 12345 +1883\r\n", Port),
            (b"PROXY TCP4 10.1.2.3 192.168.0.1 12345\r\n", V1Syntax),
            (b"PROXY TCP4 10.1.2.3 192.168.0.1 12345 1883 9\r\n", V1Syntax),
            (b"PROXY TCP4  10.1.2.3 192.168.0.1 12345 1883\r\n", V1Syntax),
            (b"PROXY UDP4 10.1.2.3 192.168.0.1 12345 1883\r\n", V1Syntax),
            (b"PROXY \r\n", V1Syntax),
            (b"PROXY TCP4 \xff 192.168.0.1 12345 1883\r\n", V1Syntax),
        ] {
            assert_eq!(parse(line), Err(e), "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn bad_v2_headers_are_refused() {
        let mut h = v2_inet(&[]);
        h[12] = 0x11;
        assert_eq!(parse(&h), Err(ProxyError::Version), "version 1");
        h[12] = 0x22;
        assert_eq!(parse(&h), Err(ProxyError::Version), "command 2");
        assert_eq!(parse(&v2(1, 0x12, &[0; 12])), Err(ProxyError::Family), "UDP");
        assert_eq!(parse(&v2(1, 0x41, &[0; 12])), Err(ProxyError::Family), "family 4");
        assert_eq!(parse(&v2(1, 0x11, &[0; 11])), Err(ProxyError::Short));
        assert_eq!(parse(&v2(1, 0x21, &[0; 12])), Err(ProxyError::Short));
    }

    #[tokio::test]
    async fn read_header_reads_exactly_the_header() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut sent = b"PROXY TCP4 10.1.2.3 192.168.0.1 12345 1883\r\n".to_vec();
        sent.extend_from_slice(b"\x10\x00MQTT");
        tokio::io::AsyncWriteExt::write_all(&mut a, &sent).await.unwrap();
        let h = read_header(&mut b, Duration::from_secs(5)).await.unwrap();
        assert_eq!(h.source, Some("10.1.2.3:12345".parse().unwrap()));
        let mut rest = [0u8; 6];
        b.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"\x10\x00MQTT");
    }

    #[tokio::test]
    async fn read_header_times_out_and_stops_at_garbage() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"PROXY TCP4").await.unwrap();
        assert!(matches!(read_header(&mut b, Duration::from_millis(20)).await, Err(ReadError::Timeout)));
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"\x10\x0c\x00\x04MQTT").await.unwrap();
        let r = read_header(&mut b, Duration::from_secs(5)).await;
        assert!(matches!(r, Err(ReadError::Invalid(ProxyError::Signature))));
        drop(a);
        let r = read_header(&mut b, Duration::from_secs(5)).await;
        assert!(matches!(r, Err(ReadError::Invalid(_)) | Err(ReadError::Closed)));
    }

    proptest! {
        /// Every split of a valid header (as TCP may deliver it) parses to the same header.
        #[test]
        fn every_split_parses_the_same(i in 0usize..9, cut in 0usize..200, tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let h = &valid_headers()[i];
            let whole = parse(h).unwrap().unwrap();
            let cut = cut % (h.len() + 1);
            prop_assert_eq!(parse(&h[..cut]).unwrap().is_none(), cut < h.len());
            let mut more = h.clone();
            more.extend_from_slice(&tail);
            prop_assert_eq!(parse(&more), Ok(Some(whole)));
        }

        /// Arbitrary bytes never panic, and a header found never claims more bytes than given.
        #[test]
        fn arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(Some((_, n))) = parse(&b) {
                prop_assert!(n <= b.len());
            }
            let _ = bytes_wanted(&b);
        }
    }
}
