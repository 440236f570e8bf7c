//! Operations: health, readiness, metrics, the OpenAPI document and the landing page.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::AppRef;

static OPENAPI: &str = include_str!("../openapi.json");
static INDEX: &str = include_str!("../../web/index.html");

pub async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Ready when the database answers and the broker (if any) is connected.
pub async fn readyz(State(app): State<AppRef>) -> Response {
    let db = app.state.db.ping().await;
    let broker = (app.broker_ready)();
    let status = if db && broker { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({"ready": db && broker, "database": db, "broker": broker}))).into_response()
}

pub async fn metrics(State(app): State<AppRef>) -> Response {
    let state = &app.state;
    let commits = state.committer().stats();
    let extra = [
        ("darkstore_db_transactions_total", "counter", commits.transactions.load(Ordering::Relaxed) as f64),
        ("darkstore_db_commit_jobs_total", "counter", commits.jobs.load(Ordering::Relaxed) as f64),
        ("darkstore_db_commit_failures_total", "counter", commits.failures.load(Ordering::Relaxed) as f64),
        ("darkstore_db_commit_seconds_total", "counter", commits.commit_micros.load(Ordering::Relaxed) as f64 / 1e6),
        ("darkstore_db_commit_queue", "gauge", commits.queued.load(Ordering::Relaxed) as f64),
        ("darkstore_stores", "gauge", state.stores().len() as f64),
        ("darkstore_products", "gauge", state.n_products() as f64),
        ("darkstore_orders", "gauge", state.n_orders() as f64),
        ("darkstore_rate_limit_clients", "gauge", app.limiter.n_clients() as f64),
    ];
    let body = state.metrics.render(&extra);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}
