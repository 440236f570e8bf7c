//! JSON views of domain values, shared by every wire that carries them (HTTP responses,
//! WebSocket frames, MQTT payloads), so an order looks the same everywhere. Depends on the model
//! only.

use darkstore_geoinv::Millis;
use darkstore_geoinv::order::OrderStatus;
use serde_json::{Value, json};

use crate::model::{LineView, Order, Product, Rider, Task};

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// An order. `promise_ms` is the delivery promise, for `deadline`.
pub fn order_json(o: &Order, promise_ms: Millis) -> Value {
    let lines: Vec<Value> =
        o.lines.iter().map(|l| json!({"sku": l.sku, "qty": l.qty, "price_minor": l.price_minor})).collect();
    let mut v = json!({
        "id": o.id,
        "status": o.status.as_str(),
        "payment_status": o.payment_status.as_str(),
        "store_id": o.store_id,
        "rider_id": o.rider_id,
        "customer_id": o.customer_id,
        "lat": o.lat,
        "lng": o.lng,
        "h3_cell": darkstore_geoinv::area::cell_of(o.lat, o.lng).ok().map(|c| c.to_string()),
        "eta_minutes": o.eta_minutes,
        "lines": lines,
        "total_minor": o.total_minor,
        "created_at": rfc3339(o.created_at),
        "updated_at": rfc3339(o.updated_at),
        "promised_by": rfc3339(o.promised_by),
        "delivery_fee_minor": o.delivery_fee_minor,
        "deadline": rfc3339(o.created_at + promise_ms),
        "delivered_at": (o.status == OrderStatus::Delivered).then(|| rfc3339(o.updated_at)),
        "packed_at": o.packed_at.map(rfc3339),
        "payment_hold_expires_at": o.hold_expires_at.filter(|_| o.status == OrderStatus::PendingPayment).map(rfc3339),
    });
    if let Some(refund) = o.refund_minor {
        v["refund_minor"] = json!(refund);
    }
    v
}

/// `open`, and `opens_at` or `paused`, of a store.
pub fn open_fields(v: &mut Value, state: &crate::model::OpenState) {
    use crate::model::OpenState;
    v["open"] = json!(matches!(state, OpenState::Open));
    match state {
        OpenState::Open => {}
        OpenState::Closed { opens_at } => v["opens_at"] = json!(opens_at.map(rfc3339)),
        OpenState::Paused { reason } => v["paused_reason"] = json!(reason),
    }
}

/// A rider entering or leaving the fence of its store or of a door.
pub fn arrival_json(rider: &str, place: &str, entered: bool, at: Millis, orders: &[String]) -> Value {
    json!({"rider_id": rider, "place": place, "event": if entered { "entered" } else { "left" }, "at": rfc3339(at), "orders": orders})
}

/// A store area's surge state.
pub fn area_json(a: &crate::model::AreaState) -> Value {
    let pressure = if a.pressure.is_finite() { (a.pressure * 100.0).round() / 100.0 } else { 99.0 };
    json!({"level": a.level, "fee_minor": a.fee_minor, "pressure": pressure})
}

/// An order's estimated arrival, as its feed and its store's feed carry it.
pub fn eta_json(order_id: &str, eta_at: Millis, promised_by: Millis, reason: &str) -> Value {
    json!({"order_id": order_id, "eta_at": rfc3339(eta_at), "promised_by": rfc3339(promised_by), "late": eta_at > promised_by, "reason": reason})
}

/// An order as its own customer sees it: with the delivery code it gives the rider at the door.
/// `viewer` is the caller's (role, subject); anyone else gets [`order_json`].
pub fn order_json_for(o: &Order, promise_ms: Millis, viewer: (darkstore_auth::Role, &str)) -> Value {
    let mut v = order_json(o, promise_ms);
    let own =
        matches!(viewer.0, darkstore_auth::Role::Customer | darkstore_auth::Role::Admin) && viewer.1 == o.customer_id;
    if own && let Some(code) = &o.delivery_code {
        v["delivery_code"] = json!(code);
    }
    v
}

/// An order's status as MQTT `orders/{id}/status` carries it.
pub fn order_status_json(o: &Order) -> Value {
    json!({
        "order_id": o.id,
        "status": o.status.as_str(),
        "payment_status": o.payment_status.as_str(),
        "store_id": o.store_id,
        "rider_id": o.rider_id,
        "ts": o.updated_at,
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

/// A product as the catalog shows it.
pub fn product_json(p: &Product) -> Value {
    json!({
        "sku": &*p.sku,
        "name": p.name,
        "category": p.category,
        "price_minor": p.price_minor,
        "low_stock_threshold": p.low_stock_threshold,
    })
}

/// One availability item.
pub fn item_json(p: &Product, available: i64) -> Value {
    json!({"sku": &*p.sku, "name": p.name, "category": p.category, "price_minor": p.price_minor, "available": available})
}

/// Appends a product's availability item, with `available` units, to `out`. The part before the
/// number is serialized once per product and kept in its `wire` slot.
pub fn write_item(out: &mut String, p: &Product, available: i64) {
    use std::fmt::Write as _;
    let head = p.wire.get_or_init(|| {
        let head =
            json!({"sku": &*p.sku, "name": p.name, "category": p.category, "price_minor": p.price_minor}).to_string();
        // `{…}` becomes `{…,"available":`, ready for the number and the closing brace.
        format!("{},\"available\":", &head[..head.len() - 1]).into_boxed_str()
    });
    out.push_str(head);
    let _ = write!(out, "{available}}}");
}

/// A rider's live state, as feeds show it.
pub fn rider_json(r: &Rider) -> Value {
    json!({
        "id": r.id,
        "store_id": r.store_id,
        "on_shift": r.on_shift,
        "status": r.status.as_str(),
        "lat": r.pos.map(|p| p.0),
        "lng": r.pos.map(|p| p.1),
        "ts": r.pos.map(|_| r.ts),
        "orders": r.task.as_ref().map(|t| t.order_ids().collect::<Vec<_>>()).unwrap_or_default(),
    })
}

/// What an order's feed shows of the rider carrying it: where it is, nothing of its other work.
pub fn rider_position_json(r: &Rider) -> Value {
    json!({
        "id": r.id,
        "status": r.status.as_str(),
        "lat": r.pos.map(|p| p.0),
        "lng": r.pos.map(|p| p.1),
        "ts": r.pos.map(|_| r.ts),
    })
}

/// A rider as `GET /v1/riders/{id}` shows it: the feed's view, with its name and task.
pub fn rider_detail_json(r: &Rider) -> Value {
    let mut v = rider_json(r);
    v["name"] = json!(r.name);
    v["task"] = json!(r.task.as_ref().map(|t| json!({
        "task_id": t.id, "store_id": t.store_id, "orders": t.order_ids().collect::<Vec<_>>(), "picked_up": t.picked,
    })));
    if let Some(o) = v.as_object_mut() {
        o.remove("orders");
    }
    v
}

/// A task as the rider's app receives it on `riders/{id}/tasks`; no orders withdraws it.
pub fn task_json(t: &Task) -> Value {
    json!({
        "task_id": t.id,
        "store_id": t.store_id,
        "pickup": {"lat": t.pickup.0, "lng": t.pickup.1},
        "orders": t.orders.iter().map(|o| json!({"id": o.id, "lat": o.lat, "lng": o.lng})).collect::<Vec<_>>(),
        "assigned_at": t.assigned_at,
        "pickup_eta": t.pickup_eta,
    })
}
