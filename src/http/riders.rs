//! Riders over HTTP: the fallback to MQTT for position, shift and events, and a rider's live state.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{AppRef, Caller, JsonBody, detached};
use crate::auth::Role;
use crate::error::ApiError;
use crate::fleet::{Drop, Event, Location, Shift};
use crate::state::now_ms;

/// The rider itself, or an admin.
fn require_self(caller: &Caller, rider_id: &str) -> Result<(), ApiError> {
    match caller.0.role {
        Role::Admin => Ok(()),
        Role::Rider if caller.0.sub == rider_id => Ok(()),
        _ => Err(ApiError::forbidden("only the rider itself or an admin may do this")),
    }
}

fn drop_error(d: Drop) -> ApiError {
    match d {
        Drop::UnknownRider => ApiError::not_found("no such rider"),
        Drop::Stale => ApiError::conflict("the position is older than the last one"),
        Drop::Malformed => ApiError::invalid("malformed rider message"),
        Drop::Implausible => {
            ApiError::invalid("implausible position: out of range, from the future, or an impossible speed or jump")
        }
    }
}

pub async fn location(
    State(app): State<AppRef>,
    caller: Caller,
    Path(rider_id): Path<String>,
    JsonBody(loc): JsonBody<Location>,
) -> Result<StatusCode, ApiError> {
    require_self(&caller, &rider_id)?;
    app.fleet.location(&rider_id, &loc, now_ms()).map_err(|d| {
        app.fleet.count(d);
        drop_error(d)
    })?;
    app.dispatcher.rider_update(&rider_id);
    Ok(StatusCode::NO_CONTENT)
}

pub async fn shift(
    State(app): State<AppRef>,
    caller: Caller,
    Path(rider_id): Path<String>,
    JsonBody(shift): JsonBody<Shift>,
) -> Result<StatusCode, ApiError> {
    require_self(&caller, &rider_id)?;
    let d = app.dispatcher.clone();
    detached(async move { d.shift(&rider_id, &shift).await }).await?.map_err(drop_error)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn event(
    State(app): State<AppRef>,
    caller: Caller,
    Path(rider_id): Path<String>,
    JsonBody(event): JsonBody<Event>,
) -> Result<StatusCode, ApiError> {
    require_self(&caller, &rider_id)?;
    if !matches!(event.kind.as_str(), "arrived_store" | "picked_up" | "delivered" | "rejected") {
        return Err(ApiError::invalid("type must be arrived_store, picked_up, delivered or rejected"));
    }
    let d = app.dispatcher.clone();
    detached(async move { d.event(&rider_id, &event).await }).await?.map_err(drop_error)?;
    Ok(StatusCode::ACCEPTED)
}

pub async fn get(
    State(app): State<AppRef>,
    caller: Caller,
    Path(rider_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rider = app.state.rider(&rider_id).ok_or_else(|| ApiError::not_found("no such rider"))?;
    let staff_of_store = caller.0.role == Role::Staff && caller.0.store.is_some() && caller.0.store == rider.store_id;
    if !staff_of_store {
        require_self(&caller, &rider_id)?;
    }
    let live = app.fleet.get(&rider_id);
    Ok(Json(json!({
        "id": rider.id,
        "name": rider.name,
        "store_id": rider.store_id,
        "on_shift": live.as_ref().is_some_and(|l| l.on_shift),
        "status": live.as_ref().map(|l| l.status.as_str()),
        "lat": live.as_ref().and_then(|l| l.pos).map(|p| p.0),
        "lng": live.as_ref().and_then(|l| l.pos).map(|p| p.1),
        "ts": live.as_ref().filter(|l| l.pos.is_some()).map(|l| l.ts),
        "task": live.as_ref().and_then(|l| l.task.as_ref()).map(|t| json!({
            "task_id": t.id, "store_id": t.store_id, "orders": t.orders, "picked_up": t.picked,
        })),
    })))
}
