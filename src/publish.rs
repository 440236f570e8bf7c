//! The publisher: the one observer that turns typed changes into what clients receive. It alone
//! knows which WebSocket topics and MQTT topics a change goes to (through `topics`) and what
//! they carry (through `views`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use darkstore_geoinv::Millis;
use serde_json::{Value, json};

use crate::changes::{Change, Changes, Observer};
use crate::feeds::Feeds;
use crate::model::{Order, Rider, Task};
use crate::state::State;
use crate::topics::{self, Feed};
use crate::views;

/// Where MQTT publications go: (topic, payload).
pub type MqttSink = Box<dyn Fn(String, Vec<u8>) + Send + Sync>;

pub struct Publisher {
    pub feeds: Arc<Feeds>,
    mqtt: OnceLock<MqttSink>,
    state: OnceLock<Weak<State>>,
    promise_ms: Millis,
    pub mqtt_published: AtomicU64,
}

impl Publisher {
    pub fn new(feeds: Arc<Feeds>, promise_ms: Millis) -> Publisher {
        Publisher {
            feeds,
            mqtt: OnceLock::new(),
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

    fn mqtt(&self, topic: String, payload: &Value) {
        if let Some(sink) = self.mqtt.get() {
            sink(topic, payload.to_string().into_bytes());
            self.mqtt_published.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn order(&self, order: &Order) {
        let json = views::order_json(order, self.promise_ms);
        self.feeds.publish(&Feed::Order(&order.id).name(), "status", &json);
        self.feeds.publish(&Feed::Store(&order.store_id).name(), "order", &json);
        self.mqtt(topics::order_status(&order.id), &views::order_status_json(order));
    }

    fn stock(&self, store_id: &str, store: darkstore_geoinv::area::StoreIdx, change: &Change<'_>) {
        let Change::Stock { lines, crossings, now, .. } = change else { return };
        let store_topic = Feed::Store(store_id).name();
        let state = self.state.get().and_then(Weak::upgrade);
        for line in lines.iter() {
            let product = state.as_ref().and_then(|s| s.product(&line.sku));
            let json = views::line_json(line, product.as_deref());
            self.feeds.publish(&store_topic, "stock", &json);
            let mut payload = json;
            payload["ts"] = json!(now);
            self.mqtt(topics::store_stock(store_id), &payload);
        }
        let (Some(state), false) = (state, crossings.is_empty()) else { return };
        for topic in self.feeds.topics_with_prefix(topics::AVAILABILITY_PREFIX) {
            let Some(Feed::Availability(cell)) = Feed::parse(&topic) else { continue };
            let Ok(cell) = cell.parse::<h3o::CellIndex>() else { continue };
            if state.store_for_cell(cell).map(|s| s.idx) != Some(store) {
                continue;
            }
            for c in crossings.iter() {
                match (&c.product, c.now_available) {
                    (Some(p), true) => self.feeds.publish(&topic, "item_available", &views::item_json(p, c.available)),
                    (None, true) => {}
                    (_, false) => self.feeds.publish(&topic, "item_unavailable", &json!({"sku": c.sku})),
                }
            }
        }
    }

    /// A rider's state to whoever watches it: `riders` (admins), its store's feed, and the feeds
    /// of the orders it carries. Positions coalesce per rider.
    fn rider(&self, rider: &Rider) {
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
                    self.feeds.publish(&Feed::Order(o).name(), "arrival", &json);
                }
                let json = views::arrival_json(a.rider, a.place.as_str(), a.entered, a.at, a.orders);
                self.feeds.publish(&Feed::Store(a.store_id).name(), "arrival", &json);
            }
            Change::Area { store_id, area } => {
                self.feeds.publish(&Feed::Store(store_id).name(), "area", &views::area_json(area));
            }
            Change::Eta { order_id, store_id, eta_at, promised_by, reason } => {
                let json = views::eta_json(order_id, *eta_at, *promised_by, reason.as_str());
                self.feeds.publish(&Feed::Order(order_id).name(), "eta", &json);
                self.feeds.publish(&Feed::Store(store_id).name(), "eta", &json);
            }
        }
    }
}
