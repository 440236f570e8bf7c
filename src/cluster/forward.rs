//! Any node answers any request: a request for a region another node owns is sent to that node
//! over NATS request/reply (subject `darkstore.http.{node}`), run there through the same router,
//! and its answer returned as is (status, headers, body). The client sees one server.
//!
//! A forward is signed with an HMAC of the shared token secret (a process that can publish on
//! NATS but does not hold the secret cannot inject requests), carries the client's own
//! `Authorization` (the owner checks it as for any request), and is never forwarded again: a node
//! that does not own the region (any more) answers 503 and the client retries.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

use super::Cluster;
use crate::error::ApiError;
use crate::http::AppRef;

/// Marks a request that arrived forwarded from another node.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded;

/// How long a forwarded request may take before the client gets a 503 (a retry with the same
/// Idempotency-Key is safe: the owner may have done it).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest answer sent back (NATS's default maximum payload is 1 MB).
const MAX_ANSWER: usize = 900 * 1024;

/// How far a forward's sending time may be from the owner's clock (either way: nodes' clocks may
/// be seconds apart). Older forwards are refused, and a forward is run at most once within it.
const FRESH_MS: i64 = 60_000;

#[derive(Serialize, Deserialize)]
struct WireRequest {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: String,
    /// The sender's wall clock (unix ms) and a random id, both signed: a forward captured on the
    /// bus cannot be run again, nor late.
    sent_at: i64,
    id: String,
    sig: String,
}

/// The ids of the forwards run within the window a forward is fresh (twice [`FRESH_MS`]: the
/// sender's clock may be ahead): about 40 bytes each, so 4,000 forwards a second keep about 20 MB.
#[derive(Default)]
pub struct Replays {
    seen: std::collections::HashMap<u128, i64, ahash::RandomState>,
    last_prune: i64,
}

impl Replays {
    /// True the first time `id` (32 hex digits) is offered within the window; false for a repeat
    /// or an id that is not one.
    fn first(&mut self, id: &str, now: i64) -> bool {
        let Ok(id) = u128::from_str_radix(id, 16) else { return false };
        if now - self.last_prune > FRESH_MS / 6 {
            self.seen.retain(|_, t| now - *t <= 2 * FRESH_MS);
            self.last_prune = now;
        }
        self.seen.insert(id, now).is_none()
    }
}

/// The wall clock a forward's freshness is judged by (each node its own).
fn wall_ms() -> i64 {
    use crate::clock::Clock;
    crate::clock::SystemClock.now_ms()
}

#[derive(Serialize, Deserialize)]
struct WireResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

fn subject(node: &str) -> String {
    format!("darkstore.http.{node}")
}

fn signature(
    secret: &[u8],
    (sent_at, id): (i64, &str),
    method: &str,
    uri: &str,
    headers: &[(String, String)],
    body: &str,
) -> String {
    let mut msg = format!("{sent_at}\n{id}\n{method}\n{uri}\n");
    for (k, v) in headers {
        msg.push_str(k);
        msg.push(':');
        msg.push_str(v);
        msg.push('\n');
    }
    msg.push_str(body);
    crate::auth::hmac_hex(secret, msg.as_bytes())
}

/// Headers worth carrying either way (hop-by-hop ones are not).
fn carried(name: &HeaderName) -> bool {
    !matches!(name.as_str(), "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "host" | "content-length")
}

/// Why a forward got no answer, and whether the owner may have run the request all the same.
#[derive(Debug)]
pub struct ForwardError {
    pub why: String,
    pub maybe_applied: bool,
}

impl ForwardError {
    fn not_sent(why: String) -> ForwardError {
        ForwardError { why, maybe_applied: false }
    }
}

fn unavailable(message: String, region: &str) -> Response {
    let mut r = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        .with("region", serde_json::json!(region))
        .into_response();
    r.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
    r
}

/// The store whose region a request belongs to (None: any node answers it).
async fn store_of(app: &AppRef, method: &Method, route: &str, uri: &axum::http::Uri, body: &[u8]) -> Option<String> {
    let segment = |i: usize| uri.path().split('/').nth(i).map(str::to_owned);
    let point = |lat: Option<f64>, lng: Option<f64>| -> Option<String> {
        let (lat, lng) = (lat?, lng?);
        app.state.serving(lat, lng).ok().flatten().map(|(store, _)| store.id.clone())
    };
    match (method.as_str(), route) {
        (_, "/v1/stores/{store_id}/stock")
        | ("GET", "/v1/stores/{store_id}/forecast")
        | ("PATCH", "/v1/stores/{store_id}") => segment(3),
        ("GET", "/v1/availability") | ("GET", "/v1/top-picks") => {
            let axum::extract::Query(q) =
                axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(uri).ok()?;
            point(q.get("lat").and_then(|v| v.trim().parse().ok()), q.get("lng").and_then(|v| v.trim().parse().ok()))
        }
        ("POST", "/v1/orders") => {
            let v: serde_json::Value = serde_json::from_slice(body).ok()?;
            point(v["lat"].as_f64(), v["lng"].as_f64())
        }
        // A rider's live state (its task) is its dispatching node's.
        ("GET", "/v1/riders/{rider_id}") => app.riders.get(&segment(3)?)?.store_id,
        (_, "/v1/orders/{id}") | ("POST", "/v1/orders/{id}/cancel") | ("POST", "/v1/orders/{id}/packed") => {
            let id = segment(3)?;
            if let Some(o) = app.state.order(&id) {
                return Some(o.lock().await.store_id.clone());
            }
            app.state.db.order(&id).await.ok().flatten().map(|o| o.store_id)
        }
        _ => None,
    }
}

/// Middleware (cluster mode only: the router has no such layer on one node): runs a request here
/// when this node serves its region, sends it to the owner otherwise, and answers 503 while the
/// region has no owner (a failover).
pub async fn to_owner(State(app): State<AppRef>, req: Request, next: Next) -> Response {
    let Some(cluster) = app.cluster.clone() else { return next.run(req).await };
    let Some(route) = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()) else {
        return next.run(req).await;
    };
    let forwarded = req.extensions().get::<Forwarded>().is_some();
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, app.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", "the request body is too large")
                .into_response();
        }
    };
    let store = store_of(&app, &parts.method, &route, &parts.uri, &body).await;
    // A store no node knows is answered here (the handler says 404).
    let store = store.and_then(|s| app.state.store(&s));
    let elsewhere = match store.map(|s| cluster.serves_store(&s)) {
        None | Some(Ok(())) => return next.run(Request::from_parts(parts, Body::from(body))).await,
        Some(Err(e)) => e,
    };
    if forwarded {
        return unavailable(
            format!("region {} is not served by this node any more; try again", elsewhere.region),
            &elsewhere.region,
        );
    }
    match elsewhere.owner {
        Some((node, _)) if node != cluster.node_id => {
            // A write the owner may have received and applied without answering must not be
            // repeated blindly: unless it carries an Idempotency-Key (which makes a repeat safe),
            // it is answered 504, not "try again".
            let repeatable = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
                || parts.headers.contains_key("idempotency-key");
            let started = std::time::Instant::now();
            let answer = cluster.forward(&node, parts, body, &app.jwt_secret).await;
            app.state.metrics.forward_latency.observe(started.elapsed().as_secs_f64());
            answer.unwrap_or_else(|e| {
                tracing::warn!(owner = %node, error = %e.why, "forwarding failed");
                if e.maybe_applied && !repeatable {
                    return ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "owner_timeout",
                        format!(
                            "region {} is served by node {node}, which did not answer in time: the change may \
                             have been applied; read it back before repeating it",
                            elsewhere.region
                        ),
                    )
                    .with("region", serde_json::json!(elsewhere.region))
                    .into_response();
                }
                unavailable(
                    format!("region {} is served by node {node}, which did not answer; try again", elsewhere.region),
                    &elsewhere.region,
                )
            })
        }
        _ => unavailable(format!("region {} is changing owner; try again", elsewhere.region), &elsewhere.region),
    }
}

impl Cluster {
    /// Sends a request to `node` and returns its answer.
    async fn forward(
        &self,
        node: &str,
        parts: axum::http::request::Parts,
        body: Bytes,
        secret: &[u8],
    ) -> Result<Response, ForwardError> {
        let method = parts.method.to_string();
        let uri = parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| parts.uri.path().to_owned());
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .filter(|(k, _)| carried(k))
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let body = base64::engine::general_purpose::STANDARD.encode(&body);
        let (sent_at, id) = (wall_ms(), {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).map_err(|e| ForwardError::not_sent(e.to_string()))?;
            hex::encode(bytes)
        });
        let sig = signature(secret, (sent_at, &id), &method, &uri, &headers, &body);
        let wire = serde_json::to_vec(&WireRequest { method, uri, headers, body, sent_at, id, sig })
            .map_err(|e| ForwardError::not_sent(e.to_string()))?;
        let reply = tokio::time::timeout(FORWARD_TIMEOUT, self.client.request(subject(node), wire.into()))
            .await
            .map_err(|_| ForwardError { why: "timed out".into(), maybe_applied: true })?
            .map_err(|e| ForwardError {
                why: e.to_string(),
                // No node listens (it left or died): nothing was delivered.
                maybe_applied: e.kind() != async_nats::RequestErrorKind::NoResponders,
            })?;
        let answer: WireResponse = serde_json::from_slice(&reply.payload)
            .map_err(|e| ForwardError { why: e.to_string(), maybe_applied: true })?;
        let body = base64::engine::general_purpose::STANDARD
            .decode(answer.body)
            .map_err(|e| ForwardError { why: e.to_string(), maybe_applied: true })?;
        let mut response = Response::builder().status(answer.status);
        for (k, v) in &answer.headers {
            response = response.header(k, v);
        }
        response.body(Body::from(body)).map_err(|e| ForwardError { why: e.to_string(), maybe_applied: true })
    }

    /// Answers the requests other nodes forward here, through `router`, until `stop`.
    pub async fn serve_forwards(
        self: Arc<Self>,
        router: axum::Router,
        secret: Vec<u8>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut sub = match self.client.subscribe(subject(&self.node_id)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot receive forwarded requests");
                return;
            }
        };
        let replays = Arc::new(std::sync::Mutex::new(Replays::default()));
        loop {
            tokio::select! {
                msg = sub.next() => {
                    let Some(msg) = msg else { break };
                    let (client, router, secret) = (self.client.clone(), router.clone(), secret.clone());
                    let replays = replays.clone();
                    tokio::spawn(async move {
                        let Some(reply) = msg.reply else { return };
                        let answer = answer(router, &secret, &replays, &msg.payload).await;
                        if let Err(e) = client.publish(reply, answer.into()).await {
                            tracing::warn!(error = %e, "could not answer a forwarded request");
                        }
                    });
                }
                _ = stop.changed() => break,
            }
        }
    }
}

impl Cluster {
    /// Asks `node` a signed question of kind `what` (e.g. a feed's snapshot) and waits for its
    /// answer.
    pub async fn ask(&self, node: &str, what: &str, body: &[u8], secret: &[u8]) -> Result<Bytes, String> {
        let sig = crate::auth::hmac_hex(secret, body);
        let mut payload = Vec::with_capacity(sig.len() + body.len());
        payload.extend_from_slice(sig.as_bytes());
        payload.extend_from_slice(body);
        let subject = format!("darkstore.ask.{what}.{node}");
        let reply = tokio::time::timeout(FORWARD_TIMEOUT, self.client.request(subject, payload.into()))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(reply.payload)
    }

    /// Answers the questions of kind `what` other nodes ask this one, with `handler`, until
    /// `stop` (unsigned ones are not answered).
    pub async fn serve_asks<F, Fut>(
        self: Arc<Self>,
        what: &'static str,
        secret: Vec<u8>,
        handler: F,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) where
        F: Fn(Bytes) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<u8>> + Send,
    {
        let Ok(mut sub) = self.client.subscribe(format!("darkstore.ask.{what}.{}", self.node_id)).await else {
            tracing::error!(what, "cannot answer other nodes");
            return;
        };
        loop {
            tokio::select! {
                msg = sub.next() => {
                    let Some(msg) = msg else { break };
                    let (Some(reply), true) = (msg.reply.clone(), msg.payload.len() >= 64) else { continue };
                    let (sig, body) = msg.payload.split_at(64);
                    let expected = crate::auth::hmac_hex(&secret, body);
                    if !crate::auth::constant_time_eq(expected.as_bytes(), sig) {
                        tracing::warn!(what, "an unsigned question from another node was not answered");
                        continue;
                    }
                    let (client, handler, body) = (self.client.clone(), handler.clone(), msg.payload.slice(64..));
                    tokio::spawn(async move {
                        let answer = handler(body).await;
                        let _ = client.publish(reply, answer.into()).await;
                    });
                }
                _ = stop.changed() => break,
            }
        }
    }
}

/// Runs one forwarded request through the router. A forged one (bad signature), a stale one
/// (sent more than [`FRESH_MS`] away from this node's clock) and a replayed one (its id already
/// run) are answered 403 and not run.
async fn answer(router: axum::Router, secret: &[u8], replays: &std::sync::Mutex<Replays>, payload: &[u8]) -> Vec<u8> {
    let b64 = &base64::engine::general_purpose::STANDARD;
    let now = wall_ms();
    let signed = |w: &WireRequest| {
        crate::auth::constant_time_eq(
            signature(secret, (w.sent_at, &w.id), &w.method, &w.uri, &w.headers, &w.body).as_bytes(),
            w.sig.as_bytes(),
        )
    };
    let response = match serde_json::from_slice::<WireRequest>(payload) {
        Ok(w) if signed(&w) && (now - w.sent_at).abs() > FRESH_MS => {
            tracing::warn!(sent_at = w.sent_at, "a stale forwarded request was refused");
            ApiError::forbidden("a forwarded request older than a minute is not run").into_response()
        }
        Ok(w) if signed(&w) && !replays.lock().expect("replays lock").first(&w.id, now) => {
            tracing::warn!(id = %w.id, "a replayed forwarded request was refused");
            ApiError::forbidden("a forwarded request is run once").into_response()
        }
        Ok(w) if signed(&w) => {
            let mut req = Request::builder().method(w.method.as_str()).uri(w.uri.as_str());
            for (k, v) in &w.headers {
                req = req.header(k, v);
            }
            let body = b64.decode(&w.body).unwrap_or_default();
            match req.body(Body::from(body)) {
                Ok(mut req) => {
                    req.extensions_mut().insert(Forwarded);
                    router.oneshot(req).await.unwrap_or_else(|e| match e {})
                }
                Err(_) => ApiError::bad_request("a malformed forwarded request").into_response(),
            }
        }
        _ => {
            tracing::warn!("a forwarded request with a bad signature was refused");
            ApiError::forbidden("a forwarded request must be signed by a node of this cluster").into_response()
        }
    };
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, MAX_ANSWER).await.unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .filter(|(k, _)| carried(k))
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    serde_json::to_vec(&WireResponse { status: parts.status.as_u16(), headers, body: b64.encode(&body) })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"the cluster's token secret";

    fn wire(secret: &[u8], sent_at: i64, id: &str) -> Vec<u8> {
        let (method, uri, headers, body) = ("POST".to_owned(), "/count".to_owned(), Vec::new(), String::new());
        let sig = signature(secret, (sent_at, id), &method, &uri, &headers, &body);
        serde_json::to_vec(&WireRequest { method, uri, headers, body, sent_at, id: id.into(), sig }).unwrap()
    }

    /// A forged, a stale and a replayed forward are refused without running; a fresh signed one
    /// runs once.
    #[tokio::test]
    async fn forwards_run_only_when_signed_fresh_and_new() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = runs.clone();
        let router = axum::Router::new().route(
            "/count",
            axum::routing::post(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    "ran"
                }
            }),
        );
        let replays = std::sync::Mutex::new(Replays::default());
        let status = |answer: Vec<u8>| serde_json::from_slice::<WireResponse>(&answer).unwrap().status;
        let now = wall_ms();
        let cases = [
            ("forged: signed with another secret", wire(b"not the secret", now, "a"), 403, 0),
            ("stale: sent two minutes ago", wire(SECRET, now - 2 * FRESH_MS, "b"), 403, 0),
            ("from a clock 20 s behind", wire(SECRET, now - 20_000, "c"), 200, 1),
            ("fresh", wire(SECRET, now, "d"), 200, 2),
            ("the same again (replayed)", wire(SECRET, now, "d"), 403, 2),
            ("signed, but its id is not one", wire(SECRET, now, "not-hex"), 403, 2),
            ("not a forward at all", b"{}".to_vec(), 403, 2),
        ];
        for (what, payload, expected, ran) in cases {
            let got = status(answer(router.clone(), SECRET, &replays, &payload).await);
            assert_eq!((got, runs.load(std::sync::atomic::Ordering::SeqCst)), (expected, ran), "{what}");
        }
    }
}
