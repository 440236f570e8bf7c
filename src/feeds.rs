//! The in-process feed bus: what the publisher (`publish.rs`) publishes here once is fanned out
//! to WebSocket subscribers. The bus is topic-agnostic: names come from `topics`.
//! A message's data is serialized once per publish and shared by every subscriber. Each subscriber
//! has a bounded queue; a subscriber whose queue is full is marked to be closed (1013) rather than
//! slowing the publisher or anyone else. Rider positions are not queued: they overwrite the latest
//! position per (topic, rider) in the subscriber's coalescing slot, so a busy map never grows a
//! backlog. A subscriber may instead take a topic's positions *batched*: the bus keeps the latest
//! position per rider for the topic once (whoever follows it), and [`Feeds::flush_batches`], run at
//! a fixed cadence, sends every batched subscriber one `riders` frame of the riders that moved
//! since the last one, serialized once: a hot store's map costs a frame per client per period,
//! not one per position.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

/// One message for subscribers of a topic.
#[derive(Debug, Clone)]
pub struct Frame {
    pub topic: Arc<str>,
    pub kind: &'static str,
    /// The `data` member, serialized.
    pub data: Arc<str>,
}

/// (topic, rider): what one coalesced frame stands for.
type CoalesceKey = (Arc<str>, Arc<str>);

/// A subscriber (one WebSocket connection).
pub struct Subscriber {
    pub id: u64,
    queue: mpsc::Sender<Frame>,
    /// Latest rider position per (topic, rider).
    latest: Mutex<HashMap<CoalesceKey, Frame>>,
    /// Wakes the connection when `latest` has something.
    pub wake: Notify,
    /// Set when the queue overflowed: the connection must close.
    pub overflowed: AtomicBool,
    pub kill: Notify,
}

impl Subscriber {
    /// A subscriber with a queue of `capacity` frames, and the receiving end.
    pub fn new(id: u64, capacity: usize) -> (Arc<Subscriber>, mpsc::Receiver<Frame>) {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let sub = Subscriber {
            id,
            queue,
            latest: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            overflowed: AtomicBool::new(false),
            kill: Notify::new(),
        };
        (Arc::new(sub), rx)
    }

    /// Takes the coalesced positions.
    pub fn take_latest(&self) -> Vec<Frame> {
        let mut latest = self.latest.lock().expect("latest lock");
        latest.drain().map(|(_, f)| f).collect()
    }
}

/// A topic's batched subscribers and the positions they have not had yet.
#[derive(Default)]
struct Batched {
    subs: Vec<Arc<Subscriber>>,
    /// Latest data per key (rider) since the last flush, in first-changed order.
    pending: Vec<Arc<str>>,
    at: HashMap<Arc<str>, usize>,
}

/// The kind of a batch frame: `data` is an array of what single `rider` frames carry.
pub const BATCH_KIND: &str = "riders";

#[derive(Debug, Default)]
pub struct FeedCounters {
    pub published: AtomicU64,
    /// Batch frames sent (one per batched subscriber per flush with something in it).
    pub batches: AtomicU64,
    pub enqueued: AtomicU64,
    pub coalesced: AtomicU64,
    pub overflowed: AtomicU64,
}

#[derive(Default)]
pub struct Feeds {
    topics: DashMap<String, Vec<Arc<Subscriber>>, ahash::RandomState>,
    batched: DashMap<String, Batched, ahash::RandomState>,
    pub counters: FeedCounters,
}

impl Feeds {
    pub fn new() -> Feeds {
        Feeds::default()
    }

    /// Anyone follows `topic`, batched or not.
    pub fn has_subscribers(&self, topic: &str) -> bool {
        self.topics.get(topic).is_some_and(|s| !s.is_empty())
            || self.batched.get(topic).is_some_and(|b| !b.subs.is_empty())
    }

    /// Active topics starting with `prefix`.
    pub fn topics_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut topics: Vec<String> = self
            .topics
            .iter()
            .filter(|e| e.key().starts_with(prefix) && !e.value().is_empty())
            .map(|e| e.key().clone())
            .collect();
        for e in self.batched.iter() {
            if e.key().starts_with(prefix) && !e.value().subs.is_empty() && !topics.contains(e.key()) {
                topics.push(e.key().clone());
            }
        }
        topics
    }

    pub fn n_subscriptions(&self) -> usize {
        self.topics.iter().map(|e| e.value().len()).sum::<usize>()
            + self.batched.iter().map(|e| e.value().subs.len()).sum::<usize>()
    }

    /// Subscribes `sub` to `topic`; with `batch`, the topic's positions reach it as batch frames
    /// at each [`Feeds::flush_batches`] (everything else as it happens). Subscribing again
    /// switches between the two.
    pub fn subscribe(&self, topic: &str, sub: &Arc<Subscriber>, batch: bool) {
        self.unsubscribe(topic, sub.id);
        if batch {
            self.batched.entry(topic.to_owned()).or_default().subs.push(sub.clone());
        } else {
            self.topics.entry(topic.to_owned()).or_default().push(sub.clone());
        }
    }

    pub fn unsubscribe(&self, topic: &str, sub_id: u64) {
        let empty = match self.topics.get_mut(topic) {
            Some(mut subs) => {
                subs.retain(|s| s.id != sub_id);
                subs.is_empty()
            }
            None => false,
        };
        if empty {
            self.topics.remove_if(topic, |_, subs| subs.is_empty());
        }
        let empty = match self.batched.get_mut(topic) {
            Some(mut b) => {
                b.subs.retain(|s| s.id != sub_id);
                b.subs.is_empty()
            }
            None => false,
        };
        if empty {
            self.batched.remove_if(topic, |_, b| b.subs.is_empty());
        }
    }

    /// Queues a message for every subscriber of `topic`.
    pub fn publish(&self, topic: &str, kind: &'static str, data: &Value) {
        let subs = self.topics.get(topic).filter(|s| !s.is_empty());
        let batched = self.batched.get(topic).filter(|b| !b.subs.is_empty());
        if subs.is_none() && batched.is_none() {
            return;
        }
        let frame = Frame { topic: Arc::from(topic), kind, data: Arc::from(data.to_string()) };
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        let subs = subs.iter().flat_map(|s| s.iter()).chain(batched.iter().flat_map(|b| b.subs.iter()));
        for sub in subs {
            self.enqueue(sub, frame.clone());
        }
    }

    fn enqueue(&self, sub: &Subscriber, frame: Frame) {
        match sub.queue.try_send(frame) {
            Ok(()) => {
                self.counters.enqueued.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !sub.overflowed.swap(true, Ordering::Relaxed) {
                    self.counters.overflowed.fetch_add(1, Ordering::Relaxed);
                    sub.kill.notify_one();
                }
            }
            // The connection is going away; it unsubscribes itself.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Sends every batched subscriber of each topic one [`BATCH_KIND`] frame of the positions
    /// published on it since the last flush (the latest per rider, in the order they first
    /// changed), serialized once per topic. Run at a fixed cadence (`--ws-batch-ms`).
    pub fn flush_batches(&self) {
        let topics: Vec<String> =
            self.batched.iter().filter(|e| !e.value().pending.is_empty()).map(|e| e.key().clone()).collect();
        for topic in topics {
            let Some(mut b) = self.batched.get_mut(&topic) else { continue };
            let pending = std::mem::take(&mut b.pending);
            b.at.clear();
            let subs = b.subs.clone();
            drop(b);
            if subs.is_empty() || pending.is_empty() {
                continue;
            }
            let mut data = String::with_capacity(pending.iter().map(|d| d.len() + 1).sum::<usize>() + 2);
            data.push('[');
            for (i, d) in pending.iter().enumerate() {
                if i > 0 {
                    data.push(',');
                }
                data.push_str(d);
            }
            data.push(']');
            let frame = Frame { topic: Arc::from(topic.as_str()), kind: BATCH_KIND, data: Arc::from(data) };
            for sub in &subs {
                self.enqueue(sub, frame.clone());
            }
            self.counters.batches.fetch_add(subs.len() as u64, Ordering::Relaxed);
        }
    }

    /// Publishes the latest value of `key` on `topic`: subscribers get only the newest one.
    pub fn publish_latest(&self, topic: &str, kind: &'static str, key: &str, data: &Value) {
        let subs = self.topics.get(topic).filter(|s| !s.is_empty());
        let batched = self.batched.contains_key(topic);
        if subs.is_none() && !batched {
            return;
        }
        let data: Arc<str> = Arc::from(data.to_string());
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        if batched && let Some(mut b) = self.batched.get_mut(topic) {
            let b = &mut *b;
            match b.at.get(key) {
                Some(&i) => {
                    b.pending[i] = data.clone();
                    self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    b.at.insert(Arc::from(key), b.pending.len());
                    b.pending.push(data.clone());
                }
            }
        }
        let Some(subs) = subs else { return };
        let topic: Arc<str> = Arc::from(topic);
        let key: Arc<str> = Arc::from(key);
        let frame = Frame { topic: topic.clone(), kind, data };
        for sub in subs.iter() {
            let replaced = sub.latest.lock().expect("latest lock").insert((topic.clone(), key.clone()), frame.clone());
            if replaced.is_some() {
                self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
            }
            sub.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fan_out_overflow_and_coalescing() {
        let feeds = Feeds::new();
        let (fast, mut fast_rx) = Subscriber::new(1, 10);
        let (slow, _slow_rx) = Subscriber::new(2, 2);
        feeds.subscribe("store/s1", &fast, false);
        feeds.subscribe("store/s1", &slow, false);
        feeds.subscribe("store/s1", &slow, false);
        assert_eq!(feeds.n_subscriptions(), 2, "subscribing twice is once");
        for i in 0..3 {
            feeds.publish("store/s1", "stock", &json!({"i": i}));
        }
        // The fast one got all three; the slow one overflowed and is marked for closing.
        for i in 0..3 {
            assert_eq!(&*fast_rx.try_recv().unwrap().data, json!({"i": i}).to_string());
        }
        assert!(slow.overflowed.load(Ordering::Relaxed));
        assert!(!fast.overflowed.load(Ordering::Relaxed));
        // Positions coalesce to the latest per rider.
        for i in 0..5 {
            feeds.publish_latest("store/s1", "rider", "r1", &json!({"i": i}));
        }
        feeds.publish_latest("store/s1", "rider", "r2", &json!({"i": 9}));
        let mut latest: Vec<String> = fast.take_latest().into_iter().map(|f| f.data.to_string()).collect();
        latest.sort();
        assert_eq!(latest, vec![json!({"i": 4}).to_string(), json!({"i": 9}).to_string()]);
        // Nobody listens to other topics; unsubscribing removes the topic when empty.
        feeds.publish("store/s2", "stock", &json!({}));
        feeds.unsubscribe("store/s1", 1);
        feeds.unsubscribe("store/s1", 2);
        assert!(!feeds.has_subscribers("store/s1"));
        assert!(feeds.topics_with_prefix("store/").is_empty());
    }

    #[test]
    fn batched_subscribers_get_one_frame_of_what_moved_per_flush() {
        let feeds = Feeds::new();
        let (each, mut each_rx) = Subscriber::new(1, 10);
        let (batch, mut batch_rx) = Subscriber::new(2, 10);
        feeds.subscribe("store/s1", &each, false);
        feeds.subscribe("store/s1", &batch, true);
        assert_eq!(feeds.n_subscriptions(), 2);
        assert!(feeds.has_subscribers("store/s1"));
        feeds.flush_batches();
        assert!(batch_rx.try_recv().is_err(), "nothing moved: no frame");
        for i in 0..3 {
            feeds.publish_latest("store/s1", "rider", "r1", &json!({"id": "r1", "i": i}));
        }
        feeds.publish_latest("store/s1", "rider", "r2", &json!({"id": "r2"}));
        // Other messages reach the batched subscriber as they happen.
        feeds.publish("store/s1", "order", &json!({"id": "o1"}));
        assert_eq!(&*batch_rx.try_recv().unwrap().data, json!({"id": "o1"}).to_string());
        assert!(batch_rx.try_recv().is_err(), "positions wait for the flush");
        assert!(batch.take_latest().is_empty(), "and never go through the per-rider slots");
        feeds.flush_batches();
        let f = batch_rx.try_recv().unwrap();
        assert_eq!(f.kind, BATCH_KIND);
        let data: Value = serde_json::from_str(&f.data).unwrap();
        assert_eq!(data, json!([{"id": "r1", "i": 2}, {"id": "r2"}]), "latest per rider, in first-changed order");
        // The per-rider subscriber got its positions as before.
        assert_eq!(each.take_latest().len(), 2);
        assert_eq!(&*each_rx.try_recv().unwrap().data, json!({"id": "o1"}).to_string());
        // Only what moved since: one rider.
        feeds.publish_latest("store/s1", "rider", "r2", &json!({"id": "r2", "n": 1}));
        feeds.flush_batches();
        let data: Value = serde_json::from_str(&batch_rx.try_recv().unwrap().data).unwrap();
        assert_eq!(data, json!([{"id": "r2", "n": 1}]));
        // Subscribing again unbatched switches; unsubscribing leaves nothing behind.
        feeds.subscribe("store/s1", &batch, false);
        assert_eq!(feeds.n_subscriptions(), 2);
        feeds.publish_latest("store/s1", "rider", "r1", &json!({"id": "r1"}));
        feeds.flush_batches();
        assert!(batch_rx.try_recv().is_err());
        assert_eq!(batch.take_latest().len(), 1);
        feeds.unsubscribe("store/s1", 1);
        feeds.unsubscribe("store/s1", 2);
        assert!(!feeds.has_subscribers("store/s1"));
        assert_eq!(feeds.n_subscriptions(), 0);
    }
}
