//! Riders over HTTP: the fallback to MQTT for position, shift and events, and a rider's live state.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::Value;

use super::{AppRef, Caller, JsonBody, detached};
use crate::auth::Role;
use crate::error::ApiError;
use crate::ingest::{Event, EventKind, Location, Shift};
use crate::topics::RiderInbox;

/// The rider itself, or an admin.
fn require_self(caller: &Caller, rider_id: &str) -> Result<(), ApiError> {
    match caller.0.role {
        Role::Admin => Ok(()),
        Role::Rider if caller.0.sub == rider_id => Ok(()),
        _ => Err(ApiError::forbidden("only the rider itself or an admin may do this")),
    }
}

/// Cluster mode: the other nodes hear what a rider said over HTTP as if it came over MQTT.
fn relay(app: &AppRef, rider: &str, inbox: RiderInbox, body: &impl serde::Serialize) {
    if let (Some(cluster), Ok(payload)) = (&app.cluster, serde_json::to_vec(body)) {
        cluster.relay_rider_message(crate::topics::rider_inbox(rider, inbox), &payload);
    }
}

pub async fn location(
    State(app): State<AppRef>,
    caller: Caller,
    Path(rider_id): Path<String>,
    JsonBody(loc): JsonBody<Location>,
) -> Result<StatusCode, ApiError> {
    require_self(&caller, &rider_id)?;
    app.ingest.location(&rider_id, &loc).inspect_err(|d| app.riders.count(*d))?;
    relay(&app, &rider_id, RiderInbox::Location, &loc);
    Ok(StatusCode::NO_CONTENT)
}

pub async fn shift(
    State(app): State<AppRef>,
    caller: Caller,
    Path(rider_id): Path<String>,
    JsonBody(shift): JsonBody<Shift>,
) -> Result<StatusCode, ApiError> {
    require_self(&caller, &rider_id)?;
    relay(&app, &rider_id, RiderInbox::Shift, &shift);
    let ingest = app.ingest.clone();
    detached(async move { ingest.shift(&rider_id, shift.on_shift).await }).await??;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn event(
    State(app): State<AppRef>,
    caller: Caller,
    Path(rider_id): Path<String>,
    JsonBody(event): JsonBody<Event>,
) -> Result<StatusCode, ApiError> {
    require_self(&caller, &rider_id)?;
    let kind = EventKind::parse(&event.kind)
        .ok_or_else(|| ApiError::invalid("type must be arrived_store, picked_up, delivered or rejected"))?;
    relay(&app, &rider_id, RiderInbox::Events, &event);
    let ingest = app.ingest.clone();
    detached(async move {
        let refused = ingest.event(&rider_id, kind, &event.order_id, event.code.as_deref()).await;
        if let Err(d) = refused {
            ingest.riders.count(d);
        }
        refused
    })
    .await??;
    Ok(StatusCode::ACCEPTED)
}

pub async fn get(
    State(app): State<AppRef>,
    caller: Caller,
    Path(rider_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rider = app.riders.get(&rider_id).ok_or_else(|| ApiError::not_found("no such rider"))?;
    let staff_of_store = caller.0.role == Role::Staff && caller.0.store.is_some() && caller.0.store == rider.store_id;
    if !staff_of_store {
        require_self(&caller, &rider_id)?;
    }
    Ok(Json(crate::views::rider_detail_json(&rider)))
}
