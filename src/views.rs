//! JSON views of domain objects, shared by every wire that carries them (HTTP responses,
//! WebSocket frames, MQTT payloads), so an order looks the same everywhere.

use darkstore_geoinv::Millis;
use darkstore_geoinv::order::OrderStatus;
use serde_json::{Value, json};

use crate::fleet::Live;
use crate::state::{LineView, Order, Product};

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// An order. `promise_ms` is the delivery promise, for `deadline`.
pub fn order_json(o: &Order, promise_ms: Millis) -> Value {
    let lines: Vec<Value> =
        o.lines.iter().map(|l| json!({"sku": l.sku, "qty": l.qty, "price_minor": l.price_minor})).collect();
    let total: i64 = o.lines.iter().map(|l| l.qty * l.price_minor).sum();
    json!({
        "id": o.id,
        "status": o.status.as_str(),
        "store_id": o.store_id,
        "rider_id": o.rider_id,
        "customer_id": o.customer_id,
        "lat": o.lat,
        "lng": o.lng,
        "h3_cell": darkstore_geoinv::area::cell_of(o.lat, o.lng).ok().map(|c| c.to_string()),
        "eta_minutes": o.eta_minutes,
        "lines": lines,
        "total_minor": total,
        "created_at": rfc3339(o.created_at),
        "updated_at": rfc3339(o.updated_at),
        "promised_by": rfc3339(o.created_at + o.eta_minutes * 60_000),
        "deadline": rfc3339(o.created_at + promise_ms),
        "delivered_at": (o.status == OrderStatus::Delivered).then(|| rfc3339(o.updated_at)),
        "payment_hold_expires_at": o.hold_expires_at.filter(|_| o.status == OrderStatus::PendingPayment).map(rfc3339),
    })
}

/// A stock line, with the product's name when known.
pub fn line_json(line: &LineView, product: Option<&Product>) -> Value {
    json!({
        "sku": line.sku,
        "name": product.map(|p| p.name.as_str()),
        "category": product.map(|p| p.category.as_str()),
        "on_hand": line.totals.on_hand,
        "reserved": line.totals.reserved,
        "available": line.totals.available,
        "low_stock": line.low_stock,
        "next_expiry": line.next_expiry.map(rfc3339),
    })
}

/// A rider's live state.
pub fn rider_json(id: &str, store_id: Option<&str>, live: &Live) -> Value {
    json!({
        "id": id,
        "store_id": store_id,
        "on_shift": live.on_shift,
        "status": live.status.as_str(),
        "lat": live.pos.map(|p| p.0),
        "lng": live.pos.map(|p| p.1),
        "ts": live.pos.map(|_| live.ts),
        "orders": live.task.as_ref().map(|t| t.orders.clone()).unwrap_or_default(),
    })
}
