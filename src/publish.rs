//! The publisher: the one observer that turns typed changes into what clients receive. It alone
//! knows which WebSocket topics and MQTT topics a change goes to (through `topics`) and what
//! they carry (through `views`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use darkstore_geoinv::Millis;
use serde_json::{Value, json};

use crate::changes::{Change, Changes, Observer};
use crate::cluster::relay::Relayed;
use crate::feeds::Feeds;
use crate::model::{Order, Rider, Task};
use crate::state::State;
use crate::topics::{self, Feed};
use crate::views;

/// The frame kinds a relayed message may carry (frames name their kind statically).
fn known_kind(kind: &str) -> Option<&'static str> {
    const KINDS: [&str; 11] = [
        "status",
        "order",
        "stock",
        "rider",
        "rider_position",
        "arrival",
        "area",
        "eta",
        "snapshot",
        "item_available",
        "item_unavailable",
    ];
    KINDS.into_iter().find(|k| *k == kind)
}

impl crate::cluster::relay::Sink for Publisher {
    /// What another node's owner published, to this node's clients (never relayed again).
    fn apply(&self, item: Relayed) {
        match item {
            Relayed::Feed { topic, kind, data } => {
                if let Some(kind) = known_kind(&kind) {
                    self.feeds.publish(&topic, kind, &data);
                }
            }
            Relayed::Latest { topic, kind, key, data } => {
                if let Some(kind) = known_kind(&kind) {
                    self.feeds.publish_latest(&topic, kind, &key, &data);
                }
            }
            Relayed::Crossings { store_id, items } => {
                let Some(state) = self.state.get().and_then(Weak::upgrade) else { return };
                if let Some(store) = state.store(&store_id) {
                    self.crossings(&state, store.idx, &items);
                }
            }
            Relayed::Mqtt { topic, payload } => self.mqtt_local(topic, payload.into_bytes()),
        }
    }
}

/// Where MQTT publications go: (topic, payload).
pub type MqttSink = Box<dyn Fn(String, Vec<u8>) + Send + Sync>;

/// Whether this node speaks for a rider (cluster mode).
pub type RiderOwned = Box<dyn Fn(&Rider) -> bool + Send + Sync>;

pub struct Publisher {
    pub feeds: Arc<Feeds>,
    mqtt: OnceLock<MqttSink>,
    /// Cluster mode: what this node publishes as a region's owner goes to the other nodes too.
    relay: OnceLock<Arc<crate::cluster::relay::Relay>>,
    /// Cluster mode: whether this node speaks for a rider (it dispatches it).
    rider_owned: OnceLock<RiderOwned>,
    state: OnceLock<Weak<State>>,
    promise_ms: Millis,
    pub mqtt_published: AtomicU64,
}

impl Publisher {
    pub fn new(feeds: Arc<Feeds>, promise_ms: Millis) -> Publisher {
        Publisher {
            feeds,
            mqtt: OnceLock::new(),
            relay: OnceLock::new(),
            rider_owned: OnceLock::new(),
            state: OnceLock::new(),
            promise_ms,
            mqtt_published: AtomicU64::new(0),
        }
    }

    /// The state, for looking up which store serves an availability cell.
    pub fn set_state(&self, state: Weak<State>) {
        let _ = self.state.set(state);
    }

    /// Where MQTT publications go (set once, when the broker client exists).
    pub fn set_mqtt(&self, sink: MqttSink) {
        let _ = self.mqtt.set(sink);
    }

    /// Cluster mode: relays this node's publications, and speaks for the riders `owned` says.
    pub fn set_relay(&self, relay: Arc<crate::cluster::relay::Relay>, owned: RiderOwned) {
        let _ = self.relay.set(relay);
        let _ = self.rider_owned.set(owned);
    }

    fn relay(&self, item: impl FnOnce() -> Relayed) {
        if let Some(r) = self.relay.get() {
            r.send(item());
        }
    }

    fn mqtt(&self, topic: String, payload: &Value) {
        let text = payload.to_string();
        self.relay(|| Relayed::Mqtt { topic: topic.clone(), payload: text.clone() });
        self.mqtt_local(topic, text.into_bytes());
    }

    fn mqtt_local(&self, topic: String, payload: Vec<u8>) {
        if let Some(sink) = self.mqtt.get() {
            sink(topic, payload);
            self.mqtt_published.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A frame for this node's subscribers and, in cluster mode, the other nodes'.
    fn feed(&self, topic: &str, kind: &'static str, data: &Value) {
        self.relay(|| Relayed::Feed { topic: topic.to_owned(), kind: kind.to_owned(), data: data.clone() });
        self.feeds.publish(topic, kind, data);
    }

    fn order(&self, order: &Order) {
        let json = views::order_json(order, self.promise_ms);
        self.feed(&Feed::Order(&order.id).name(), "status", &json);
        self.feed(&Feed::Store(&order.store_id).name(), "order", &json);
        self.mqtt(topics::order_status(&order.id), &views::order_status_json(order));
    }

    fn stock(&self, store_id: &str, store: darkstore_geoinv::area::StoreIdx, change: &Change<'_>) {
        let Change::Stock { lines, crossings, now, .. } = change else { return };
        let store_topic = Feed::Store(store_id).name();
        let state = self.state.get().and_then(Weak::upgrade);
        for line in lines.iter() {
            let product = state.as_ref().and_then(|s| s.product(&line.sku));
            let json = views::line_json(line, product.as_deref());
            self.feed(&store_topic, "stock", &json);
            let mut payload = json;
            payload["ts"] = json!(now);
            self.mqtt(topics::store_stock(store_id), &payload);
        }
        if crossings.is_empty() {
            return;
        }
        let items: Vec<(String, i64, bool)> =
            crossings.iter().map(|c| (c.sku.to_string(), c.available, c.now_available)).collect();
        self.relay(|| Relayed::Crossings { store_id: store_id.to_owned(), items: items.clone() });
        if let Some(state) = state {
            self.crossings(&state, store, &items);
        }
    }

    /// Items of `store` that became available or not, to the subscribers of the cells it serves.
    fn crossings(&self, state: &State, store: darkstore_geoinv::area::StoreIdx, items: &[(String, i64, bool)]) {
        for topic in self.feeds.topics_with_prefix(topics::AVAILABILITY_PREFIX) {
            let Some(Feed::Availability(cell)) = Feed::parse(&topic) else { continue };
            let Ok(cell) = cell.parse::<h3o::CellIndex>() else { continue };
            if state.store_for_cell(cell).map(|s| s.idx) != Some(store) {
                continue;
            }
            for (sku, available, now_available) in items {
                match (state.product(sku), now_available) {
                    (Some(p), true) => self.feeds.publish(&topic, "item_available", &views::item_json(&p, *available)),
                    (None, true) => {}
                    (_, false) => self.feeds.publish(&topic, "item_unavailable", &json!({"sku": sku})),
                }
            }
        }
    }

    /// A rider's state to whoever watches it: `riders` (admins), its store's feed, and the feeds
    /// of the orders it carries. Positions coalesce per rider.
    fn rider(&self, rider: &Rider) {
        if let Some(owned) = self.rider_owned.get() {
            // Cluster mode: the node that dispatches a rider speaks for it, to every node.
            if owned(rider) {
                self.relay_rider(rider);
            } else {
                return;
            }
        }
        let feeds = &self.feeds;
        let to_riders = feeds.has_subscribers("riders");
        let store_topic = rider.store_id.as_deref().map(|s| Feed::Store(s).name()).filter(|t| feeds.has_subscribers(t));
        let order_topics: Vec<String> = rider
            .task
            .iter()
            .flat_map(|t| t.order_ids())
            .map(|o| Feed::Order(o).name())
            .filter(|t| feeds.has_subscribers(t))
            .collect();
        if !to_riders && store_topic.is_none() && order_topics.is_empty() {
            return;
        }
        let json = views::rider_json(rider);
        if to_riders {
            feeds.publish_latest(&Feed::Riders.name(), "rider", &rider.id, &json);
        }
        if let Some(t) = store_topic {
            feeds.publish_latest(&t, "rider", &rider.id, &json);
        }
        if !order_topics.is_empty() {
            // A customer sees where its rider is, never the rider's other orders.
            let position = views::rider_position_json(rider);
            for t in order_topics {
                feeds.publish_latest(&t, "rider_position", &rider.id, &position);
            }
        }
    }

    /// What `rider` publishes locally, sent to the other nodes whatever their subscribers.
    fn relay_rider(&self, rider: &Rider) {
        let json = views::rider_json(rider);
        self.relay(|| Relayed::Latest {
            topic: Feed::Riders.name(),
            kind: "rider".into(),
            key: rider.id.clone(),
            data: json.clone(),
        });
        if let Some(s) = rider.store_id.as_deref() {
            self.relay(|| Relayed::Latest {
                topic: Feed::Store(s).name(),
                kind: "rider".into(),
                key: rider.id.clone(),
                data: json.clone(),
            });
        }
        let position = views::rider_position_json(rider);
        for o in rider.task.iter().flat_map(|t| t.order_ids()) {
            self.relay(|| Relayed::Latest {
                topic: Feed::Order(o).name(),
                kind: "rider_position".into(),
                key: rider.id.clone(),
                data: position.clone(),
            });
        }
    }

    fn task(&self, rider: &str, task: &Task) {
        self.mqtt(topics::rider_tasks(rider), &views::task_json(task));
    }
}

impl Observer for Publisher {
    fn observe(&self, change: &Change<'_>, _hub: &Changes) {
        match change {
            Change::Order { order, .. } => self.order(order),
            Change::Stock { store_id, store, .. } => self.stock(store_id, *store, change),
            Change::Rider { rider } => self.rider(rider),
            Change::Task { rider, task } => self.task(rider, task),
            Change::Arrival(a) => {
                // An order's feed names that order only, never the rider's others.
                for o in a.orders {
                    let json = views::arrival_json(a.rider, a.place.as_str(), a.entered, a.at, std::slice::from_ref(o));
                    self.feed(&Feed::Order(o).name(), "arrival", &json);
                }
                let json = views::arrival_json(a.rider, a.place.as_str(), a.entered, a.at, a.orders);
                self.feed(&Feed::Store(a.store_id).name(), "arrival", &json);
            }
            Change::Area { store_id, area } => {
                self.feed(&Feed::Store(store_id).name(), "area", &views::area_json(area));
            }
            Change::Eta { order_id, store_id, eta_at, promised_by, reason } => {
                let json = views::eta_json(order_id, *eta_at, *promised_by, reason.as_str());
                self.feed(&Feed::Order(order_id).name(), "eta", &json);
                self.feed(&Feed::Store(store_id).name(), "eta", &json);
            }
        }
    }
}
