//! Orders: placement, reading, cancelling, packing; the payment provider's webhook.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{AppRef, Caller, check_id, check_point, detached, parse_json};
use crate::auth::{self, Role};
use crate::error::ApiError;
use crate::metrics::OrderOutcome;
use crate::state::{Order, PlaceError, PlaceOrder, TransitionError};
use darkstore_geoinv::order::OrderStatus;

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
    crate::views::order_json(o, app.state.promise_ms())
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
    let (outcome, response) = match place_inner(&app, caller, &headers, &body).await {
        Ok((order, replayed)) => {
            let mut response = (StatusCode::CREATED, Json(order_json(&app, &order))).into_response();
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
            v.to_str().ok().filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN).map(str::to_owned).ok_or_else(|| {
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
        Err(PlaceError::InvalidPoint) => Err(invalid(ApiError::invalid("invalid coordinates"))),
        Err(PlaceError::UnknownSku(sku)) => {
            Err(invalid(ApiError::invalid(format!("sku {sku:?} is not in the catalog")).with("sku", json!(sku))))
        }
        Err(PlaceError::NotServiceable) => Err((
            OrderOutcome::NotServiceable,
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_serviceable",
                "no dark store reaches this location within the promise",
            ),
        )),
        Err(PlaceError::Insufficient(short)) => {
            let lines: Vec<Value> = short
                .iter()
                .map(|s| json!({"sku": s.sku, "requested": s.requested, "available": s.available}))
                .collect();
            Err((
                OrderOutcome::InsufficientStock,
                ApiError::new(
                    StatusCode::CONFLICT,
                    "insufficient_stock",
                    "some lines cannot be filled; nothing was reserved",
                )
                .with("lines", Value::Array(lines)),
            ))
        }
        Err(PlaceError::KeyReused) => Err((
            OrderOutcome::Conflict,
            ApiError::conflict("this Idempotency-Key was already used with a different body"),
        )),
        Err(PlaceError::KeyExpired) => Err((
            OrderOutcome::Conflict,
            ApiError::conflict(
                "this Idempotency-Key was used for an order placed longer ago than keys are kept; use a new key",
            ),
        )),
        Err(PlaceError::Unavailable(e)) => Err((OrderOutcome::Unavailable, ApiError::unavailable(e))),
    }
}

/// Whether `caller` may see or act on `order` as a party to it.
fn is_party(caller: &Caller, order: &Order) -> bool {
    let c = &caller.0;
    match c.role {
        Role::Admin => true,
        Role::Customer => c.sub == order.customer_id,
        Role::Staff => c.store.as_deref() == Some(order.store_id.as_str()),
        Role::Rider => order.rider_id.as_deref() == Some(c.sub.as_str()),
    }
}

pub async fn get(State(app): State<AppRef>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let order = app.state.find_order(&id).await.map_err(ApiError::unavailable)?;
    let order = order.ok_or_else(|| ApiError::not_found("no such order"))?;
    let order = order.lock().await.clone();
    if !is_party(&caller, &order) {
        // Do not tell strangers which order ids exist.
        return Err(if caller.0.role == Role::Customer {
            ApiError::not_found("no such order")
        } else {
            ApiError::forbidden("this order belongs to another store or rider")
        });
    }
    Ok(Json(order_json(&app, &order)))
}

fn transition_error(e: TransitionError, caller_role: Role) -> ApiError {
    match e {
        TransitionError::NotFound => ApiError::not_found("no such order"),
        TransitionError::Forbidden if caller_role == Role::Customer => ApiError::not_found("no such order"),
        TransitionError::Forbidden => ApiError::forbidden("this order belongs to another store or customer"),
        TransitionError::NotAllowed { from, to } => {
            ApiError::conflict(format!("an order that is {} cannot become {}", from.as_str(), to.as_str()))
                .with("status", json!(from.as_str()))
        }
        TransitionError::Unavailable(e) => ApiError::unavailable(e),
    }
}

pub async fn cancel(
    State(app): State<AppRef>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Customer, Role::Staff, Role::Admin])?;
    let role = caller.0.role;
    let state = app.state.clone();
    let order =
        detached(async move { state.transition(&id, OrderStatus::Cancelled, None, |o| is_party(&caller, o)).await })
            .await?
            .map_err(|e| transition_error(e, role))?;
    Ok(Json(order_json(&app, &order)))
}

pub async fn packed(
    State(app): State<AppRef>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Staff, Role::Admin])?;
    let role = caller.0.role;
    let state = app.state.clone();
    let order = detached(async move { state.pack(&id, |o| is_party(&caller, o)).await })
        .await?
        .map_err(|e| transition_error(e, role))?;
    Ok(Json(order_json(&app, &order)))
}

#[derive(Deserialize)]
struct PaymentEvent {
    order_id: String,
    /// succeeded | failed
    status: String,
}

/// `POST /v1/payments/webhook`: the payment provider confirms or fails a held order. The body is
/// authenticated by `X-Signature: sha256=<hex HMAC-SHA256 of the raw body>`.
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
    let event: PaymentEvent = parse_json(&body)?;
    let to = match event.status.as_str() {
        "succeeded" => OrderStatus::Confirmed,
        "failed" => OrderStatus::Cancelled,
        _ => return Err(ApiError::invalid("status must be succeeded or failed")),
    };
    let state = app.state.clone();
    let order_id = event.order_id.clone();
    let result = detached(async move { state.transition(&order_id, to, None, |_| true).await }).await?;
    match result {
        Ok(order) => Ok(Json(order_json(&app, &order))),
        // A retried delivery of an event already applied is answered as a success.
        Err(TransitionError::NotAllowed { from, .. }) if from == to => {
            let order = app.state.order(&event.order_id).ok_or_else(|| ApiError::not_found("no such order"))?;
            let order = order.lock().await.clone();
            Ok(Json(order_json(&app, &order)))
        }
        Err(e) => Err(transition_error(e, Role::Admin)),
    }
}
