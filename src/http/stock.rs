//! Stock of a store (staff of the store, or admin) and availability (anyone).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppRef, Caller, JsonBody, bounded, check_point, detached};
use crate::error::ApiError;
use crate::model::OpenState;
use crate::state::{AvailableItem, StockError};

/// Largest stock delta accepted in one adjustment.
const MAX_DELTA: i64 = 1_000_000;

#[derive(Deserialize)]
pub struct StockBody {
    sku: String,
    delta: i64,
    reason: String,
    /// RFC 3339 expiry of the arriving lot (positive deltas only).
    #[serde(default)]
    expires_at: Option<String>,
}

fn parse_time(s: &str) -> Result<i64, ApiError> {
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|_| ApiError::invalid("expires_at must be an RFC 3339 time, e.g. 2026-11-30T00:00:00Z"))?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| ApiError::invalid("expires_at is before 1970"))?;
    Ok(ms.as_millis() as i64)
}

pub async fn post_stock(
    State(app): State<AppRef>,
    caller: Caller,
    Path(store_id): Path<String>,
    JsonBody(body): JsonBody<StockBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require_store(&store_id)?;
    if app.state.store(&store_id).is_none() {
        return Err(ApiError::not_found("no such store"));
    }
    let reason: &'static str = match body.reason.as_str() {
        "restock" => "restock",
        "damage" => "damage",
        "expiry" => "expiry",
        "count" => "count",
        _ => {
            return Err(ApiError::invalid("reason must be one of restock, damage, expiry, count"));
        }
    };
    // `unsigned_abs`: i64::MIN has no positive counterpart, and must not pass as small.
    if body.delta == 0 || body.delta.unsigned_abs() > MAX_DELTA as u64 {
        return Err(ApiError::invalid(format!("delta must be a non-zero integer in [-{MAX_DELTA}, {MAX_DELTA}]")));
    }
    if reason == "restock" && body.delta < 0 {
        return Err(ApiError::invalid("a restock adds units: delta must be positive"));
    }
    if matches!(reason, "damage" | "expiry") && body.delta > 0 {
        return Err(ApiError::invalid("damage and expiry remove units: delta must be negative"));
    }
    let expires_at = match &body.expires_at {
        Some(_) if body.delta < 0 => {
            return Err(ApiError::invalid("expires_at applies to arriving units only"));
        }
        Some(s) => Some(parse_time(s)?),
        None => None,
    };
    let state = app.state.clone();
    let sku = body.sku.clone();
    let result =
        detached(async move { state.adjust_stock(&store_id, &sku, body.delta, reason, expires_at).await }).await?;
    match result {
        Ok(line) => Ok(Json(crate::views::line_json(&line, app.state.product(&line.sku).as_deref()))),
        Err(StockError::UnknownSku) => Err(ApiError::invalid(format!("sku {:?} is not in the catalog", body.sku))),
        Err(e) => Err(e.into()),
    }
}

pub async fn get_stock(
    State(app): State<AppRef>,
    caller: Caller,
    Path(store_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_store(&store_id)?;
    let store = app.state.store(&store_id).ok_or_else(|| ApiError::not_found("no such store"))?;
    let lines: Vec<Value> = app
        .state
        .stock_lines(&store)
        .iter()
        .map(|l| crate::views::line_json(l, app.state.product(&l.sku).as_deref()))
        .collect();
    Ok(Json(json!({ "store_id": store.id, "lines": lines })))
}

#[derive(Deserialize)]
pub struct AvailabilityQuery {
    lat: Option<String>,
    lng: Option<String>,
    category: Option<String>,
    limit: Option<String>,
    after: Option<String>,
    q: Option<String>,
}

fn coordinate(name: &str, v: &Option<String>) -> Result<f64, ApiError> {
    let v = v.as_deref().ok_or_else(|| ApiError::invalid(format!("{name} is required")))?;
    v.trim().parse::<f64>().map_err(|_| ApiError::invalid(format!("{name} must be a number")))
}

pub async fn availability(
    State(app): State<AppRef>,
    Query(q): Query<AvailabilityQuery>,
) -> Result<axum::response::Response, ApiError> {
    let lat = coordinate("lat", &q.lat)?;
    let lng = coordinate("lng", &q.lng)?;
    check_point(lat, lng)?;
    let limit = bounded("limit", q.limit.as_deref(), 200, (1, 1000))?;
    let serving = app
        .state
        .serving(lat, lng)
        .map_err(|_| ApiError::invalid("lat must be in [-90, 90] and lng in [-180, 180]"))?;
    let search = match q.q.as_deref().map(str::trim) {
        None => None,
        Some(s) if (1..=100).contains(&s.chars().count()) => Some(s.to_owned()),
        Some(_) => return Err(ApiError::invalid("q must be 1 to 100 characters")),
    };
    let (store_id, quote, fee, open, page) = match serving {
        Some((store, quote)) => {
            let eta = quote.eta_minutes();
            let page = match &search {
                // A name search: ranked by relevance, one page (next is null).
                Some(text) => {
                    let found = app.state.search(&store, text, limit);
                    let in_category =
                        |i: &&AvailableItem| q.category.as_deref().is_none_or(|c| c == i.product.category);
                    crate::http::pages::serialize_items(found.iter().filter(in_category))
                }
                None => app.pages.page(&app.state, &store, eta, q.category.as_deref(), q.after.as_deref(), limit),
            };
            let open = app.state.open_state(&store);
            (Some(store.id.clone()), Some(quote), Some(app.state.delivery_fee(&store)), Some(open), page)
        }
        None => (None, None, None, None, crate::http::pages::PageJson::default()),
    };
    let eta_minutes = quote.map(|q| q.eta_minutes());
    let within_promise = quote.is_some_and(|q| app.state.within_promise(&q));
    let is_open = open.as_ref().is_some_and(|o| *o == OpenState::Open);
    let accepting = is_open && quote.is_some_and(|q| app.state.accepting(&q));
    // Why a serving store takes no orders: closed, paused, or too busy.
    let reason = match (&open, store_id.is_some() && !accepting) {
        (Some(OpenState::Closed { opens_at }), true) => {
            format!("\"reason\":\"closed\",\"opens_at\":{},", json!(opens_at.map(crate::views::rfc3339)))
        }
        (Some(OpenState::Paused { .. }), true) => "\"reason\":\"paused\",".to_owned(),
        (_, true) => "\"reason\":\"busy\",".to_owned(),
        (_, false) => String::new(),
    };
    // Built as text around the page's items, which are serialized once per change of the store's
    // stock (see `pages`): this is the hottest read of the server.
    let cell = darkstore_geoinv::area::cell_of(lat, lng).map(|c| c.to_string()).ok();
    let mut body = String::with_capacity(192 + page.len());
    body.push_str(&format!(
        "{{\"serviceable\":{},\"store_id\":{},\"eta_minutes\":{},\"delivery_fee_minor\":{},\"within_promise\":{},\"accepting\":{},\"open\":{},{}\"h3_cell\":{},\"next\":{},\"items\":[",
        store_id.is_some(),
        json!(store_id),
        json!(eta_minutes),
        json!(fee),
        within_promise,
        accepting,
        if store_id.is_some() { json!(is_open) } else { Value::Null },
        reason,
        json!(cell),
        json!(page.next),
    ));
    page.write_to(&mut body);
    body.push_str("]}");
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Debug, Deserialize)]
pub struct TopPicksQuery {
    lat: Option<String>,
    lng: Option<String>,
    limit: Option<String>,
}

/// The serving store's available items, ranked by units ordered in its area recently.
pub async fn top_picks(State(app): State<AppRef>, Query(q): Query<TopPicksQuery>) -> Result<Json<Value>, ApiError> {
    let lat = coordinate("lat", &q.lat)?;
    let lng = coordinate("lng", &q.lng)?;
    check_point(lat, lng)?;
    let limit = bounded("limit", q.limit.as_deref(), 20, (1, 100))?;
    let serving = app
        .state
        .serving(lat, lng)
        .map_err(|_| ApiError::invalid("lat must be in [-90, 90] and lng in [-180, 180]"))?;
    let Some((store, _)) = serving else {
        return Ok(Json(json!({"serviceable": false, "store_id": null, "items": []})));
    };
    let ranked = app.picks.ranked(&store.id, app.state.now());
    let items = app.state.available_of(&store, ranked.iter().map(|(sku, _)| sku.as_str()), limit);
    let items: Vec<Value> = items.iter().map(|i| crate::views::item_json(&i.product, i.available)).collect();
    Ok(Json(json!({"serviceable": true, "store_id": store.id, "items": items})))
}
