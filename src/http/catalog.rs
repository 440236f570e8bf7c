//! Admin: stores, products and riders.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppRef, Caller, JsonBody, check_id, check_point, detached};
use crate::auth::Role;
use crate::error::ApiError;
use crate::model::Product;
use crate::state::catalog::StoreSettings;
use darkstore_geoinv::hours::Days;

/// Longest name or category accepted.
const MAX_TEXT: usize = 200;
/// Largest price accepted, in minor units.
const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;

/// Characters that reorder text on screen (bidirectional overrides and isolates, marks): a name
/// with them can show something other than what it is.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn check_text(what: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if s.trim().is_empty() || s.chars().count() > max {
        return Err(ApiError::invalid(format!("{what} must be 1-{max} characters")));
    }
    if s.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Err(ApiError::invalid(format!("{what} must not contain control or bidirectional-override characters")));
    }
    Ok(())
}

fn created_or_ok(created: bool) -> StatusCode {
    if created { StatusCode::CREATED } else { StatusCode::OK }
}

#[derive(Deserialize)]
pub struct StoreBody {
    name: String,
    lat: f64,
    lng: f64,
    /// An IANA time zone name.
    #[serde(default)]
    timezone: Option<String>,
    /// `mon` … `sun` → `[["HH:MM", "HH:MM"], …]`; absent or null: always open.
    #[serde(default)]
    hours: Option<std::collections::BTreeMap<String, Vec<(String, String)>>>,
    /// `{"reason"}` or null.
    #[serde(default)]
    paused: Option<PausedBody>,
}

#[derive(Deserialize)]
pub struct PausedBody {
    reason: String,
}

#[derive(Deserialize)]
pub struct PatchStoreBody {
    /// `{"reason"}` pauses the store, null lifts the pause.
    paused: Option<PausedBody>,
}

fn reason(p: Option<PausedBody>) -> Result<Option<String>, ApiError> {
    match p {
        None => Ok(None),
        Some(p) => {
            check_text("paused.reason", &p.reason, MAX_TEXT)?;
            Ok(Some(p.reason))
        }
    }
}

/// The settings of a store as the API takes them, checked.
fn settings(body: &mut StoreBody) -> Result<StoreSettings, ApiError> {
    let days: Option<Days> = body.hours.take().map(|h| h.into_iter().collect());
    let settings = StoreSettings { timezone: body.timezone.take(), hours: days, paused: reason(body.paused.take())? };
    if let Some(tz) = &settings.timezone {
        check_text("timezone", tz, 64)?;
        if settings.hours.is_none() && !darkstore_geoinv::hours::valid_timezone(tz) {
            return Err(ApiError::invalid(format!("unknown time zone {tz:?}")));
        }
    }
    settings.schedule().map_err(|e| ApiError::invalid(format!("hours: {e}")))?;
    Ok(settings)
}

pub async fn put_store(
    State(app): State<AppRef>,
    caller: Caller,
    Path(store_id): Path<String>,
    JsonBody(mut body): JsonBody<StoreBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&[Role::Admin])?;
    check_id("store_id", &store_id)?;
    check_text("name", &body.name, MAX_TEXT)?;
    check_point(body.lat, body.lng)?;
    let settings = settings(&mut body)?;
    if let Some(cluster) = &app.cluster {
        // A region's stock and orders live on its owner: a store cannot carry them to another.
        let (from, to) = (cluster.region_of_store(&store_id), crate::cluster::region_of(body.lat, body.lng));
        if let (Some(from), Some(to)) = (from, to)
            && from != to
        {
            return Err(ApiError::conflict(format!(
                "in cluster mode a store stays in its region (H3 cell {from}); {to} is another: create a new store there"
            ))
            .with("region", json!(from)));
        }
    }
    let state = app.state.clone();
    let id = store_id.clone();
    let created =
        detached(async move { state.put_store(&id, &body.name, body.lat, body.lng, settings).await }).await??;
    let store = app.state.store(&store_id).ok_or_else(|| ApiError::unavailable("store vanished"))?;
    Ok((created_or_ok(created), Json(store_json(&app, &store))))
}

/// Pauses a store or lifts its pause (staff of the store, admin).
pub async fn patch_store(
    State(app): State<AppRef>,
    caller: Caller,
    Path(store_id): Path<String>,
    JsonBody(body): JsonBody<PatchStoreBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require_store(&store_id)?;
    app.state.store(&store_id).ok_or_else(|| ApiError::not_found("no such store"))?;
    let paused = reason(body.paused)?;
    let (state, id) = (app.state.clone(), store_id.clone());
    let store = detached(async move { state.set_paused(&id, paused).await }).await??;
    tracing::info!(store = %store_id, paused = ?store.settings.paused, "store pause changed");
    Ok(Json(store_json(&app, &store)))
}

fn store_json(app: &AppRef, store: &crate::state::Store) -> Value {
    let hours = store.settings.hours.as_ref().map(|days| {
        let map: serde_json::Map<String, Value> = days.iter().map(|(d, iv)| (d.clone(), json!(iv))).collect();
        Value::Object(map)
    });
    let mut v = json!({
        "id": store.id,
        "name": store.name,
        "lat": store.lat,
        "lng": store.lng,
        "service_cells": app.state.store_cells(store.idx),
        "timezone": store.settings.timezone,
        "hours": hours,
        "paused": store.settings.paused.as_ref().map(|r| json!({"reason": r})),
    });
    crate::views::open_fields(&mut v, &app.state.open_state(store));
    v
}

pub async fn get_store(State(app): State<AppRef>, Path(store_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let store = app.state.store(&store_id).ok_or_else(|| ApiError::not_found("no such store"))?;
    Ok(Json(store_json(&app, &store)))
}

#[derive(Deserialize)]
pub struct ProductBody {
    name: String,
    category: String,
    price_minor: i64,
    /// Available units at or below which the line is "low stock" (default 5).
    #[serde(default = "default_threshold")]
    low_stock_threshold: i64,
}

fn default_threshold() -> i64 {
    5
}

use crate::views::product_json;

pub async fn put_product(
    State(app): State<AppRef>,
    caller: Caller,
    Path(sku): Path<String>,
    JsonBody(body): JsonBody<ProductBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&[Role::Admin])?;
    check_id("sku", &sku)?;
    check_text("name", &body.name, MAX_TEXT)?;
    check_text("category", &body.category, 64)?;
    if !(0..=MAX_PRICE_MINOR).contains(&body.price_minor) {
        return Err(ApiError::invalid(format!("price_minor must be an integer in [0, {MAX_PRICE_MINOR}]")));
    }
    if !(0..=1_000_000).contains(&body.low_stock_threshold) {
        return Err(ApiError::invalid("low_stock_threshold must be an integer in [0, 1000000]"));
    }
    let product = Product::new(&sku, body.name, body.category, body.price_minor, body.low_stock_threshold);
    let json = product_json(&product);
    let state = app.state.clone();
    let created = detached(async move { state.put_product(product).await }).await?.map_err(ApiError::unavailable)?;
    Ok((created_or_ok(created), Json(json)))
}

pub async fn get_product(State(app): State<AppRef>, Path(sku): Path<String>) -> Result<Json<Value>, ApiError> {
    let product = app.state.product(&sku).ok_or_else(|| ApiError::not_found("no such sku"))?;
    Ok(Json(product_json(&product)))
}

#[derive(Deserialize)]
pub struct RiderBody {
    name: String,
    #[serde(default)]
    store_id: Option<String>,
}

pub async fn put_rider(
    State(app): State<AppRef>,
    caller: Caller,
    Path(rider_id): Path<String>,
    JsonBody(body): JsonBody<RiderBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&[Role::Admin])?;
    check_id("rider_id", &rider_id)?;
    check_text("name", &body.name, MAX_TEXT)?;
    if let Some(store_id) = &body.store_id
        && app.state.store(store_id).is_none()
    {
        return Err(ApiError::invalid(format!("store_id {store_id:?} is not a known store")));
    }
    let json = json!({"id": rider_id, "name": body.name, "store_id": body.store_id});
    let (riders, now) = (app.riders.clone(), app.clock.now_ms());
    // Durable and known to ingest in one detached operation: a client that hangs up cannot leave
    // a stored rider whose positions are dropped.
    let created = detached(async move { riders.register(&rider_id, &body.name, body.store_id.as_deref(), now).await })
        .await?
        .map_err(ApiError::unavailable)?;
    if let Some(cluster) = &app.cluster {
        cluster.announce_catalog();
    }
    Ok((created_or_ok(created), Json(json)))
}

/// `GET /v1/stores`: every store (staff and admin).
pub async fn list_stores(State(app): State<AppRef>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin, Role::Staff])?;
    let stores: Vec<Value> =
        app.state.stores().iter().map(|s| json!({"id": s.id, "name": s.name, "lat": s.lat, "lng": s.lng})).collect();
    Ok(Json(json!({ "stores": stores })))
}

/// `GET /v1/stores/{id}/area`: the H3 cells the store covers, with their boundaries, for maps.
pub async fn store_area(State(app): State<AppRef>, Path(store_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let store = app.state.store(&store_id).ok_or_else(|| ApiError::not_found("no such store"))?;
    let cells: Vec<Value> = app
        .state
        .store_cell_ids(store.idx)
        .into_iter()
        .map(|c| {
            let boundary: Vec<[f64; 2]> = c.boundary().iter().map(|p| [p.lat(), p.lng()]).collect();
            json!({"cell": c.to_string(), "boundary": boundary})
        })
        .collect();
    Ok(Json(json!({"store_id": store.id, "lat": store.lat, "lng": store.lng, "cells": cells})))
}
