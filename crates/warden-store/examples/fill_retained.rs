//! Fill a store with N retained messages, to measure how long the broker takes to start on it:
//!
//! ```text
//! cargo run --release -p warden-store --example fill_retained -- ./data/state.redb 1000000
//! ```

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mqtt_codec::{QoS, TopicName};
use warden_core::persist::{Persist, PersistOp};
use warden_core::Message;
use warden_store::{Durability, Store};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: fill_retained FILE N");
    let n: u64 = args.next().and_then(|s| s.parse().ok()).expect("usage: fill_retained FILE N");
    if let Some(dir) = std::path::Path::new(&path).parent() {
        std::fs::create_dir_all(dir).expect("create the directory");
    }
    let (store, _) = Store::open(path.as_ref(), Durability::None).expect("open");
    let t = Instant::now();
    for i in 0..n {
        let topic = TopicName::new(&format!("site/{}/device/{}/state", i % 1000, i)).expect("topic");
        let msg = Message {
            topic: topic.clone(),
            payload: Bytes::from(format!("{{\"n\":{i},\"ok\":true,\"pad\":\"0123456789012345678901234567\"}}")),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: None,
            expires_at: None,
            origin: None,
            persisted: Default::default(),
        };
        store.submit(PersistOp::Retained {
            topic,
            msg: Some(Arc::new(msg)),
            source: warden_core::retained::RetainSource::Unknown,
        });
    }
    store.close();
    println!("wrote {n} retained messages in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let (store, loaded) = Store::open(path.as_ref(), Durability::Batched).expect("reopen");
    println!("store read back {} retained in {:.2} s", loaded.retained.len(), t.elapsed().as_secs_f64());
    store.close();
}
