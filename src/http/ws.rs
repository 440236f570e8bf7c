//! `GET /v1/ws`: live feeds over WebSocket.
//!
//! One task per connection reads client ops, writes queued frames and coalesced rider positions,
//! and keeps the connection alive with pings. Per subscription, the first message is a snapshot
//! (`seq` 0) and every later message on it has the next `seq`, so a gap means something was lost
//! and the client should resubscribe. A subscription is registered with the feed bus before its
//! snapshot is taken, so nothing that changes in between is missed (deltas are full states, so one
//! already reflected in the snapshot is harmless). A client whose queue overflows is closed with
//! 1013; a client silent for a minute is dropped; frames over 4 KiB close the connection (1009).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppRef, Identity, identify, order_access};
use crate::auth::{Claims, Role};
use crate::error::ApiError;
use crate::feeds::{Frame, Subscriber};
use crate::topics::{FEEDS_HELP, Feed};
use crate::views;
use darkstore_geoinv::order::OrderStatus;

/// Most subscriptions one connection may hold.
pub const MAX_SUBSCRIPTIONS: usize = 64;
/// Largest client frame, bytes.
pub const MAX_FRAME: usize = 4096;
/// A connection's read buffer, bytes (a client frame is at most [`MAX_FRAME`]).
const READ_BUFFER: usize = 2 * MAX_FRAME;
/// Client ops per second allowed (burst twice that); past it ops are refused, and a client that
/// keeps flooding is closed.
const OPS_PER_SEC: f64 = 20.0;
const PING_EVERY: Duration = Duration::from_secs(20);
const SILENT_LIMIT: Duration = Duration::from_secs(60);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The close code for a connection whose token expired.
const TOKEN_EXPIRED: u16 = 4001;
/// Far enough in the future to mean never.
const FAR: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Connection limits and counters.
#[derive(Debug)]
pub struct WsLimits {
    pub max_connections: usize,
    /// How long a customer or rider keeps an order's feed after the order finished.
    pub finished_grace: Duration,
    /// Most connections one client (role and subject, or IP address) may hold.
    pub max_per_client: usize,
    per_client: dashmap::DashMap<String, usize, ahash::RandomState>,
    pub queue: usize,
    pub connections: AtomicUsize,
    pub next_id: AtomicU64,
    pub frames_sent: AtomicU64,
    pub closed_slow: AtomicU64,
    pub closed_silent: AtomicU64,
    pub refused: AtomicU64,
    /// Turns true when the server shuts down: every connection closes with 1001.
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

impl WsLimits {
    /// Counts a connection of `client`; false (nothing counted) when it holds the most it may.
    fn enter(&self, client: &str) -> bool {
        let mut n = self.per_client.entry(client.to_owned()).or_insert(0);
        if *n >= self.max_per_client {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, client: &str) {
        if let Some(mut n) = self.per_client.get_mut(client) {
            *n = n.saturating_sub(1);
        }
        self.per_client.remove_if(client, |_, n| *n == 0);
    }

    pub fn new(max_connections: usize, max_per_client: usize, queue: usize, finished_grace: Duration) -> WsLimits {
        WsLimits {
            max_connections,
            finished_grace,
            max_per_client,
            per_client: Default::default(),
            queue,
            connections: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            frames_sent: AtomicU64::new(0),
            closed_slow: AtomicU64::new(0),
            closed_silent: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            shutdown: tokio::sync::watch::channel(false).0,
        }
    }
}

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

pub async fn upgrade(
    State(app): State<AppRef>,
    Query(q): Query<WsQuery>,
    ws: WebSocketUpgrade,
    req: Request,
) -> Response {
    let identity = match (&q.token, req.extensions().get::<Identity>()) {
        (Some(token), _) => match crate::auth::verify(&app.jwt_secret, token, app.clock.now_secs()) {
            Ok(c) => Identity::Token(c),
            Err(e) => Identity::Invalid(e.message()),
        },
        (None, Some(id)) => id.clone(),
        (None, None) => identify(&app, &req),
    };
    let claims = match identity {
        Identity::Token(c) => Some(c),
        Identity::Invalid(why) => return ApiError::unauthorized(why).into_response(),
        Identity::Anonymous => None,
    };
    let limits = &app.ws;
    let client = match &claims {
        Some(c) => format!("{}:{}", c.role.as_str(), c.sub),
        None => match req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>() {
            Some(axum::extract::ConnectInfo(addr)) => format!("ip:{}", addr.ip()),
            None => "ip:unknown".to_owned(),
        },
    };
    if !limits.enter(&client) {
        limits.refused.fetch_add(1, Ordering::Relaxed);
        return ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("at most {} WebSocket connections per client", limits.max_per_client),
        )
        .into_response();
    }
    if limits.connections.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
        limits.leave(&client);
        limits.connections.fetch_sub(1, Ordering::AcqRel);
        limits.refused.fetch_add(1, Ordering::Relaxed);
        return ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "too many WebSocket connections",
        )
        .into_response();
    }
    // Given back when the connection ends, or when the upgrade never completes.
    let seat = Seat { app: app.clone(), client };
    // Buffers sized for what flows: client frames are at most MAX_FRAME, and every message out
    // is written as it is sent (the library's defaults, 128 KiB each way, cost 10,000 screens
    // over a gigabyte).
    ws.max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            connection(app.clone(), socket, claims).await;
            drop(seat);
        })
}

/// A counted connection.
struct Seat {
    app: AppRef,
    client: String,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.app.ws.connections.fetch_sub(1, Ordering::AcqRel);
        self.app.ws.leave(&self.client);
    }
}

fn frame_text(topic: &str, kind: &str, seq: u64, data: &str) -> String {
    let topic = serde_json::to_string(topic).unwrap_or_else(|_| "null".into());
    format!(r#"{{"topic":{topic},"type":"{kind}","seq":{seq},"data":{data}}}"#)
}

fn error_text(topic: Option<&str>, error: &str, message: &str) -> String {
    json!({"topic": topic, "type": "error", "seq": 0, "data": {"error": error, "message": message}}).to_string()
}

#[derive(Deserialize)]
struct Op {
    op: String,
    topic: Option<String>,
    /// Rider positions as one `riders` frame per `--ws-batch-ms` (store and riders feeds).
    #[serde(default)]
    batch: bool,
}

/// Why a subscription was refused.
enum Refusal {
    Forbidden,
    NotFound,
    Invalid(&'static str),
    /// The database was needed (an order read back) and did not answer.
    Unavailable,
}

async fn connection(app: AppRef, mut socket: WebSocket, claims: Option<Claims>) {
    let id = app.ws.next_id.fetch_add(1, Ordering::Relaxed);
    let (sub, mut queue) = Subscriber::new(id, app.ws.queue);
    let feeds = app.feeds.clone();
    // topic → seq of the last message sent on it
    let mut subs: HashMap<String, u64> = HashMap::new();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let (mut tokens, mut refill_at, mut refused_ops) = (OPS_PER_SEC * 2.0, Instant::now(), 0u32);
    let mut close: Option<(u16, &'static str)> = None;
    let mut shutdown = app.ws.shutdown.subscribe();
    // Order feeds that end: the order finished, and its customer or rider keeps it a while.
    let mut endings: HashMap<String, Instant> = HashMap::new();
    // The connection ends when its token does.
    let expires = claims.as_ref().map(|c| {
        let left = c.exp.saturating_mul(1000).saturating_sub(app.clock.now_ms()).max(0) as u64;
        Instant::now() + Duration::from_millis(left).min(FAR)
    });
    let token_expiry = tokio::time::sleep_until(expires.unwrap_or_else(|| Instant::now() + FAR).into());
    tokio::pin!(token_expiry);
    loop {
        // The next order feed to end, if any.
        let next_end = endings.values().min().copied();
        let out: Vec<String> = tokio::select! {
            _ = tokio::time::sleep_until(next_end.unwrap_or_else(Instant::now).into()), if next_end.is_some() => {
                let now = Instant::now();
                let ended: Vec<String> = endings.iter().filter(|(_, at)| **at <= now).map(|(t, _)| t.clone()).collect();
                let mut out = Vec::new();
                for topic in ended {
                    endings.remove(&topic);
                    out.extend(end_subscription(&app, &sub, &mut subs, &topic, "ended", "the order is finished"));
                }
                out
            }
            msg = socket.recv() => {
                last_heard = Instant::now();
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        let now = Instant::now();
                        tokens = (tokens + now.duration_since(refill_at).as_secs_f64() * OPS_PER_SEC).min(OPS_PER_SEC * 2.0);
                        refill_at = now;
                        if tokens < 1.0 {
                            refused_ops += 1;
                            if refused_ops > 100 {
                                close = Some((close_code::POLICY, "too many operations"));
                                break;
                            }
                            vec![error_text(None, "rate_limited", "too many operations; slow down")]
                        } else {
                            tokens -= 1.0;
                            handle_op(&app, &sub, &claims, &mut subs, &mut endings, text.as_str()).await
                        }
                    }
                    Some(Ok(Message::Binary(_))) => vec![error_text(None, "invalid_request", "frames must be JSON text")],
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Vec::new(),
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(e)) => {
                        // Oversized frames and protocol errors end here.
                        tracing::debug!(conn = id, error = %e, "websocket read failed");
                        close = Some((close_code::SIZE, "frame too large or malformed"));
                        break;
                    }
                }
            }
            Some(frame) = queue.recv() => match order_feed_access(&claims, &frame) {
                FeedAccess::Keep => render(&mut subs, &frame).into_iter().collect(),
                FeedAccess::EndsSoon => {
                    endings.entry(frame.topic.to_string()).or_insert_with(|| Instant::now() + app.ws.finished_grace);
                    render(&mut subs, &frame).into_iter().collect()
                }
                FeedAccess::Lost => end_subscription(&app, &sub, &mut subs, &frame.topic, "not_found", "you no longer have access to this order"),
            },
            _ = &mut token_expiry, if expires.is_some() => {
                close = Some((TOKEN_EXPIRED, "the token expired"));
                break;
            }
            _ = sub.wake.notified() => sub.take_latest().iter().filter_map(|f| render(&mut subs, f)).collect(),
            _ = sub.kill.notified() => break,
            _ = shutdown.changed() => {
                close = Some((close_code::AWAY, "the server is shutting down"));
                break;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > SILENT_LIMIT {
                    app.ws.closed_silent.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                if tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Ping(Vec::new().into()))).await.is_err() {
                    break;
                }
                Vec::new()
            }
        };
        let mut failed = false;
        for text in out {
            // A client that stops reading blocks this send; its queue then overflows, which
            // ends the wait at once.
            let sent = tokio::select! {
                r = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))) => matches!(r, Ok(Ok(()))),
                _ = sub.kill.notified() => false,
            };
            if !sent {
                failed = true;
                break;
            }
            app.ws.frames_sent.fetch_add(1, Ordering::Relaxed);
        }
        if failed {
            break;
        }
    }
    if sub.overflowed.load(Ordering::Relaxed) {
        app.ws.closed_slow.fetch_add(1, Ordering::Relaxed);
        close = Some((close_code::AGAIN, "too slow: the client fell too far behind"));
    }
    for topic in subs.keys() {
        feeds.unsubscribe(topic, id);
    }
    if let Some((code, reason)) = close {
        let frame = CloseFrame { code, reason: reason.into() };
        let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(Some(frame)))).await;
    }
}

/// What an order's status frame means for a subscriber's access to the order's feed.
enum FeedAccess {
    Keep,
    /// The order is finished: its customer and rider keep the feed for a grace period.
    EndsSoon,
    /// The subscriber is no longer a party to the order (a rider it was taken from).
    Lost,
}

/// Re-checks access on an order's status frame (the order as it now is). Other frames keep going.
fn order_feed_access(claims: &Option<Claims>, frame: &Frame) -> FeedAccess {
    let (Some(c), Some(Feed::Order(_)), "status") = (claims, Feed::parse(&frame.topic), frame.kind) else {
        return FeedAccess::Keep;
    };
    if c.role == Role::Admin || c.role == Role::Staff {
        // Staff of the store stay parties to its orders; the store never changes.
        return FeedAccess::Keep;
    }
    let Ok(order) = serde_json::from_str::<Value>(&frame.data) else { return FeedAccess::Keep };
    let party = match c.role {
        Role::Customer => order["customer_id"] == c.sub.as_str(),
        _ => order["rider_id"] == c.sub.as_str(),
    };
    let finished = matches!(order["status"].as_str(), Some("delivered" | "cancelled" | "expired"));
    match (party, finished) {
        (false, _) => FeedAccess::Lost,
        (true, true) => FeedAccess::EndsSoon,
        (true, false) => FeedAccess::Keep,
    }
}

/// Ends one subscription with an error message saying why.
fn end_subscription(
    app: &AppRef,
    sub: &Arc<Subscriber>,
    subs: &mut HashMap<String, u64>,
    topic: &str,
    error: &str,
    message: &str,
) -> Vec<String> {
    app.feeds.unsubscribe(topic, sub.id);
    if subs.remove(topic).is_none() {
        return Vec::new();
    }
    vec![error_text(Some(topic), error, message)]
}

/// The text for a frame on a topic still subscribed, with its next seq.
fn render(subs: &mut HashMap<String, u64>, frame: &Frame) -> Option<String> {
    let seq = subs.get_mut(&*frame.topic)?;
    *seq += 1;
    Some(frame_text(&frame.topic, frame.kind, *seq, &frame.data))
}

async fn handle_op(
    app: &AppRef,
    sub: &Arc<Subscriber>,
    claims: &Option<Claims>,
    subs: &mut HashMap<String, u64>,
    endings: &mut HashMap<String, Instant>,
    text: &str,
) -> Vec<String> {
    let op: Op = match serde_json::from_str(text) {
        Ok(op) => op,
        Err(e) => return vec![error_text(None, "invalid_request", &format!("malformed op: {e}"))],
    };
    let Some(topic) = op.topic else {
        return vec![error_text(None, "invalid_request", "an op needs a topic")];
    };
    match op.op.as_str() {
        "subscribe" => {
            if !subs.contains_key(&topic) && subs.len() >= MAX_SUBSCRIPTIONS {
                return vec![error_text(
                    Some(&topic),
                    "too_many_subscriptions",
                    "at most 64 subscriptions a connection",
                )];
            }
            if op.batch && !matches!(Feed::parse(&topic), Some(Feed::Store(_) | Feed::Riders)) {
                return vec![error_text(
                    Some(&topic),
                    "invalid_request",
                    "batch applies to the store/{id} and riders feeds (an order's feed follows one rider)",
                )];
            }
            if let Err(r) = authorize(app, claims, &topic).await {
                let (code, message) = match r {
                    Refusal::Forbidden => ("forbidden", "this topic is outside your role or store"),
                    Refusal::NotFound => ("not_found", "no such order, store or cell"),
                    Refusal::Invalid(m) => ("invalid_request", m),
                    Refusal::Unavailable => ("unavailable", "the service is temporarily unavailable; try again"),
                };
                return vec![error_text(Some(&topic), code, message)];
            }
            // Register first, then snapshot: what changes meanwhile arrives after the snapshot.
            app.feeds.subscribe(&topic, sub, op.batch);
            subs.insert(topic.clone(), 0);
            let data = snapshot(app, claims, &topic).await;
            // An order already finished: its customer or rider keeps the feed for the grace period.
            endings.remove(&topic);
            let finished = matches!(data["order"]["status"].as_str(), Some("delivered" | "cancelled" | "expired"));
            if finished && claims.as_ref().is_some_and(|c| matches!(c.role, Role::Customer | Role::Rider)) {
                endings.insert(topic.clone(), Instant::now() + app.ws.finished_grace);
            }
            vec![frame_text(&topic, "snapshot", 0, &data.to_string())]
        }
        "unsubscribe" => {
            app.feeds.unsubscribe(&topic, sub.id);
            endings.remove(&topic);
            match subs.remove(&topic) {
                Some(seq) => vec![frame_text(&topic, "unsubscribed", seq + 1, "null")],
                None => vec![error_text(Some(&topic), "not_subscribed", "not subscribed to this topic")],
            }
        }
        other => vec![error_text(
            Some(&topic),
            "invalid_request",
            &format!("unknown op {other:?}: use subscribe or unsubscribe"),
        )],
    }
}

async fn authorize(app: &AppRef, claims: &Option<Claims>, topic: &str) -> Result<(), Refusal> {
    let role = claims.as_ref().map(|c| c.role);
    match Feed::parse(topic).ok_or(Refusal::Invalid(FEEDS_HELP))? {
        Feed::Order(order_id) => {
            let c = claims.as_ref().ok_or(Refusal::Forbidden)?;
            let order = app.state.find_order(order_id).await.map_err(|e| {
                tracing::warn!(error = %e, "order feed refused: the database did not answer");
                Refusal::Unavailable
            })?;
            let order = order.ok_or(Refusal::NotFound)?;
            let o = order.lock().await;
            order_access(c, &o)
                .map_err(|e| if e.status.as_u16() == 404 { Refusal::NotFound } else { Refusal::Forbidden })
        }
        Feed::Store(store_id) => {
            let c = claims.as_ref().ok_or(Refusal::Forbidden)?;
            let ok = c.role == Role::Admin || (c.role == Role::Staff && c.store.as_deref() == Some(store_id));
            if !ok {
                return Err(Refusal::Forbidden);
            }
            app.state.store(store_id).map(|_| ()).ok_or(Refusal::NotFound)
        }
        Feed::Availability(cell) => {
            let cell: h3o::CellIndex = cell.parse().map_err(|_| Refusal::Invalid("not an H3 cell"))?;
            if cell.resolution() != darkstore_geoinv::area::CELL_RESOLUTION {
                return Err(Refusal::Invalid("availability cells are H3 resolution 9"));
            }
            Ok(())
        }
        Feed::Riders if role == Some(Role::Admin) => Ok(()),
        Feed::Riders => Err(Refusal::Forbidden),
    }
}

/// The first message of a subscription: the topic's current state.
/// A topic's snapshot (in cluster mode, possibly the owner's: `ws_cluster`).
async fn snapshot(app: &AppRef, claims: &Option<Claims>, topic: &str) -> Value {
    super::ws_cluster::snapshot(app, claims, topic).await
}

pub(super) async fn local_snapshot(app: &AppRef, claims: &Option<Claims>, topic: &str) -> Value {
    let state = &app.state;
    let promise = state.promise_ms();
    match Feed::parse(topic) {
        Some(Feed::Order(order_id)) => {
            let Some(order) = state.find_order(order_id).await.ok().flatten() else { return Value::Null };
            let o = order.lock().await.clone();
            // The rider's position only while it carries the order, and nothing of its other work.
            let carrying = matches!(o.status, OrderStatus::Assigned | OrderStatus::PickedUp);
            let rider = o
                .rider_id
                .as_ref()
                .filter(|_| carrying)
                .and_then(|r| app.riders.get(r))
                .filter(|r| r.task.as_ref().is_some_and(|t| t.holds(&o.id)))
                .map(|r| views::rider_position_json(&r));
            // Its customer's snapshot carries the delivery code; the frames after it never do.
            let order = match claims {
                Some(c) => views::order_json_for(&o, promise, (c.role, &c.sub)),
                None => views::order_json(&o, promise),
            };
            let order = crate::http::orders::with_eta(app, &o, order);
            json!({"order": order, "rider": rider})
        }
        Some(Feed::Store(store_id)) => {
            let Some(store) = state.store(store_id) else { return Value::Null };
            let since = state.now() - 3_600_000;
            let mut orders = Vec::new();
            for o in state.orders_of_store(store_id).await {
                if !o.status.is_final() || o.updated_at >= since || o.created_at >= since {
                    orders.push(crate::http::orders::with_eta(app, &o, views::order_json(&o, promise)));
                }
            }
            let stock: Vec<Value> = state
                .stock_lines(&store)
                .iter()
                .map(|l| views::line_json(l, state.product(&l.sku).as_deref()))
                .collect();
            let riders: Vec<Value> = app.riders.all(Some(store_id)).iter().map(views::rider_json).collect();
            json!({
                "store": {"id": store.id, "name": store.name, "lat": store.lat, "lng": store.lng},
                "promise_minutes": promise / 60_000,
                "area": app.dispatcher.area_of(store.idx.0).map(|a| views::area_json(&a)),
                "orders": orders,
                "stock": stock,
                "riders": riders,
            })
        }
        Some(Feed::Availability(cell)) => {
            let Ok(c) = cell.parse::<h3o::CellIndex>() else { return Value::Null };
            let centre = h3o::LatLng::from(c);
            let Ok(page) = state.availability(centre.lat(), centre.lng(), None, None, 1000) else {
                return Value::Null;
            };
            let items: Vec<Value> = page.items.iter().map(|i| views::item_json(&i.product, i.available)).collect();
            json!({"serviceable": page.store_id.is_some(), "store_id": page.store_id, "eta_minutes": page.eta_minutes, "items": items})
        }
        Some(Feed::Riders) => json!({"riders": app.riders.all(None).iter().map(views::rider_json).collect::<Vec<_>>()}),
        None => Value::Null,
    }
}
