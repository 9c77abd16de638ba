//! Round trips for every packet and property, and rejection of malformed input.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use bytes::{Bytes, BytesMut};
use mqtt_codec::*;
use proptest::prelude::*;

const MAX: u32 = 268_435_460;

fn enc(p: &Packet, v: Protocol) -> BytesMut {
    let mut b = BytesMut::new();
    p.encode(v, &mut b);
    assert_eq!(b.len(), p.encoded_len(v), "encoded_len matches for {p:?}");
    b
}

fn dec(bytes: &[u8], v: Protocol) -> Result<Option<Packet>, DecodeError> {
    let mut b = BytesMut::from(bytes);
    decode(&mut b, v, MAX)
}

fn topic_str() -> impl Strategy<Value = String> {
    "[a-z0-9$/]{1,20}".prop_filter("valid name", |s| TopicName::new(s).is_ok())
}

fn filter_str() -> impl Strategy<Value = String> {
    prop_oneof![
        topic_str(),
        "[a-z]{1,5}(/\\+)?(/#)?".prop_map(|s| s),
        "\\$share/[a-z]{1,5}/[a-z/]{1,8}(/#)?".prop_filter("valid", |s| TopicFilter::new(s).is_ok()),
    ]
    .prop_filter("valid filter", |s| TopicFilter::new(s).is_ok())
}

fn props(ctx: u8) -> impl Strategy<Value = Properties> {
    (
        proptest::option::of(0u8..=1),
        proptest::option::of(any::<u32>()),
        proptest::option::of("[a-z/]{0,10}"),
        proptest::collection::vec(("[a-z]{0,5}", "[a-z]{0,5}"), 0..3),
        proptest::option::of(1u16..),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(move |(pfi, mei, ct, up, ra, sei)| {
            let mut p = Properties { user_properties: up, ..Default::default() };
            match ctx {
                0 => {
                    p.payload_format_indicator = pfi;
                    p.message_expiry_interval = mei;
                    p.content_type = ct;
                }
                1 => {
                    p.receive_maximum = ra;
                    p.session_expiry_interval = sei;
                    p.authentication_method = ct;
                }
                2 => p.reason_string = ct,
                _ => {}
            }
            p
        })
}

fn any_packet(v: Protocol) -> impl Strategy<Value = Packet> {
    let v5 = v.is_v5();
    let pp = move |c| props(c).prop_map(move |p| if v5 { p } else { Properties::default() });
    let rc = move || any::<u8>().prop_map(move |c| if v5 { ReasonCode(c) } else { ReasonCode(0) });
    prop_oneof![
        (
            topic_str(),
            0u8..3,
            any::<bool>(),
            any::<bool>(),
            1u16..,
            pp(0),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(t, q, dup, retain, id, properties, payload)| {
                let qos = QoS::from_u8(q).unwrap();
                Packet::Publish(Publish {
                    dup: dup && qos != QoS::AtMostOnce,
                    qos,
                    retain,
                    topic: TopicName::new(&t).unwrap(),
                    packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
                    properties: properties.into(),
                    payload: Bytes::from(payload),
                })
            }),
        (1u16.., rc(), pp(2)).prop_map(|(id, c, p)| Packet::PubAck(PubAck {
            packet_id: id,
            reason_code: c,
            properties: p.into()
        })),
        (1u16.., rc(), pp(2)).prop_map(|(id, c, p)| Packet::PubRec(PubAck {
            packet_id: id,
            reason_code: c,
            properties: p.into()
        })),
        (1u16.., rc(), pp(2)).prop_map(|(id, c, p)| Packet::PubRel(PubAck {
            packet_id: id,
            reason_code: c,
            properties: p.into()
        })),
        (1u16.., rc(), pp(2)).prop_map(|(id, c, p)| Packet::PubComp(PubAck {
            packet_id: id,
            reason_code: c,
            properties: p.into()
        })),
        (1u16.., proptest::collection::vec((filter_str(), 0u8..3, any::<bool>(), any::<bool>(), 0u8..3), 1..4))
            .prop_map(move |(id, fs)| Packet::Subscribe(Subscribe {
                packet_id: id,
                properties: Default::default(),
                filters: fs
                    .into_iter()
                    .map(|(f, q, nl, rap, rh)| {
                        let o = SubscriptionOptions {
                            qos: QoS::from_u8(q).unwrap(),
                            no_local: nl && v5,
                            retain_as_published: rap && v5,
                            retain_handling: if v5 {
                                [RetainHandling::SendAtSubscribe, RetainHandling::SendIfNew, RetainHandling::DoNotSend]
                                    [rh as usize]
                            } else {
                                RetainHandling::SendAtSubscribe
                            },
                        };
                        (TopicFilter::new(&f).unwrap(), o)
                    })
                    .collect()
            })),
        (1u16.., pp(2), proptest::collection::vec(any::<u8>(), 0..5)).prop_map(|(id, p, c)| Packet::SubAck(SubAck {
            packet_id: id,
            properties: p.into(),
            reason_codes: c.into_iter().map(ReasonCode).collect()
        })),
        (1u16.., proptest::collection::vec(filter_str(), 1..4)).prop_map(|(id, fs)| Packet::Unsubscribe(Unsubscribe {
            packet_id: id,
            properties: Default::default(),
            filters: fs.iter().map(|f| TopicFilter::new(f).unwrap()).collect()
        })),
        (1u16.., pp(2), proptest::collection::vec(any::<u8>(), 0..5)).prop_map(move |(id, p, c)| Packet::UnsubAck(
            UnsubAck {
                packet_id: id,
                properties: p.into(),
                reason_codes: if v5 { c.into_iter().map(ReasonCode).collect() } else { vec![] }
            }
        )),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        (rc(), pp(2)).prop_map(|(c, p)| Packet::Disconnect(Disconnect { reason_code: c, properties: p.into() })),
        (any::<bool>(), rc(), pp(1)).prop_map(|(sp, c, p)| Packet::Connack(Connack {
            session_present: sp,
            reason_code: c,
            properties: p.into()
        })),
        (
            any::<bool>(),
            any::<u16>(),
            "[a-zA-Z0-9]{0,23}",
            proptest::option::of((topic_str(), proptest::collection::vec(any::<u8>(), 0..16), 0u8..3, any::<bool>())),
            proptest::option::of("[a-z]{0,8}"),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            pp(1),
        )
            .prop_map(move |(clean, ka, cid, will, user, pass, properties)| {
                let pass = if v5 || user.is_some() { pass } else { None };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start: clean,
                    keep_alive: ka,
                    properties,
                    client_id: cid,
                    will: will.map(|(t, p, q, r)| LastWill {
                        topic: TopicName::new(&t).unwrap(),
                        payload: Bytes::from(p),
                        qos: QoS::from_u8(q).unwrap(),
                        retain: r,
                        properties: Properties::default(),
                    }),
                    username: user,
                    password: pass.map(Bytes::from),
                }))
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn round_trip_v5(p in any_packet(Protocol::V5)) {
        let b = enc(&p, Protocol::V5);
        prop_assert_eq!(dec(&b, Protocol::V5).unwrap().unwrap(), p);
    }

    #[test]
    fn round_trip_v311(p in any_packet(Protocol::V311)) {
        let b = enc(&p, Protocol::V311);
        prop_assert_eq!(dec(&b, Protocol::V311).unwrap().unwrap(), p);
    }

    #[test]
    fn round_trip_v31(p in any_packet(Protocol::V31)) {
        let b = enc(&p, Protocol::V31);
        prop_assert_eq!(dec(&b, Protocol::V31).unwrap().unwrap(), p);
    }

    /// Any prefix of a valid packet is "need more bytes", never an error or a panic.
    #[test]
    fn prefixes_need_more(p in any_packet(Protocol::V5)) {
        let b = enc(&p, Protocol::V5);
        for n in 0..b.len() {
            prop_assert_eq!(dec(&b[..n], Protocol::V5), Ok(None));
        }
    }

    /// A stream decoded with the topic cache gives exactly the packets decoded without it:
    /// repeated names reuse the cached one, new names replace it.
    #[test]
    fn topic_cache_changes_nothing(ps in proptest::collection::vec(any_packet(Protocol::V5), 1..12), repeat in 1usize..4) {
        let mut stream = BytesMut::new();
        let mut want = Vec::new();
        for p in &ps {
            for _ in 0..repeat {
                stream.extend_from_slice(&enc(p, Protocol::V5));
                want.push(p.clone());
            }
        }
        let mut last = None;
        let mut got = Vec::new();
        while let Some(p) = decode_cached(&mut stream, Protocol::V5, MAX, &mut last).unwrap() {
            got.push(p);
        }
        prop_assert_eq!(got, want);
    }

    /// Arbitrary bytes never panic the decoder, for any protocol version.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        for v in [Protocol::V31, Protocol::V311, Protocol::V5] {
            let mut b = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut b, v, 1024) {}
        }
    }
}

#[test]
fn huge_declared_length_refused_from_header() {
    // 256 MB declared: refused before any body is buffered.
    let mut b = BytesMut::from(&b"\x10\xff\xff\xff\x7f"[..]);
    assert!(matches!(decode(&mut b, Protocol::V311, 1 << 20), Err(DecodeError::PacketTooLarge { .. })));
    assert!(b.capacity() < 1024);
}

#[test]
fn five_byte_remaining_length_is_malformed() {
    assert!(matches!(dec(b"\x10\xff\xff\xff\xff\x01", Protocol::V311), Err(DecodeError::Malformed(_))));
}

#[test]
fn malformed_cases() {
    let v5 = Protocol::V5;
    let v3 = Protocol::V311;
    let cases: &[(&[u8], Protocol, &str)] = &[
        (b"\x00\x00", v3, "reserved packet type 0"),
        (b"\xF0\x00", v3, "AUTH in 3.1.1"),
        (b"\xC1\x00", v3, "PINGREQ with flags"),
        (b"\xC0\x01\x00", v3, "PINGREQ with body"),
        (b"\x62\x01\x00", v3, "truncated PUBREL"),
        (b"\x60\x02\x00\x01", v3, "PUBREL without its 0010 flags [MQTT-3.6.1-1]"),
        (b"\x80\x06\x00\x01\x00\x01a\x00", v3, "SUBSCRIBE without 0010 flags [MQTT-3.8.1-1]"),
        (b"\x82\x02\x00\x01", v3, "SUBSCRIBE with no filter [MQTT-3.8.3-3]"),
        (b"\x82\x06\x00\x01\x00\x01a\x03", v3, "subscription QoS 3"),
        (b"\x82\x06\x00\x01\x00\x01a\x04", v3, "v3 reserved option bits"),
        (b"\x82\x07\x00\x01\x00\x00\x01a\x30", v5, "retain handling 3"),
        (b"\x82\x07\x00\x01\x00\x00\x01a\xC0", v5, "v5 reserved option bits"),
        (b"\x82\x08\x00\x01\x00\x03a/#x\x00", v3, "bad wildcard"),
        (b"\xA2\x02\x00\x01", v3, "UNSUBSCRIBE with no filter"),
        (b"\x36\x05\x00\x01a\x00\x01", v3, "PUBLISH QoS 3 [MQTT-3.3.1-4]"),
        (b"\x38\x03\x00\x01a", v3, "DUP on QoS 0 [MQTT-3.3.1-2]"),
        (b"\x30\x03\x00\x01+", v3, "wildcard in topic name [MQTT-3.3.2-2]"),
        (b"\x30\x03\x00\x01\x00", v3, "U+0000 in topic"),
        (b"\x30\x04\x00\x02\xC3\x28", v3, "invalid UTF-8 in topic"),
        (b"\x32\x05\x00\x01a\x00\x00", v3, "packet id 0 [MQTT-2.2.1-3]"),
        (b"\x30\x02\x00\x00", v3, "empty topic in 3.1.1"),
        (b"\x30\x03\x00\x00\x00", v5, "empty topic without alias"),
        (b"\x40\x02\x00\x00", v3, "PUBACK packet id 0"),
        (b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00", v3, "reserved CONNECT flag [MQTT-3.1.2-3]"),
        (b"\x10\x0c\x00\x04MQTT\x04\x18\x00\x3c\x00\x00", v3, "will QoS 3"),
        (b"\x10\x0c\x00\x04MQTT\x04\x20\x00\x3c\x00\x00", v3, "will retain without will [MQTT-3.1.2-13]"),
        (b"\x10\x0e\x00\x04MQTT\x04\x40\x00\x3c\x00\x00\x00\x00", v3, "password without user [MQTT-3.1.2-22]"),
        (b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x05", v3, "client id longer than packet"),
        (b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x00zz", v3, "trailing bytes after CONNECT"),
        (b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x02\x23\x00\x01\x00", v5, "topic alias in CONNECT"),
        (b"\x20\x02\x02\x00", v3, "CONNACK reserved flags"),
        (b"\xE0\x02\x00\x00", v3, "v3 DISCONNECT with a body"),
        (b"\xF0\x01\x05", v5, "AUTH with an invalid reason"),
    ];
    for (bytes, v, what) in cases {
        assert!(dec(bytes, *v).is_err(), "{what}: {:?}", dec(bytes, *v));
    }
}

#[test]
fn unsupported_protocol_level() {
    // [MQTT-3.1.2-2]: level 6 is refused with UnsupportedProtocol (CONNACK 0x01 / 0x84).
    let r = dec(b"\x10\x0c\x00\x04MQTT\x06\x02\x00\x3c\x00\x00", Protocol::V311);
    assert_eq!(r, Err(DecodeError::UnsupportedProtocol));
    let r = dec(b"\x10\x0c\x00\x04MQTX\x04\x02\x00\x3c\x00\x00", Protocol::V311);
    assert_eq!(r, Err(DecodeError::UnsupportedProtocol));
}

#[test]
fn connect_versions() {
    let r = dec(b"\x10\x0e\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x00", Protocol::V311).unwrap().unwrap();
    let Packet::Connect(c) = r else { panic!() };
    assert_eq!(c.protocol, Protocol::V31);
    let r = dec(b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00", Protocol::V311).unwrap().unwrap();
    let Packet::Connect(c) = r else { panic!() };
    assert_eq!(c.protocol, Protocol::V5);
}

#[test]
fn v5_short_acks() {
    // §3.4.2.1: a PUBACK of remaining length 2 means success with no properties.
    let p = dec(b"\x40\x02\x00\x07", Protocol::V5).unwrap().unwrap();
    assert_eq!(p, Packet::PubAck(PubAck::new(7)));
    let p = dec(b"\xE0\x00", Protocol::V5).unwrap().unwrap();
    assert_eq!(p, Packet::Disconnect(Disconnect::default()));
    let p = dec(b"\xE0\x01\x04", Protocol::V5).unwrap().unwrap();
    assert_eq!(p, Packet::Disconnect(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL)));
}

#[test]
fn topic_cache_still_refuses_bad_names() {
    // [MQTT-3.3.2-2] wildcards, [MQTT-1.5.4-2] U+0000, [MQTT-1.5.4-1] bad UTF-8: refused
    // whatever name was cached before.
    let good = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: TopicName::new("a/b").unwrap(),
        packet_id: 0,
        properties: Default::default(),
        payload: Bytes::from_static(b"x"),
    });
    let good = enc(&good, Protocol::V311);
    for bad_name in [&b"a/+"[..], b"a/#", b"a\0b", b"a\xff"] {
        let mut last = None;
        let mut b = BytesMut::from(&good[..]);
        assert!(decode_cached(&mut b, Protocol::V311, MAX, &mut last).unwrap().is_some());
        assert_eq!(last.as_ref().map(TopicName::as_str), Some("a/b"));
        let mut bad = vec![0x30, (2 + bad_name.len() + 1) as u8, 0, bad_name.len() as u8];
        bad.extend_from_slice(bad_name);
        bad.push(b'x');
        let mut b = BytesMut::from(&bad[..]);
        assert!(decode_cached(&mut b, Protocol::V311, MAX, &mut last).is_err(), "{bad_name:?}");
    }
}

#[test]
fn publish_payload_is_shared_not_copied() {
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::new("a/b").unwrap(),
        packet_id: 9,
        properties: Default::default(),
        payload: Bytes::from(vec![7u8; 1000]),
    });
    let b = enc(&p, Protocol::V311).freeze();
    let mut m = BytesMut::from(&b[..]);
    let Packet::Publish(d) = decode(&mut m, Protocol::V311, MAX).unwrap().unwrap() else { panic!() };
    assert_eq!(d.payload.len(), 1000);
}

#[test]
fn two_packets_in_one_buffer() {
    let mut b = BytesMut::new();
    Packet::PingReq.encode(Protocol::V311, &mut b);
    Packet::PingResp.encode(Protocol::V311, &mut b);
    assert_eq!(decode(&mut b, Protocol::V311, MAX).unwrap(), Some(Packet::PingReq));
    assert_eq!(decode(&mut b, Protocol::V311, MAX).unwrap(), Some(Packet::PingResp));
    assert_eq!(decode(&mut b, Protocol::V311, MAX).unwrap(), None);
}

#[test]
fn declared_size_does_not_reserve_memory_ahead_of_the_bytes() {
    // A peer that declares a 256 MB packet (allowed by the limit) gets no 256 MB reservation.
    let mut b = BytesMut::from(&b"\x30\xff\xff\xff\x7f"[..]);
    assert_eq!(decode(&mut b, Protocol::V311, MAX), Ok(None));
    assert!(b.capacity() <= 128 * 1024, "reserved {}", b.capacity());
}

#[test]
fn packets_stay_small_to_move() {
    // Every decoded packet is moved a few times on its way to the broker; property lists are
    // held behind a pointer so a packet stays a few words, not ~400 bytes.
    assert!(std::mem::size_of::<Packet>() <= 96, "Packet is {} bytes", std::mem::size_of::<Packet>());
    assert_eq!(std::mem::size_of::<LazyProperties>(), std::mem::size_of::<usize>());
}
