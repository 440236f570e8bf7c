//! Feeds and riders across nodes.
//!
//! Out (`darkstore.feed`): what a region's owner tells its clients (WebSocket frames of order,
//! store and availability topics, and, with embedded brokers, MQTT messages such as riders'
//! tasks) goes to every other node too, which hands it to its own clients. Each node numbers the
//! frames of its own subscriptions, so `seq` stays gapless per subscription.
//!
//! In (`darkstore.rider`): what a rider says on the broker it is connected to (positions, shifts,
//! events) reaches every node (relayed from a node's own embedded broker; a shared external
//! broker reaches every node by itself), so every node sees every rider (quotes, the index); a
//! rider is dispatched by its home region's owner or, lent by the border rule, a neighbour's
//! (`claims.rs`), and an event changes an order only on the node that holds the order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::Cluster;
use crate::mqtt::Incoming;

pub const FEED_SUBJECT: &str = "darkstore.feed";
pub const RIDER_SUBJECT: &str = "darkstore.rider";

/// One thing an owner told its clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Relayed {
    /// A WebSocket frame.
    Feed { topic: String, kind: String, data: Value },
    /// A WebSocket frame that replaces the last one of `key` (rider positions).
    Latest { topic: String, kind: String, key: String, data: Value },
    /// Items of a store that became available or not: each node tells its own subscribers of the
    /// cells the store serves. (sku, available units, available now)
    Crossings { store_id: String, items: Vec<(String, i64, bool)> },
    /// An MQTT message (only between nodes with their own embedded brokers).
    Mqtt { topic: String, payload: String },
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    from: String,
    item: T,
}

/// A rider's message as it came in on some node's broker (or HTTP).
#[derive(Serialize, Deserialize)]
struct RiderMessage {
    topic: String,
    payload: String,
}

/// The sending half: cheap to call from observers (never blocks; a full queue drops and counts).
pub struct Relay {
    tx: mpsc::Sender<Relayed>,
    pub dropped: AtomicU64,
    pub sent: AtomicU64,
    /// MQTT messages are relayed only when every node has its own broker.
    pub mqtt: bool,
}

impl Relay {
    pub fn send(&self, item: Relayed) {
        if matches!(item, Relayed::Mqtt { .. }) && !self.mqtt {
            return;
        }
        if self.tx.try_send(item).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where relayed things land on this node.
pub trait Sink: Send + Sync {
    fn apply(&self, item: Relayed);
}

impl Cluster {
    /// Starts relaying: this node's owner-side messages out, the other nodes' in (to `sink`).
    pub fn start_relay(
        self: &Arc<Self>,
        sink: Arc<dyn Sink>,
        mqtt: bool,
        mut stop: watch::Receiver<bool>,
    ) -> (Arc<Relay>, Vec<tokio::task::JoinHandle<()>>) {
        let (tx, mut rx) = mpsc::channel::<Relayed>(65_536);
        let relay = Arc::new(Relay { tx, dropped: AtomicU64::new(0), sent: AtomicU64::new(0), mqtt });
        let mut handles = Vec::new();
        let (client, me, counter, mut stop_out) =
            (self.client.clone(), self.node_id.clone(), relay.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    item = rx.recv() => match item { Some(i) => i, None => break },
                    _ = stop_out.changed() => break,
                };
                let Ok(bytes) = serde_json::to_vec(&Envelope { from: me.clone(), item }) else { continue };
                if client.publish(FEED_SUBJECT, bytes.into()).await.is_err() {
                    counter.dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    counter.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        let (client, me) = (self.client.clone(), self.node_id.clone());
        handles.push(tokio::spawn(async move {
            let Ok(mut sub) = client.subscribe(FEED_SUBJECT).await else {
                tracing::error!("cannot hear the other nodes' feeds");
                return;
            };
            loop {
                tokio::select! {
                    msg = sub.next() => {
                        let Some(msg) = msg else { break };
                        match serde_json::from_slice::<Envelope<Relayed>>(&msg.payload) {
                            Ok(e) if e.from != me => sink.apply(e.item),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "an unreadable relayed feed message"),
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
        }));
        (relay, handles)
    }

    /// Rider messages: what arrives on this node's broker goes to every other node, and what
    /// arrives from the others joins it, into the one stream ingest reads.
    /// `relay_out`: whether this node's riders' MQTT messages go on to the other nodes — only
    /// when riders connect to this node's own embedded broker; with a broker all nodes share,
    /// every node hears every rider there already (relaying would make each node handle each
    /// message once per node). Messages relayed by others (and riders' HTTP fallbacks) are heard
    /// either way.
    pub fn relay_riders(
        self: &Arc<Self>,
        mut local: mpsc::Receiver<Incoming>,
        relay_out: bool,
        mut stop: watch::Receiver<bool>,
    ) -> (mpsc::Receiver<Incoming>, Vec<tokio::task::JoinHandle<()>>) {
        let (tx, rx) = mpsc::channel::<Incoming>(65_536);
        let mut handles = Vec::new();
        let (client, me, out, mut stop_in) = (self.client.clone(), self.node_id.clone(), tx.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    msg = local.recv() => match msg { Some(m) => m, None => break },
                    _ = stop_in.changed() => break,
                };
                if relay_out {
                    let relayed = RiderMessage {
                        topic: msg.topic.clone(),
                        payload: String::from_utf8_lossy(&msg.payload).into_owned(),
                    };
                    if let Ok(bytes) = serde_json::to_vec(&Envelope { from: me.clone(), item: relayed }) {
                        let _ = client.publish(RIDER_SUBJECT, bytes.into()).await;
                    }
                }
                if out.send(msg).await.is_err() {
                    break;
                }
            }
        }));
        let (client, me) = (self.client.clone(), self.node_id.clone());
        handles.push(tokio::spawn(async move {
            let Ok(mut sub) = client.subscribe(RIDER_SUBJECT).await else {
                tracing::error!("cannot hear riders connected to other nodes");
                return;
            };
            loop {
                tokio::select! {
                    msg = sub.next() => {
                        let Some(msg) = msg else { break };
                        let Ok(e) = serde_json::from_slice::<Envelope<RiderMessage>>(&msg.payload) else { continue };
                        if e.from == me {
                            continue;
                        }
                        let incoming = Incoming { topic: e.item.topic, payload: Bytes::from(e.item.payload.into_bytes()) };
                        if tx.send(incoming).await.is_err() {
                            break;
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
        }));
        (rx, handles)
    }

    /// A rider's message that came in over HTTP: the other nodes hear it as if over MQTT.
    pub fn relay_rider_message(self: &Arc<Self>, topic: String, payload: &[u8]) {
        let envelope = Envelope {
            from: self.node_id.clone(),
            item: RiderMessage { topic, payload: String::from_utf8_lossy(payload).into_owned() },
        };
        let Ok(bytes) = serde_json::to_vec(&envelope) else { return };
        let client = self.client.clone();
        tokio::spawn(async move {
            let _ = client.publish(RIDER_SUBJECT, bytes.into()).await;
        });
    }
}
