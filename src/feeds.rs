//! The in-process feed bus: what the publisher (`publish.rs`) publishes here once is fanned out
//! to WebSocket subscribers. The bus is topic-agnostic: names come from `topics`.
//! A message's data is serialized once per publish and shared by every subscriber. Each subscriber
//! has a bounded queue; a subscriber whose queue is full is marked to be closed (1013) rather than
//! slowing the publisher or anyone else. Rider positions are not queued: they overwrite the latest
//! position per (topic, rider) in the subscriber's coalescing slot, so a busy map never grows a
//! backlog.

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

#[derive(Debug, Default)]
pub struct FeedCounters {
    pub published: AtomicU64,
    pub enqueued: AtomicU64,
    pub coalesced: AtomicU64,
    pub overflowed: AtomicU64,
}

#[derive(Default)]
pub struct Feeds {
    topics: DashMap<String, Vec<Arc<Subscriber>>, ahash::RandomState>,
    pub counters: FeedCounters,
}

impl Feeds {
    pub fn new() -> Feeds {
        Feeds::default()
    }

    pub fn has_subscribers(&self, topic: &str) -> bool {
        self.topics.get(topic).is_some_and(|s| !s.is_empty())
    }

    /// Active topics starting with `prefix`.
    pub fn topics_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.topics
            .iter()
            .filter(|e| e.key().starts_with(prefix) && !e.value().is_empty())
            .map(|e| e.key().clone())
            .collect()
    }

    pub fn n_subscriptions(&self) -> usize {
        self.topics.iter().map(|e| e.value().len()).sum()
    }

    pub fn subscribe(&self, topic: &str, sub: &Arc<Subscriber>) {
        let mut subs = self.topics.entry(topic.to_owned()).or_default();
        if !subs.iter().any(|s| s.id == sub.id) {
            subs.push(sub.clone());
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
    }

    /// Queues a message for every subscriber of `topic`.
    pub fn publish(&self, topic: &str, kind: &'static str, data: &Value) {
        let Some(subs) = self.topics.get(topic) else { return };
        if subs.is_empty() {
            return;
        }
        let frame = Frame { topic: Arc::from(topic), kind, data: Arc::from(data.to_string()) };
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        for sub in subs.iter() {
            match sub.queue.try_send(frame.clone()) {
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
    }

    /// Publishes the latest value of `key` on `topic`: subscribers get only the newest one.
    pub fn publish_latest(&self, topic: &str, kind: &'static str, key: &str, data: &Value) {
        let Some(subs) = self.topics.get(topic) else { return };
        if subs.is_empty() {
            return;
        }
        let topic: Arc<str> = Arc::from(topic);
        let key: Arc<str> = Arc::from(key);
        let frame = Frame { topic: topic.clone(), kind, data: Arc::from(data.to_string()) };
        self.counters.published.fetch_add(1, Ordering::Relaxed);
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
        feeds.subscribe("store/s1", &fast);
        feeds.subscribe("store/s1", &slow);
        feeds.subscribe("store/s1", &slow);
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
}
