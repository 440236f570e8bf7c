//! The HTTP API: routing, the middleware every request passes (identity, rate limit, metrics,
//! logs), and the extractors that turn bad input into precise 4xx answers.
//!
//! Handlers live by feature: [`catalog`] (stores, products, rider registration), [`stock`]
//! (stock, availability and top picks, with [`pages`] keeping serialized availability pages),
//! [`forecast`] (a store's expected demand), [`orders`]
//! (orders and payments), [`riders`] (riders over HTTP), [`ops`] (health, metrics, docs,
//! dashboard), [`ws`] (live feeds). This module is the only place that knows the HTTP wire
//! format of requests and errors.

mod catalog;
mod forecast;
mod ops;
mod orders;
pub mod pages;
mod riders;
mod stock;
pub mod ws;
pub mod ws_cluster;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;

use crate::auth::{self, Claims, Role};
use crate::clock::Clock;
use crate::error::ApiError;
use crate::model::Order;
use crate::ratelimit::RateLimiter;
use crate::state::State;

/// What every handler shares.
pub struct App {
    pub state: Arc<State>,
    pub clock: Arc<dyn Clock>,
    pub jwt_secret: Vec<u8>,
    pub webhook_secret: Option<Vec<u8>>,
    pub limiter: RateLimiter,
    pub max_body_bytes: usize,
    /// Origins allowed by CORS.
    pub cors_origins: Vec<axum::http::HeaderValue>,
    /// Cluster mode: the ownership of regions (None: one node).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub riders: Arc<crate::riders::Riders>,
    pub ingest: Arc<crate::ingest::Ingest>,
    pub dispatcher: Arc<crate::dispatch::Dispatcher>,
    pub publisher: Arc<crate::publish::Publisher>,
    pub promises: Arc<crate::promises::Promises>,
    /// Held here: the changes hub holds its observers weakly.
    pub geofences: Arc<crate::geofence::Geofences>,
    pub picks: Arc<crate::picks::TopPicks>,
    pub feeds: Arc<crate::feeds::Feeds>,
    pub pages: pages::Pages,
    pub mqtt: Option<crate::mqtt::Mqtt>,
    /// The embedded broker's access rules (None with an external broker).
    pub broker_access: Option<Arc<crate::broker::Access>>,
    pub ws: ws::WsLimits,
}

impl App {
    /// Whether the MQTT broker is connected (true when the server runs without one).
    pub fn broker_ready(&self) -> bool {
        self.mqtt.as_ref().is_none_or(|m| m.connected.load(std::sync::atomic::Ordering::Relaxed))
    }
}

pub type AppRef = Arc<App>;

pub fn router(app: AppRef) -> Router {
    let routes = Router::new()
        .route("/", get(ops::index))
        .route("/app.js", get(ops::app_js))
        .route("/style.css", get(ops::style_css))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/v1/cluster", get(ops::cluster))
        .route("/v1/stores/{store_id}", put(catalog::put_store).get(catalog::get_store).patch(catalog::patch_store))
        .route("/v1/catalog/{sku}", put(catalog::put_product).get(catalog::get_product))
        .route("/v1/riders/{rider_id}", put(catalog::put_rider).get(riders::get))
        .route("/v1/riders/{rider_id}/location", post(riders::location))
        .route("/v1/riders/{rider_id}/shift", post(riders::shift))
        .route("/v1/riders/{rider_id}/events", post(riders::event))
        .route("/v1/stores/{store_id}/stock", post(stock::post_stock).get(stock::get_stock))
        .route("/v1/availability", get(stock::availability))
        .route("/v1/top-picks", get(stock::top_picks))
        .route("/v1/stores/{store_id}/forecast", get(forecast::store_forecast))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/stores", get(catalog::list_stores))
        .route("/v1/stores/{store_id}/area", get(catalog::store_area))
        .route("/v1/orders", post(orders::place).get(orders::list))
        .route("/v1/orders/{id}", get(orders::get))
        .route("/v1/orders/{id}/cancel", post(orders::cancel))
        .route("/v1/orders/{id}/packed", post(orders::packed))
        .route("/v1/payments/webhook", post(orders::payment_webhook))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "method not allowed on this endpoint")
        });
    // Cluster mode: a request for a region another node owns runs there. One node pays nothing.
    let routes = match app.cluster {
        Some(_) => routes.route_layer(middleware::from_fn_with_state(app.clone(), crate::cluster::forward::to_owner)),
        None => routes,
    };
    let routes = routes
        .layer(middleware::from_fn_with_state(app.clone(), edge))
        .layer(axum::extract::DefaultBodyLimit::max(app.max_body_bytes));
    // No CORS layer at all without origins: nothing to answer, nothing to pay per request.
    let routes = if app.cors_origins.is_empty() { routes } else { routes.layer(cors(&app.cors_origins)) };
    routes.with_state(app)
}

/// CORS for the configured origins (none: the layer answers no preflight and adds no header, so
/// browsers on other origins are refused). Preflights are answered before identity and rate
/// limits; the real request then goes through them as any other.
fn cors(origins: &[axum::http::HeaderValue]) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            HeaderName::from_static("idempotent-replayed"),
            header::RETRY_AFTER,
            HeaderName::from_static("x-request-id"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// The router of the separate metrics address (`--metrics-listen`): `/metrics` without a token,
/// for a Prometheus that scrapes over a private network.
pub fn metrics_router(app: AppRef) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|axum::extract::State(app): axum::extract::State<AppRef>| async move { ops::metrics_response(&app) }),
        )
        .fallback(|| async { ApiError::not_found("only /metrics is served here") })
        .with_state(app)
}

/// The identity a request carries, set by [`edge`].
#[derive(Clone, Debug)]
pub(crate) enum Identity {
    Anonymous,
    Invalid(&'static str),
    Token(Claims),
}

/// Every request: identify, rate-limit, time, count and log.
async fn edge(axum::extract::State(app): axum::extract::State<AppRef>, req: Request, next: Next) -> Response {
    use tracing::Instrument;
    // The answer returns the request's id as a header, and the log lines carry it: a write runs in
    // a span with the id (every line it logs has it); a read, the hottest path, gets no span (one
    // per request cost a third of the availability throughput on two cores, measured with
    // `cargo bench --bench availability_http`), and the edge's own lines name the id.
    let id = request_id(&req);
    let mut response = if req.method() == axum::http::Method::GET {
        edge_inner(app, req, next, &id).await
    } else {
        let span = tracing::info_span!("request", request_id = %id);
        edge_inner(app, req, next, &id).instrument(span).await
    };
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

async fn edge_inner(app: AppRef, mut req: Request, next: Next, request_id: &str) -> Response {
    let started = Instant::now();
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".to_owned());
    let method = metric_method(req.method());
    let identity = identify(&app, &req);
    let client = match &identity {
        // Role and subject: a customer whose `sub` equals an admin's is another client.
        Identity::Token(c) => format!("{}:{}", c.role.as_str(), c.sub),
        _ => match req.extensions().get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(addr)) => format!("ip:{}", addr.ip()),
            None => "ip:unknown".to_owned(),
        },
    };
    // A request another node forwarded was counted against its client there (here it would
    // have no address: every anonymous client would share one budget).
    let forwarded = req.extensions().get::<crate::cluster::forward::Forwarded>().is_some();
    let response = if !forwarded && !app.limiter.allow(&client) {
        app.state.metrics.rate_limited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests; slow down").into_response()
    } else {
        req.extensions_mut().insert(identity);
        next.run(req).await
    };
    let response = normalize_rejection(response).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    app.state.metrics.http(method, &route, status, elapsed.as_secs_f64());
    if status == 503 {
        // Refused with a retry (the database or NATS away, a region changing owner): the cause is
        // logged where it is known; under a failover this line comes once per request.
        tracing::warn!(%request_id, %method, %route, status, micros = elapsed.as_micros() as u64, "request refused");
    } else if status >= 500 {
        tracing::error!(%request_id, %method, %route, status, micros = elapsed.as_micros() as u64, "request failed");
    } else {
        tracing::debug!(%request_id, %method, %route, status, micros = elapsed.as_micros() as u64, "request");
    }
    security_headers(response)
}

/// Headers every answer carries; the dashboard's page also gets a strict Content-Security-Policy
/// (`ops.rs`).
fn security_headers(mut response: Response) -> Response {
    use axum::http::HeaderValue;
    let h = response.headers_mut();
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

/// The method as a metric label: one of a closed set, so made-up methods cannot grow `/metrics`.
fn metric_method(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Axum answers some rejections itself (a body over the limit, a bad path) in plain text; give
/// them the API's error shape.
async fn normalize_rejection(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let status = response.status();
    if is_json || !(status.is_client_error()) || status == StatusCode::TOO_MANY_REQUESTS {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&body).trim().to_owned();
    let code = match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        _ => "invalid_request",
    };
    ApiError::new(status, code, if message.is_empty() { status.to_string() } else { message }).into_response()
}

pub(crate) fn identify(app: &App, req: &Request) -> Identity {
    let Some(value) = req.headers().get(axum::http::header::AUTHORIZATION) else {
        return Identity::Anonymous;
    };
    let Some(token) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
        return Identity::Invalid("the Authorization header must be `Bearer <token>`");
    };
    match auth::verify(&app.jwt_secret, token.trim(), app.clock.now_secs()) {
        Ok(claims) => Identity::Token(claims),
        Err(e) => Identity::Invalid(e.message()),
    }
}

/// A caller with a valid token. Rejects with 401 otherwise.
pub struct Caller(pub Claims);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Identity>() {
            Some(Identity::Token(claims)) => Ok(Caller(claims.clone())),
            Some(Identity::Invalid(why)) => Err(ApiError::unauthorized(*why)),
            _ => Err(ApiError::unauthorized("a bearer token is required")),
        }
    }
}

impl Caller {
    /// 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.0.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("role {:?} may not do this", self.0.role).to_lowercase()))
        }
    }

    /// Admin, or staff of `store_id`.
    pub fn require_store(&self, store_id: &str) -> Result<(), ApiError> {
        match self.0.role {
            Role::Admin => Ok(()),
            Role::Staff if self.0.store.as_deref() == Some(store_id) => Ok(()),
            Role::Staff => Err(ApiError::forbidden("this staff token is for another store")),
            _ => Err(ApiError::forbidden("only staff of this store or an admin may do this")),
        }
    }
}

/// Whether `claims` may see or act on `order` as a party to it: admin, its customer, staff of its
/// store, its rider (while it holds the order). Anyone else is told `not_found`, the same answer
/// as for an order that does not exist, so order ids cannot be probed or counted. The one
/// permission check for orders, shared by HTTP and WebSocket.
pub fn order_access(claims: &Claims, order: &Order) -> Result<(), ApiError> {
    let party = match claims.role {
        Role::Admin => true,
        Role::Customer => claims.sub == order.customer_id,
        Role::Staff => claims.store.as_deref() == Some(order.store_id.as_str()),
        Role::Rider => order.rider_id.as_deref() == Some(claims.sub.as_str()),
    };
    if party { Ok(()) } else { Err(ApiError::not_found("no such order")) }
}

/// A JSON body with the API's errors: 400 for malformed JSON, 422 for the wrong shape, 413 over
/// the size limit.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", "the request body is too large")
            } else {
                ApiError::bad_request(e.body_text())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = T::deserialize(&mut de).and_then(|v| de.end().map(|_| v));
    value.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid(format!("invalid body: {e}")),
        _ => ApiError::bad_request(format!("malformed JSON: {e}")),
    })
}

/// An optional integer query parameter within `[min, max]`, `default` when absent (422 otherwise).
pub fn bounded(name: &str, value: Option<&str>, default: usize, (min, max): (usize, usize)) -> Result<usize, ApiError> {
    match value {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(format!("{name} must be an integer in [{min}, {max}]"))),
        },
    }
}

/// A path id that must be a valid client-chosen id (422 otherwise).
pub fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if darkstore_geoinv::ids::valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("{what} must be 1-64 characters of [A-Za-z0-9_.-]")))
    }
}

/// Coordinates in range and finite (422 otherwise).
pub fn check_point(lat: f64, lng: f64) -> Result<(), ApiError> {
    if darkstore_geoinv::travel::valid_coordinates(lat, lng) {
        Ok(())
    } else {
        Err(ApiError::invalid("lat must be in [-90, 90] and lng in [-180, 180]"))
    }
}

/// Runs a state change on its own task, so a client that hangs up cannot cancel it half-way
/// (its reservation would then be committed with nobody to remember it).
pub async fn detached<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> Result<T, ApiError> {
    use tracing::Instrument;
    // The request's span (and its request id) goes with the work.
    tokio::spawn(fut.instrument(tracing::Span::current())).await.map_err(ApiError::unavailable)
}

/// The request's id: the client's `X-Request-Id` when it is a short token, else a new one.
fn request_id(req: &Request) -> String {
    let given = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).filter(|s| {
        (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    });
    match given {
        Some(id) => id.to_owned(),
        // A random prefix per process and a counter: unique, unguessable across restarts, and no
        // system call per request.
        None => {
            static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let prefix = PREFIX.get_or_init(|| {
                let mut b = [0u8; 4];
                let _ = getrandom::fill(&mut b);
                u32::from_le_bytes(b)
            });
            format!("{prefix:08x}{:08x}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        }
    }
}
