//! `warden-bench floor-broker`: the least any broker must do per message, to measure the
//! fleet scenario's floor (docs/PERFORMANCE.md, "The floor").
//!
//! One thread, one `epoll` set (mio), MQTT 3.1.1 as the fleet generator speaks it and nothing
//! more: CONNECT is answered CONNACK 0 without looking at it, SUBSCRIBE is granted, a QoS 1
//! PUBLISH is acknowledged and forwarded at QoS 1 to every matching subscription (`+`/`#`
//! filters, `$share/<group>/` groups round-robin), acknowledgements are dropped. No
//! authentication, authorization, session, queue, inflight window, keep alive, limit, log or
//! store. Each turn of the event loop reads every ready socket to the end and then writes
//! each connection that has output once: the fewest system calls per message a broker can
//! make while a device sends one packet at a time. What it costs per delivered message is the
//! part of a broker's CPU that is the kernel's TCP and wake-ups plus a minimal decode and
//! route: no broker can go below it on the same machine.
//!
//! A measuring tool, not a broker: it trusts its input (a malformed packet closes that
//! connection) and holds everything in memory. Its framing is hand-written rather than
//! `mqtt-codec`'s on purpose: the floor must not carry a full decoder's validation and
//! properties, only the bytes any broker has to look at (type, length, topic, packet id).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;

use anyhow::Result;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    sock: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    next_id: u16,
    /// WRITABLE is registered (output left after a short write).
    waiting_writable: bool,
}

/// A wildcard subscription, or a shared group's members.
struct Wild {
    levels: Vec<String>,
    members: Vec<usize>,
    next: usize,
    shared: bool,
}

#[derive(Default)]
struct Subs {
    exact: HashMap<String, Vec<usize>>,
    wild: Vec<Wild>,
}

impl Subs {
    fn add(&mut self, filter: &str, conn: usize) {
        let (filter, group) = match filter.strip_prefix("$share/").and_then(|r| r.split_once('/')) {
            Some((g, f)) => (f, Some(g)),
            None => (filter, None),
        };
        if group.is_none() && !filter.contains(['+', '#']) {
            self.exact.entry(filter.to_owned()).or_default().push(conn);
            return;
        }
        let levels: Vec<String> = filter.split('/').map(str::to_owned).collect();
        if group.is_some() {
            if let Some(w) = self.wild.iter_mut().find(|w| w.shared && w.levels == levels) {
                w.members.push(conn);
                return;
            }
        }
        self.wild.push(Wild { levels, members: vec![conn], next: 0, shared: group.is_some() });
    }

    fn remove(&mut self, conn: usize) {
        self.exact.values_mut().for_each(|v| v.retain(|&c| c != conn));
        self.wild.iter_mut().for_each(|w| w.members.retain(|&c| c != conn));
        self.wild.retain(|w| !w.members.is_empty());
    }

    fn targets(&mut self, topic: &str, out: &mut Vec<usize>) {
        if let Some(v) = self.exact.get(topic) {
            out.extend_from_slice(v);
        }
        for w in &mut self.wild {
            if matches(&w.levels, topic) {
                if w.shared {
                    w.next = (w.next + 1) % w.members.len();
                    out.push(w.members[w.next]);
                } else {
                    out.extend_from_slice(&w.members);
                }
            }
        }
    }
}

fn matches(filter: &[String], topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter {
        match f.as_str() {
            "#" => return true,
            "+" => {
                if t.next().is_none() {
                    return false;
                }
            }
            lit => {
                if t.next() != Some(lit) {
                    return false;
                }
            }
        }
    }
    t.next().is_none()
}

/// One whole packet at the start of `buf`: (first byte, body range, total length).
fn frame(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let mut len = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let start = 2 + i;
            return (buf.len() >= start + len).then_some((buf[0], start, start + len));
        }
    }
    None // a fifth length byte: malformed; the caller closes on no progress past 5 bytes
}

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn str_at(body: &[u8], at: usize) -> Option<(&str, usize)> {
    let n = usize::from(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]));
    let s = std::str::from_utf8(body.get(at + 2..at + 2 + n)?).ok()?;
    Some((s, at + 2 + n))
}

/// Run the floor broker on `bind` until killed; prints `listening: ADDR` on stderr.
pub(crate) fn run(bind: SocketAddr) -> Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(bind)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("listening: {}", listener.local_addr()?);
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut subs = Subs::default();
    let mut events = Events::with_capacity(1024);
    let mut dirty: Vec<usize> = Vec::new();
    let mut targets = Vec::new();
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut sock, _)) => {
                            sock.set_nodelay(true)?;
                            let i = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            poll.registry().register(&mut sock, Token(i), Interest::READABLE)?;
                            conns[i] = Some(Conn {
                                sock,
                                rbuf: Vec::new(),
                                wbuf: Vec::new(),
                                next_id: 0,
                                waiting_writable: false,
                            });
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
                continue;
            }
            let i = ev.token().0;
            let mut close = false;
            if ev.is_writable() {
                dirty.push(i);
            }
            if ev.is_readable() || ev.is_read_closed() {
                let Some(c) = conns.get_mut(i).and_then(Option::as_mut) else { continue };
                loop {
                    match c.sock.read(&mut scratch) {
                        Ok(0) => {
                            close = true;
                            break;
                        }
                        Ok(n) => {
                            c.rbuf.extend_from_slice(&scratch[..n]);
                            if n < scratch.len() {
                                break; // a short read: the socket is drained (as tokio assumes)
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => {
                            close = true;
                            break;
                        }
                    }
                }
                // Handle the whole packets read.
                let mut input = std::mem::take(&mut c.rbuf);
                let mut at = 0;
                while let Some((first, start, end)) = frame(&input[at..]) {
                    let body = &input[at + start..at + end];
                    match first >> 4 {
                        1 => conns[i].as_mut().map_or((), |c| c.wbuf.extend_from_slice(&[0x20, 2, 0, 0])),
                        8 if body.len() >= 2 => {
                            let mut granted = Vec::new();
                            let mut p = 2;
                            while let Some((f, next)) = str_at(body, p) {
                                subs.add(f, i);
                                granted.push(body.get(next).map_or(0, |q| (q & 3).min(1)));
                                p = next + 1;
                            }
                            if let Some(c) = conns[i].as_mut() {
                                c.wbuf.push(0x90);
                                put_len(&mut c.wbuf, 2 + granted.len());
                                c.wbuf.extend_from_slice(&body[..2]);
                                c.wbuf.extend_from_slice(&granted);
                            }
                        }
                        10 if body.len() >= 2 => {
                            conns[i].as_mut().map_or((), |c| c.wbuf.extend_from_slice(&[0xB0, 2, body[0], body[1]]))
                        }
                        12 => conns[i].as_mut().map_or((), |c| c.wbuf.extend_from_slice(&[0xD0, 0])),
                        14 => close = true,
                        3 => {
                            let qos = (first >> 1) & 3;
                            let Some((topic, mut p)) = str_at(body, 0) else {
                                close = true;
                                break;
                            };
                            if qos > 0 {
                                let Some(&[hi, lo]) = body.get(p..p + 2) else {
                                    close = true;
                                    break;
                                };
                                if let Some(c) = conns[i].as_mut() {
                                    c.wbuf.extend_from_slice(&[0x40, 2, hi, lo]);
                                }
                                p += 2;
                            }
                            let payload = &body[p..];
                            targets.clear();
                            subs.targets(topic, &mut targets);
                            for &t in &targets {
                                let Some(c) = conns.get_mut(t).and_then(Option::as_mut) else { continue };
                                c.next_id = c.next_id.checked_add(1).unwrap_or(1);
                                let out = &mut c.wbuf;
                                out.push(if qos > 0 { 0x32 } else { 0x30 });
                                put_len(out, 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len());
                                out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
                                out.extend_from_slice(topic.as_bytes());
                                if qos > 0 {
                                    out.extend_from_slice(&c.next_id.to_be_bytes());
                                }
                                out.extend_from_slice(payload);
                                dirty.push(t);
                            }
                        }
                        _ => {} // PUBACK and the rest: nothing to do
                    }
                    at += end;
                }
                if input.len() - at >= 5
                    && frame(&input[at..]).is_none()
                    && input[at + 1..at + 5].iter().all(|b| b & 0x80 != 0)
                {
                    close = true; // a remaining length of five bytes
                }
                input.drain(..at);
                if let Some(c) = conns[i].as_mut() {
                    c.rbuf = input;
                }
                dirty.push(i);
            }
            if close {
                if let Some(mut c) = conns.get_mut(i).and_then(Option::take) {
                    let _ = poll.registry().deregister(&mut c.sock);
                    subs.remove(i);
                    free.push(i);
                }
            }
        }
        // One write per connection with output, after the whole turn.
        dirty.sort_unstable();
        dirty.dedup();
        for &i in &dirty {
            let Some(c) = conns.get_mut(i).and_then(Option::as_mut) else { continue };
            while !c.wbuf.is_empty() {
                match c.sock.write(&c.wbuf) {
                    Ok(n) => {
                        c.wbuf.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break, // WouldBlock (kept for WRITABLE) or an error (EOF will come)
                }
            }
            let want = !c.wbuf.is_empty();
            if want != c.waiting_writable {
                let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
                poll.registry().reregister(&mut c.sock, Token(i), interest)?;
                c.waiting_writable = want;
            }
        }
        dirty.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_mqtt_says() {
        let f = |s: &str| s.split('/').map(str::to_owned).collect::<Vec<_>>();
        assert!(matches(&f("devices/+/telemetry"), "devices/7/telemetry"));
        assert!(!matches(&f("devices/+/telemetry"), "devices/7/commands"));
        assert!(!matches(&f("devices/+"), "devices/7/telemetry"));
        assert!(matches(&f("devices/#"), "devices/7/telemetry"));
    }

    #[test]
    fn a_shared_group_takes_turns_and_a_plain_subscriber_gets_each() {
        let mut s = Subs::default();
        s.add("$share/g/devices/+/telemetry", 1);
        s.add("$share/g/devices/+/telemetry", 2);
        s.add("devices/+/telemetry", 3);
        s.add("devices/9/commands", 4);
        let mut seen = Vec::new();
        for _ in 0..2 {
            s.targets("devices/5/telemetry", &mut seen);
        }
        seen.sort_unstable();
        assert_eq!(seen, vec![1, 2, 3, 3]);
        seen.clear();
        s.targets("devices/9/commands", &mut seen);
        assert_eq!(seen, vec![4]);
        s.remove(4);
        seen.clear();
        s.targets("devices/9/commands", &mut seen);
        assert!(seen.is_empty());
    }

    #[test]
    fn frames_are_whole_packets_only() {
        assert_eq!(frame(&[0x30, 2, 0]), None);
        assert_eq!(frame(&[0x30, 2, 0, 0]), Some((0x30, 2, 4)));
        let mut long = vec![0x30, 0x80, 0x01];
        long.extend(std::iter::repeat_n(0, 128));
        assert_eq!(frame(&long), Some((0x30, 3, 131)));
        let mut out = Vec::new();
        put_len(&mut out, 128);
        assert_eq!(out, vec![0x80, 0x01]);
    }
}
