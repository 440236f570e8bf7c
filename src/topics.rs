//! Every topic name, WebSocket and MQTT, spelled here and nowhere else.

/// A WebSocket feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed<'a> {
    /// `order/{id}`: an order's status, its rider's position while assigned, ETA updates.
    Order(&'a str),
    /// `store/{id}`: a store's order queue, stock changes and riders.
    Store(&'a str),
    /// `availability/{h3_cell}`: items appearing and disappearing for a cell.
    Availability(&'a str),
    /// `riders`: every rider's position (admin).
    Riders,
}

impl<'a> Feed<'a> {
    pub fn parse(topic: &'a str) -> Option<Feed<'a>> {
        if topic == "riders" {
            return Some(Feed::Riders);
        }
        let (kind, rest) = topic.split_once('/')?;
        match kind {
            "order" => Some(Feed::Order(rest)),
            "store" => Some(Feed::Store(rest)),
            "availability" => Some(Feed::Availability(rest)),
            _ => None,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Feed::Order(id) => format!("order/{id}"),
            Feed::Store(id) => format!("store/{id}"),
            Feed::Availability(cell) => format!("availability/{cell}"),
            Feed::Riders => "riders".to_owned(),
        }
    }
}

/// The prefix of every availability feed.
pub const AVAILABILITY_PREFIX: &str = "availability/";

/// What the WebSocket accepts, for error messages.
pub const FEEDS_HELP: &str = "topics are order/{id}, store/{id}, availability/{h3_cell} and riders";

/// What a rider publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RiderInbox {
    Location,
    Shift,
    Events,
}

/// The MQTT topics the server subscribes to.
pub const RIDER_INBOX_FILTERS: [&str; 3] = ["riders/+/location", "riders/+/shift", "riders/+/events"];

/// An MQTT topic under `riders/`, as the server reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RiderTopic<'a> {
    /// `riders/{id}/{location|shift|events}`.
    Inbox(&'a str, RiderInbox),
    /// Another topic of a rider (the server's own tasks).
    Other,
    /// Not a rider's topic, or an invalid id.
    Invalid,
}

pub fn parse_rider_topic(topic: &str) -> RiderTopic<'_> {
    let Some((id, kind)) = topic.strip_prefix("riders/").and_then(|rest| rest.split_once('/')) else {
        return RiderTopic::Invalid;
    };
    if !darkstore_geoinv::ids::valid_id(id) {
        return RiderTopic::Invalid;
    }
    match kind {
        "location" => RiderTopic::Inbox(id, RiderInbox::Location),
        "shift" => RiderTopic::Inbox(id, RiderInbox::Shift),
        "events" => RiderTopic::Inbox(id, RiderInbox::Events),
        _ => RiderTopic::Other,
    }
}

/// `riders/{id}/{location|shift|events}`: what a rider publishes.
pub fn rider_inbox(rider: &str, inbox: RiderInbox) -> String {
    let kind = match inbox {
        RiderInbox::Location => "location",
        RiderInbox::Shift => "shift",
        RiderInbox::Events => "events",
    };
    format!("riders/{rider}/{kind}")
}

/// `riders/{id}/tasks`: a rider's task, sent by the server.
pub fn rider_tasks(rider: &str) -> String {
    format!("riders/{rider}/tasks")
}

/// `stores/{id}/stock`: stock changes of a store.
pub fn store_stock(store: &str) -> String {
    format!("stores/{store}/stock")
}

/// `orders/{id}/status`: status changes of an order.
pub fn order_status(order: &str) -> String {
    format!("orders/{order}/status")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rider_inbox() {
        assert_eq!(parse_rider_topic("riders/r-1/location"), RiderTopic::Inbox("r-1", RiderInbox::Location));
        assert_eq!(parse_rider_topic("riders/r-1/events"), RiderTopic::Inbox("r-1", RiderInbox::Events));
        assert_eq!(parse_rider_topic("riders/r-1/tasks"), RiderTopic::Other);
        assert_eq!(parse_rider_topic("riders/bad id/location"), RiderTopic::Invalid);
        assert_eq!(parse_rider_topic("stores/s1/stock"), RiderTopic::Invalid);
        assert_eq!(parse_rider_topic("riders/"), RiderTopic::Invalid);
    }

    #[test]
    fn feeds_round_trip() {
        for t in ["order/o1", "store/s1", "availability/8961892d0a3ffff", "riders"] {
            assert_eq!(Feed::parse(t).map(|f| f.name()).as_deref(), Some(t));
        }
        assert_eq!(Feed::parse("stock/x"), None);
        assert_eq!(Feed::parse("order"), None);
    }
}
