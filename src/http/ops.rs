//! Operations: health, readiness, metrics, the OpenAPI document and the landing page.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::AppRef;

static OPENAPI: &str = include_str!("../../docs/openapi.json");
static INDEX: &str = include_str!("../../web/index.html");
static APP_JS: &str = include_str!("../../web/app.js");
static STYLE_CSS: &str = include_str!("../../web/style.css");

pub async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Ready when the database answers and the broker (if any) is connected.
/// In cluster mode also when this node is a live member (NATS reachable, membership renewed).
pub async fn readyz(State(app): State<AppRef>) -> Response {
    let db = app.state.db.ping().await;
    let broker = app.broker_ready();
    let cluster = app.cluster.as_ref().map(|c| c.ready());
    let ready = db && broker && cluster.unwrap_or(true);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = json!({"ready": ready, "database": db, "broker": broker});
    if let Some(c) = cluster {
        body["cluster"] = json!(c);
    }
    (status, axum::Json(body)).into_response()
}

/// `GET /v1/cluster` (admin): the live nodes, every region with its owner, epoch and stores, and
/// the riders claimed for a task with the node and region of the task.
pub async fn cluster(
    State(app): State<AppRef>,
    caller: super::Caller,
) -> Result<axum::Json<serde_json::Value>, crate::error::ApiError> {
    caller.require(&[crate::auth::Role::Admin])?;
    let Some(cluster) = &app.cluster else {
        return Err(crate::error::ApiError::not_found("this server runs as one node (no --cluster-url)"));
    };
    let view = cluster.view();
    let nodes: Vec<_> = view.nodes.iter().map(|(id, url)| json!({"id": id, "advertise": url, "alive": true})).collect();
    let mut regions: Vec<_> = cluster
        .stores_by_region()
        .into_iter()
        .map(|(region, stores)| {
            let (owner, epoch) = view.owners.get(&region).cloned().map_or((None, None), |(o, e)| (Some(o), Some(e)));
            json!({"id": region, "owner": owner, "epoch": epoch, "stores": stores})
        })
        .collect();
    regions.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    // Which node gives each busy rider its task (the claims), and the region of that task.
    let riders: Vec<_> =
        cluster.claims.all().into_iter().map(|(id, c)| json!({"id": id, "node": c.node, "region": c.region})).collect();
    Ok(axum::Json(json!({"node": cluster.node_id, "nodes": nodes, "regions": regions, "riders": riders})))
}

/// `GET /metrics`: admin only (or, with `--metrics-listen`, without a token on that address).
pub async fn metrics(State(app): State<AppRef>, caller: super::Caller) -> Result<Response, crate::error::ApiError> {
    caller.require(&[crate::auth::Role::Admin])?;
    Ok(metrics_response(&app))
}

/// The Prometheus text of every metric.
pub fn metrics_response(app: &AppRef) -> Response {
    let state = &app.state;
    let commits = state.committer().stats();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    let mut extra: Vec<(String, &'static str, f64)> = vec![
        ("darkstore_db_transactions_total".into(), "counter", load(&commits.transactions)),
        ("darkstore_db_commit_jobs_total".into(), "counter", load(&commits.jobs)),
        ("darkstore_db_commit_failures_total".into(), "counter", load(&commits.failures)),
        ("darkstore_db_commit_seconds_total".into(), "counter", load(&commits.commit_micros) / 1e6),
        ("darkstore_db_commit_queue".into(), "gauge", load(&commits.queued)),
        ("darkstore_stores".into(), "gauge", state.stores().len() as f64),
        ("darkstore_products".into(), "gauge", state.n_products() as f64),
        ("darkstore_orders".into(), "gauge", state.n_orders() as f64),
        ("darkstore_orders_waiting_for_rider".into(), "gauge", state.dispatchable().len() as f64),
        ("darkstore_rate_limit_clients".into(), "gauge", app.limiter.n_clients() as f64),
    ];
    let fleet = &app.riders.counters;
    extra.push(("darkstore_rider_positions_total".into(), "counter", load(&fleet.positions)));
    for d in crate::riders::Dropped::ALL {
        extra.push((
            format!("darkstore_rider_messages_dropped_total{{reason=\"{}\"}}", d.as_str()),
            "counter",
            load(&fleet.drops[d as usize]),
        ));
    }
    let shed = load(&fleet.shed) + app.mqtt.as_ref().map_or(0.0, |m| load(&m.shed));
    extra.push(("darkstore_rider_messages_dropped_total{reason=\"shed\"}".into(), "counter", shed));
    extra.push(("darkstore_rider_events_total".into(), "counter", load(&fleet.events)));
    extra.push(("darkstore_rider_events_ignored_total".into(), "counter", load(&fleet.events_ignored)));
    extra.push(("darkstore_rider_orders_left_task_total".into(), "counter", load(&fleet.left_tasks)));
    extra.push(("darkstore_riders_available".into(), "gauge", app.riders.n_indexed() as f64));
    extra.push(("darkstore_riders_silent".into(), "gauge", app.riders.n_silent(state.now()) as f64));
    if let Some(m) = &app.mqtt {
        let up = if m.connected.load(Ordering::Relaxed) { 1.0 } else { 0.0 };
        extra.push(("darkstore_mqtt_connected".into(), "gauge", up));
        extra.push(("darkstore_mqtt_connection_errors_total".into(), "counter", load(&m.reconnects)));
        extra.push(("darkstore_mqtt_published_total".into(), "counter", load(&m.published)));
    }
    if let Some(access) = &app.broker_access {
        let c = &access.counters;
        for (what, n) in
            [("connect", &c.connects_refused), ("subscribe", &c.subscribes_refused), ("publish", &c.publishes_refused)]
        {
            extra.push((format!("darkstore_mqtt_refused_total{{what=\"{what}\"}}"), "counter", load(n)));
        }
        extra.push(("darkstore_mqtt_sessions_expired_total".into(), "counter", load(&c.sessions_expired)));
    }
    let w = &app.ws;
    extra.push(("darkstore_ws_connections".into(), "gauge", w.connections.load(Ordering::Relaxed) as f64));
    extra.push(("darkstore_ws_subscriptions".into(), "gauge", app.feeds.n_subscriptions() as f64));
    extra.push(("darkstore_ws_frames_sent_total".into(), "counter", load(&w.frames_sent)));
    extra.push(("darkstore_ws_closed_total{reason=\"slow\"}".into(), "counter", load(&w.closed_slow)));
    extra.push(("darkstore_ws_closed_total{reason=\"silent\"}".into(), "counter", load(&w.closed_silent)));
    extra.push(("darkstore_ws_refused_total".into(), "counter", load(&w.refused)));
    let pc = &app.pages.counters;
    for (how, n) in [("kept", &pc.kept), ("patched", &pc.patched), ("read", &pc.read)] {
        extra.push((format!("darkstore_availability_pages_total{{how=\"{how}\"}}"), "counter", load(n)));
    }
    let f = &app.feeds.counters;
    extra.push(("darkstore_feed_published_total".into(), "counter", load(&f.published)));
    extra.push(("darkstore_feed_coalesced_total".into(), "counter", load(&f.coalesced)));
    extra.push(("darkstore_feed_batches_total".into(), "counter", load(&f.batches)));
    extra.push(("darkstore_feed_mqtt_published_total".into(), "counter", load(&app.publisher.mqtt_published)));
    let d = &app.dispatcher.counters;
    extra.push(("darkstore_dispatch_ticks_total".into(), "counter", load(&d.ticks)));
    extra.push(("darkstore_dispatch_tick_seconds_total".into(), "counter", load(&d.tick_micros) / 1e6));
    extra.push(("darkstore_dispatch_last_tick_seconds".into(), "gauge", load(&d.last_tick_micros) / 1e6));
    extra.push(("darkstore_dispatch_tasks_total".into(), "counter", load(&d.tasks)));
    extra.push(("darkstore_dispatch_orders_assigned_total".into(), "counter", load(&d.orders_assigned)));
    extra.push(("darkstore_dispatch_orders_bundled_total".into(), "counter", load(&d.orders_bundled)));
    extra.push(("darkstore_dispatch_orders_handed_back_total".into(), "counter", load(&app.ingest.handed_back)));
    extra.push(("darkstore_rider_events_replayed_total".into(), "counter", load(&app.ingest.replayed)));
    extra.push(("darkstore_dispatch_surge_changes_total".into(), "counter", load(&d.surge_changes)));
    // What the promises have learned, and how they are kept.
    let p = &app.promises.counters;
    let learned = app.promises.summary();
    let what = ["pick", "ride", "door", "speed", "first"];
    let ratios = [learned.pick, learned.ride, learned.door, learned.speed, learned.first];
    for (w, r) in what.iter().zip(ratios) {
        extra.push((format!("darkstore_calibration_ratio{{what=\"{w}\"}}"), "gauge", r));
    }
    for (w, n) in what.iter().zip(learned.observed) {
        extra.push((format!("darkstore_calibration_observations_total{{what=\"{w}\"}}"), "counter", f64::from(n)));
    }
    extra.push(("darkstore_promise_margin_ratio".into(), "gauge", learned.margin));
    extra.push((
        "darkstore_promises_delivered_total{outcome=\"on_time\"}".into(),
        "counter",
        load(&p.delivered_on_time),
    ));
    extra.push(("darkstore_promises_delivered_total{outcome=\"late\"}".into(), "counter", load(&p.delivered_late)));
    extra.push(("darkstore_eta_messages_total".into(), "counter", load(&p.eta_messages)));
    let stores = state.stores();
    let areas = app.dispatcher.areas();
    for (idx, area) in &areas {
        let Some(store) = stores.get(*idx as usize) else { continue };
        let id = crate::metrics::label_value(&store.id);
        extra.push((format!("darkstore_surge_level{{store=\"{id}\"}}"), "gauge", area.level as f64));
    }
    for (idx, area) in &areas {
        let Some(store) = stores.get(*idx as usize) else { continue };
        let id = crate::metrics::label_value(&store.id);
        extra.push((format!("darkstore_delivery_fee_minor{{store=\"{id}\"}}"), "gauge", area.fee_minor as f64));
    }
    let body = state.metrics.render(&extra);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// The document as served: the static text, with the time-zone names this machine's database
/// knows as the enum of a store's `timezone` (so a client, and the fuzzer, can tell a valid one).
static OPENAPI_SERVED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let mut doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON");
    let names = darkstore_geoinv::hours::timezone_names();
    if !names.is_empty() {
        // Nullable: OpenAPI 3.0 wants null among the values too.
        let mut values: Vec<serde_json::Value> = names.into_iter().map(serde_json::Value::String).collect();
        values.push(serde_json::Value::Null);
        doc["components"]["schemas"]["Store"]["properties"]["timezone"]["enum"] = values.into();
    }
    doc.to_string()
});

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_SERVED.as_str()).into_response()
}

/// The dashboard's policy: its own script, style and feeds only; never framed.
const DASHBOARD_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

pub async fn index() -> Response {
    ([(header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP), (header::X_FRAME_OPTIONS, "DENY")], Html(INDEX)).into_response()
}

/// The dashboard's script and style, embedded in the binary.
pub async fn app_js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], APP_JS)
        .into_response()
}

pub async fn style_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], STYLE_CSS)
        .into_response()
}
