//! Orders: placement, reading, cancelling, packing; the payment provider's webhook.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{AppRef, Caller, check_id, check_point, detached, order_access, parse_json};
use crate::auth::{self, Role};
use crate::error::ApiError;
use crate::metrics::OrderOutcome;
use crate::model::Order;
use crate::state::{PlaceError, PlaceOrder};
use darkstore_geoinv::order::{OrderStatus, PaymentEvent, PaymentOutcome};

/// Most lines one order may have.
const MAX_LINES: usize = 100;
/// Most units of one SKU one order may ask for.
const MAX_QTY: i64 = 1_000;
/// Longest idempotency key accepted.
const MAX_KEY_LEN: usize = 200;

#[derive(Deserialize, Serialize)]
pub struct LineBody {
    sku: String,
    qty: i64,
}

#[derive(Deserialize, Serialize)]
pub struct OrderBody {
    lat: f64,
    lng: f64,
    lines: Vec<LineBody>,
}

/// An order as the API shows it.
pub fn order_json(app: &AppRef, o: &Order) -> Value {
    with_eta(app, o, crate::views::order_json(o, app.state.promise_ms()))
}

/// An order as `caller` may see it (its customer also gets the delivery code).
fn order_json_for(app: &AppRef, caller: &Caller, o: &Order) -> Value {
    with_eta(app, o, crate::views::order_json_for(o, app.state.promise_ms(), (caller.0.role, &caller.0.sub)))
}

/// Adds the order's current estimate of arrival (`eta_at`; null once it is finished or when the
/// server has none, e.g. for an order placed before a restart that has no rider yet).
pub fn with_eta(app: &AppRef, o: &Order, mut v: Value) -> Value {
    let eta = if o.status.is_final() { None } else { app.promises.eta_at(&o.id) };
    v["eta_at"] = serde_json::json!(eta.map(crate::views::rfc3339));
    v
}

fn validate(body: &OrderBody) -> Result<(), ApiError> {
    check_point(body.lat, body.lng)?;
    if body.lines.is_empty() {
        return Err(ApiError::invalid("an order needs at least one line"));
    }
    if body.lines.len() > MAX_LINES {
        return Err(ApiError::invalid(format!("an order has at most {MAX_LINES} lines")));
    }
    for (i, line) in body.lines.iter().enumerate() {
        check_id(&format!("lines[{i}].sku"), &line.sku)?;
        if !(1..=MAX_QTY).contains(&line.qty) {
            return Err(ApiError::invalid(format!("lines[{i}].qty must be an integer in [1, {MAX_QTY}]")));
        }
        if body.lines[..i].iter().any(|l| l.sku == line.sku) {
            return Err(ApiError::invalid(format!(
                "lines[{i}].sku {:?} appears twice: put the whole quantity on one line",
                line.sku
            )));
        }
    }
    Ok(())
}

pub async fn place(State(app): State<AppRef>, caller: Caller, headers: HeaderMap, body: Bytes) -> Response {
    let started = std::time::Instant::now();
    let viewer = (caller.0.role, caller.0.sub.clone());
    let (outcome, response) = match place_inner(&app, caller, &headers, &body).await {
        Ok((order, replayed)) => {
            let body = crate::views::order_json_for(&order, app.state.promise_ms(), (viewer.0, &viewer.1));
            let body = with_eta(&app, &order, body);
            let mut response = (StatusCode::CREATED, Json(body)).into_response();
            if replayed {
                response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            (if replayed { OrderOutcome::Replayed } else { OrderOutcome::Created }, response)
        }
        Err((outcome, e)) => (outcome, e.into_response()),
    };
    app.state.metrics.order(outcome);
    app.state.metrics.order_latency.observe(started.elapsed().as_secs_f64());
    response
}

async fn place_inner(
    app: &AppRef,
    caller: Caller,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Order, bool), (OrderOutcome, ApiError)> {
    let invalid = |e| (OrderOutcome::Invalid, e);
    caller.require(&[Role::Customer, Role::Admin]).map_err(invalid)?;
    let key = headers
        .get("idempotency-key")
        .ok_or_else(|| ApiError::bad_request("the Idempotency-Key header is required"))
        .and_then(|v| {
            // Visible ASCII only (no spaces): what the document's pattern says.
            let valid =
                |k: &&[u8]| !k.is_empty() && k.len() <= MAX_KEY_LEN && k.iter().all(|b| (b'!'..=b'~').contains(b));
            Some(v.as_bytes()).filter(valid).map(|k| String::from_utf8_lossy(k).into_owned()).ok_or_else(|| {
                ApiError::bad_request(format!("Idempotency-Key must be 1-{MAX_KEY_LEN} visible ASCII characters"))
            })
        })
        .map_err(invalid)?;
    let order: OrderBody = parse_json(body).map_err(invalid)?;
    validate(&order).map_err(invalid)?;
    let canonical = serde_json::to_vec(&order).expect("order body serializes");
    let request_hash = hex::encode(Sha256::digest(&canonical));
    let req = PlaceOrder {
        customer_id: caller.0.sub.clone(),
        idempotency_key: key,
        request_hash,
        lat: order.lat,
        lng: order.lng,
        lines: order.lines.into_iter().map(|l| (l.sku, l.qty)).collect(),
    };
    let state = app.state.clone();
    let placed =
        detached(async move { state.place_order(req).await }).await.map_err(|e| (OrderOutcome::Unavailable, e))?;
    match placed {
        Ok(p) => Ok((p.order, p.replayed)),
        Err(e) => {
            let outcome = match &e {
                PlaceError::InvalidPoint | PlaceError::UnknownSku(_) => OrderOutcome::Invalid,
                PlaceError::NotServiceable | PlaceError::Busy | PlaceError::Closed { .. } | PlaceError::Paused => {
                    OrderOutcome::NotServiceable
                }
                PlaceError::Insufficient(_) => OrderOutcome::InsufficientStock,
                PlaceError::KeyReused | PlaceError::KeyExpired => OrderOutcome::Conflict,
                PlaceError::Unavailable(_) => OrderOutcome::Unavailable,
            };
            Err((outcome, ApiError::from(e)))
        }
    }
}

/// The order, if `caller` may see it.
async fn visible_order(app: &AppRef, caller: &Caller, id: &str) -> Result<Order, ApiError> {
    let order = app.state.find_order(id).await.map_err(ApiError::unavailable)?;
    let order = order.ok_or_else(|| ApiError::not_found("no such order"))?.lock().await.clone();
    order_access(&caller.0, &order)?;
    Ok(order)
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    store_id: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

/// A page's cursor: the last order's placement time and id.
fn cursor(o: &Order) -> String {
    format!("{}_{}", o.created_at, o.id)
}

/// `GET /v1/orders`: newest first, a page at a time. A customer sees its own orders, staff its
/// store's, admin any (riders: 403).
pub async fn list(
    State(app): State<AppRef>,
    caller: Caller,
    axum::extract::Query(q): axum::extract::Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Customer, Role::Staff, Role::Admin])?;
    let limit = super::bounded("limit", q.limit.as_deref(), 20, (1, 100))? as i64;
    if let Some(s) = q.status.as_deref()
        && OrderStatus::parse(s).is_none()
    {
        return Err(ApiError::invalid(format!("unknown status {s:?}")));
    }
    let before = match q.after.as_deref() {
        None => None,
        Some(c) => {
            let parsed = c.split_once('_').and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id)));
            match parsed {
                Some((at, id)) if darkstore_geoinv::ids::valid_id(id) => Some((at, id)),
                _ => return Err(ApiError::invalid("after must be the next of a previous page")),
            }
        }
    };
    let (customer_id, store_id) = match caller.0.role {
        Role::Customer => (Some(caller.0.sub.as_str()), q.store_id.as_deref()),
        Role::Staff => {
            let own = caller.0.store.as_deref();
            if q.store_id.is_some() && q.store_id.as_deref() != own {
                return Err(ApiError::forbidden("this staff token is for another store"));
            }
            (None, own)
        }
        _ => (None, q.store_id.as_deref()),
    };
    if let Some(s) = store_id {
        check_id("store_id", s)?;
    }
    let filter = darkstore_db::OrderFilter { customer_id, store_id, status: q.status.as_deref(), before };
    let orders = app.state.list_orders(&filter, limit).await.map_err(ApiError::unavailable)?;
    let next = (orders.len() as i64 == limit).then(|| orders.last().map(cursor)).flatten();
    let orders: Vec<Value> = orders.iter().map(|o| order_json_for(&app, &caller, o)).collect();
    Ok(Json(json!({"orders": orders, "next": next})))
}

pub async fn get(State(app): State<AppRef>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let order = visible_order(&app, &caller, &id).await?;
    Ok(Json(order_json_for(&app, &caller, &order)))
}

pub async fn cancel(
    State(app): State<AppRef>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Customer, Role::Staff, Role::Admin])?;
    // The parties that may cancel (customer, store, admin) never change with the order's life.
    visible_order(&app, &caller, &id).await?;
    let state = app.state.clone();
    let order = detached(async move { state.transition(&id, OrderStatus::Cancelled, None, |_| true).await }).await??;
    Ok(Json(order_json(&app, &order)))
}

pub async fn packed(
    State(app): State<AppRef>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Staff, Role::Admin])?;
    visible_order(&app, &caller, &id).await?;
    let state = app.state.clone();
    let order = detached(async move { state.pack(&id).await }).await??;
    Ok(Json(order_json(&app, &order)))
}

#[derive(Deserialize)]
struct PaymentBody {
    order_id: String,
    /// succeeded | failed | refunded
    status: String,
}

/// `POST /v1/payments/webhook`: the payment provider's word on an order. The body is
/// authenticated by `X-Signature: sha256=<hex HMAC-SHA256 of the raw body>`. Events are
/// idempotent and never undo a payment: a duplicate, or an event that would undo one, is a 200
/// that changes nothing (the latter counted and logged); an event that does not fit the order's
/// payment at all is 409.
pub async fn payment_webhook(
    State(app): State<AppRef>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Some(secret) = &app.webhook_secret else {
        return Err(ApiError::not_found("payments are not enabled on this server"));
    };
    let signature = headers
        .get("x-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized("the X-Signature header is required"))?;
    let signature = signature.strip_prefix("sha256=").unwrap_or(signature);
    if !auth::verify_hmac_hex(secret, &body, signature) {
        return Err(ApiError::unauthorized("the webhook signature does not match the body"));
    }
    let event: PaymentBody = parse_json(&body)?;
    let kind = match event.status.as_str() {
        "succeeded" => PaymentEvent::Succeeded,
        "failed" => PaymentEvent::Failed,
        "refunded" => PaymentEvent::Refunded,
        _ => return Err(ApiError::invalid("status must be succeeded, failed or refunded")),
    };
    check_id("order_id", &event.order_id).map_err(|_| ApiError::not_found("no such order"))?;
    let state = app.state.clone();
    let order_id = event.order_id.clone();
    let applied = detached(async move { state.payment_event(&order_id, kind).await }).await??;
    let outcome = match applied.outcome {
        PaymentOutcome::Apply { .. } => "applied",
        PaymentOutcome::Duplicate => "duplicate",
        PaymentOutcome::Ignored => {
            tracing::warn!(order = %event.order_id, event = %event.status,
                payment_status = applied.order.payment_status.as_str(), "payment event ignored: it would undo a payment");
            "ignored"
        }
        PaymentOutcome::Refused => {
            return Err(ApiError::conflict(format!(
                "a {} event does not apply to an order whose payment is {}",
                event.status,
                applied.order.payment_status.as_str()
            ))
            .with("payment_status", json!(applied.order.payment_status.as_str())));
        }
    };
    let mut body = order_json(&app, &applied.order);
    body["webhook"] = json!(outcome);
    Ok(Json(body))
}
