//! The demand forecast of a store: expected orders per hour for the next hours, from its order
//! history in the database (`darkstore_geoinv::forecast`), and the riders that demand needs.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use darkstore_geoinv::forecast::{self, ForecastParams, WEEK};

use super::{AppRef, Caller};
use crate::error::ApiError;

/// The wait for a rider the staffing figure allows, and the share of orders that must get one
/// within it.
const RIDER_WAIT_MINUTES: f64 = 2.0;
const RIDER_SERVICE_LEVEL: f64 = 0.9;
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Deserialize)]
pub struct ForecastQuery {
    hours: Option<String>,
}

pub async fn store_forecast(
    State(app): State<AppRef>,
    caller: Caller,
    Path(store_id): Path<String>,
    Query(q): Query<ForecastQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_store(&store_id)?;
    let hours = super::bounded("hours", q.hours.as_deref(), 12, (1, 168))?;
    let store = app.state.store(&store_id).ok_or_else(|| ApiError::not_found("no such store"))?;
    let p = ForecastParams::default();
    let now = app.state.now();
    let now_hour = now.div_euclid(HOUR_MS);
    let since = (now_hour - (p.weeks + 1) * WEEK) * HOUR_MS;
    let rows = app.state.db.orders_per_hour(&store.id, since).await.map_err(ApiError::unavailable)?;
    let counts: std::collections::HashMap<i64, f64> = rows.into_iter().map(|(h, n)| (h, n as f64)).collect();
    let history = |h: i64| counts.get(&h).copied().unwrap_or(0.0);
    let expected = forecast::forecast(&history, now_hour, hours, &p);
    // A rider's minutes per order: a trip cycle as observed, shared by the orders of a bundle.
    let calibrated = app.promises.calibrated(&store.id);
    let cycle_minutes = app.state.config.quote.cycle_ms as f64 * calibrated.ride / 60_000.0;
    let minutes_per_order = cycle_minutes / app.dispatcher.bundle().max(1.0);
    let on_shift = app.riders.all(Some(&store.id)).iter().filter(|r| r.on_shift).count();
    let out: Vec<Value> = expected
        .iter()
        .enumerate()
        .map(|(i, orders)| {
            let start = (now_hour + i as i64) * HOUR_MS;
            let riders = forecast::riders_needed(*orders, minutes_per_order, RIDER_WAIT_MINUTES, RIDER_SERVICE_LEVEL);
            json!({
                "start": crate::views::rfc3339(start),
                "orders": (orders * 10.0).round() / 10.0,
                "riders_needed": riders,
            })
        })
        .collect();
    Ok(Json(json!({
        "store_id": store.id,
        "hours": out,
        "riders_on_shift": on_shift,
        "minutes_per_order": (minutes_per_order * 10.0).round() / 10.0,
    })))
}
