//! A living city that drives a running darkstore over its real interfaces.
//!
//! - **Riders** (one MQTT connection each, authenticated with their own rider token): come on
//!   shift near their store, publish a position every second, follow the tasks they receive (to
//!   the store, pick up, each drop-off in order) and send the events.
//! - **Customers**: arrive as a Poisson process; each asks for availability, orders one to three
//!   available items with an idempotency key, and follows its order on `order/{id}` over
//!   WebSocket until it is delivered.
//!   With `cancel_rate`, that share of customers cancel their order at a random point of its life
//!   (right after placing, once packed, once assigned, or after pickup, when the server must
//!   refuse); every successful cancel of an assigned order is audited a second later: the rider
//!   it was assigned to must no longer hold it.
//! - **Staff** (one WebSocket per store): mark confirmed orders packed after the picking time, and
//!   restock lines that run low.
//!
//! Arrivals are scheduled on a fixed timeline and latency is measured from each arrival's
//! intended time, so a stalled server cannot hide behind a slower request rate. `speedup` makes
//! riders move and staff pick that many times faster than real time; times inside the city
//! (click-to-door, time to assignment) are reported in simulated time (real × speedup).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use darkstore_auth::{Claims, Role, sign};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// `http://HOST:PORT`
    pub server: String,
    /// `mqtt://HOST:PORT`
    pub mqtt: String,
    pub riders: usize,
    /// Customer orders per second (real time).
    pub order_rate: f64,
    /// How long customers keep arriving (real time).
    pub duration: Duration,
    /// How long to wait afterwards for orders in flight to be delivered.
    pub drain: Duration,
    pub speedup: f64,
    /// The server's token secret: the simulator signs its own riders', customers' and staff tokens.
    pub jwt_secret: String,
    /// Simulated seconds staff take to pick an order.
    pub picking_secs: f64,
    /// Rider speed on the road, metres per simulated second.
    pub rider_speed_mps: f64,
    /// Draw a progress line on stderr.
    pub progress: bool,
    /// Share of orders (0 to 1) their customers cancel.
    pub cancel_rate: f64,
    /// Seed of the simulator's random choices.
    pub seed: u64,
}

impl RunConfig {
    pub fn new(server: &str, mqtt: &str, jwt_secret: &str) -> RunConfig {
        RunConfig {
            server: server.trim_end_matches('/').to_owned(),
            mqtt: mqtt.to_owned(),
            riders: 20,
            order_rate: 1.0,
            duration: Duration::from_secs(30),
            drain: Duration::from_secs(60),
            speedup: 1.0,
            jwt_secret: jwt_secret.to_owned(),
            picking_secs: 90.0,
            rider_speed_mps: 5.0,
            progress: false,
            cancel_rate: 0.0,
            seed: 0x5eed,
        }
    }
}

/// Latency summary, milliseconds (or minutes where the field says so).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Dist {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Dist {
    fn of(h: &Histogram<u64>, scale: f64) -> Dist {
        if h.is_empty() {
            return Dist::default();
        }
        Dist {
            count: h.len(),
            p50: h.value_at_quantile(0.5) as f64 * scale,
            p90: h.value_at_quantile(0.9) as f64 * scale,
            p99: h.value_at_quantile(0.99) as f64 * scale,
            p999: h.value_at_quantile(0.999) as f64 * scale,
            max: h.max() as f64 * scale,
            mean: h.mean() * scale,
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub placed: u64,
    pub delivered: u64,
    /// Orders placed and neither delivered nor cancelled by the end of the run.
    pub undelivered: u64,
    /// Orders their customers cancelled (the server said 200).
    pub cancelled: u64,
    /// Cancels the server refused because the order was already picked up (409).
    pub cancel_refused: u64,
    /// Times a rider was found holding a cancelled order: on the server a second after the
    /// cancel, on the server at the end, or in the rider app's own route at the end. Must be 0.
    pub stranded_riders: u64,
    pub insufficient_stock: u64,
    pub not_serviceable: u64,
    pub oversold: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Orders that got a 201 and that the server knows at the end (must equal `placed`).
    pub accounted: u64,
    /// Delivered orders whose observed statuses were out of lifecycle order.
    pub lifecycle_violations: u64,
    pub delivered_within_promise_pct: f64,
    /// Delivered orders that arrived at or before their `promised_by` (the quote they were
    /// placed under), percent.
    pub on_time_pct: f64,
    /// Delivered − `promised_by`, simulated seconds (negative: early): median and 90th percentile.
    pub promise_error_p50_s: f64,
    pub promise_error_p90_s: f64,
    pub order_latency_ms: Dist,
    pub availability_latency_ms: Dist,
    /// Simulated seconds from placement to assignment.
    pub time_to_assignment_s: Dist,
    /// Simulated minutes from placement to delivery.
    pub click_to_door_min: Dist,
    pub gps_to_ws_ms: Dist,
    pub positions_published: u64,
    pub tasks_received: u64,
    pub duration_s: f64,
    pub speedup: f64,
}

struct Stats {
    placed: AtomicU64,
    delivered: AtomicU64,
    cancelled: AtomicU64,
    cancel_refused: AtomicU64,
    stranded: AtomicU64,
    cancelled_ids: Mutex<std::collections::HashSet<String>>,
    rider_ids: Mutex<Vec<String>>,
    insufficient: AtomicU64,
    not_serviceable: AtomicU64,
    violations: AtomicU64,
    within_promise: AtomicU64,
    on_time: AtomicU64,
    promise_errors_s: Mutex<Vec<f64>>,
    positions: AtomicU64,
    tasks: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    order_ms: Mutex<Histogram<u64>>,
    avail_ms: Mutex<Histogram<u64>>,
    assign_s: Mutex<Histogram<u64>>,
    c2d_s: Mutex<Histogram<u64>>,
    gps_ms: Mutex<Histogram<u64>>,
    placed_ids: Mutex<Vec<String>>,
}

impl Stats {
    fn new() -> Stats {
        let h = || Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"));
        Stats {
            placed: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            cancel_refused: AtomicU64::new(0),
            stranded: AtomicU64::new(0),
            cancelled_ids: Mutex::new(std::collections::HashSet::new()),
            rider_ids: Mutex::new(Vec::new()),
            insufficient: AtomicU64::new(0),
            not_serviceable: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            within_promise: AtomicU64::new(0),
            on_time: AtomicU64::new(0),
            promise_errors_s: Mutex::new(Vec::new()),
            positions: AtomicU64::new(0),
            tasks: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            order_ms: h(),
            avail_ms: h(),
            assign_s: h(),
            c2d_s: h(),
            gps_ms: h(),
            placed_ids: Mutex::new(Vec::new()),
        }
    }

    fn error(&self, kind: impl Into<String>) {
        *self.errors.lock().expect("errors lock").entry(kind.into()).or_default() += 1;
    }

    fn record(&self, h: &Mutex<Histogram<u64>>, v: f64) {
        let _ = h.lock().expect("histogram lock").record(v.max(1.0) as u64);
    }
}

/// A small deterministic generator (xorshift), seeded through splitmix64 so that small seeds do
/// not start with a run of tiny numbers.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e3779b97f4a7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone)]
struct Store {
    id: String,
    lat: f64,
    lng: f64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn parse_time(s: &str) -> Option<i64> {
    humantime::parse_rfc3339_weak(s).ok()?.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_millis() as i64)
}

/// Metres to degrees near a latitude: (dlat, dlng).
fn offset(lat: f64, north_m: f64, east_m: f64) -> (f64, f64) {
    (north_m / 111_195.0, east_m / (111_195.0 * lat.to_radians().cos()))
}

fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let dy = (b.0 - a.0) * 111_195.0;
    let dx = (b.1 - a.1) * 111_195.0 * a.0.to_radians().cos();
    (dx * dx + dy * dy).sqrt()
}

struct Ctx {
    cfg: RunConfig,
    http: reqwest::Client,
    stats: Stats,
    stop: AtomicBool,
    exp: i64,
}

impl Ctx {
    fn token(&self, role: Role, sub: &str, store: Option<&str>) -> String {
        sign(
            self.cfg.jwt_secret.as_bytes(),
            &Claims { sub: sub.into(), role, store: store.map(Into::into), exp: self.exp },
        )
    }

    fn ws_url(&self, token: &str) -> String {
        format!("{}/v1/ws?token={token}", self.cfg.server.replace("http://", "ws://"))
    }

    /// Real duration of `sim_secs` simulated seconds.
    fn real(&self, sim_secs: f64) -> Duration {
        Duration::from_secs_f64((sim_secs / self.cfg.speedup).max(0.0))
    }
}

/// Runs the city against the server and returns the report. A server that is unreachable at the
/// start is an error; one that fails later shows up in the report's errors.
pub async fn run(cfg: RunConfig) -> Result<Report, String> {
    let valid = cfg.speedup > 0.0 && cfg.speedup.is_finite() && cfg.order_rate >= 0.0 && cfg.order_rate.is_finite();
    if !valid {
        return Err("--speedup must be positive and --order-rate at least 0".into());
    }
    if !(0.0..=1.0).contains(&cfg.cancel_rate) {
        return Err("--cancel-rate must be between 0 and 1".into());
    }
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
    let ctx = Arc::new(Ctx {
        cfg,
        http,
        stats: Stats::new(),
        stop: AtomicBool::new(false),
        exp: now_ms() / 1000 + 7 * 86_400,
    });
    let admin = ctx.token(Role::Admin, "darkstore-sim", None);
    let stores: Vec<Store> = {
        let r = ctx
            .http
            .get(format!("{}/v1/stores", ctx.cfg.server))
            .bearer_auth(&admin)
            .send()
            .await
            .map_err(|e| format!("cannot reach the server at {}: {e}", ctx.cfg.server))?;
        if !r.status().is_success() {
            return Err(format!(
                "the server refused the simulator's admin token ({}): is --jwt-secret the server's?",
                r.status()
            ));
        }
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        v["stores"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| {
                        Some(Store {
                            id: s["id"].as_str()?.to_owned(),
                            lat: s["lat"].as_f64()?,
                            lng: s["lng"].as_f64()?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    if stores.is_empty() {
        return Err("the server has no stores: seed a city first (darkstore demo loads one)".into());
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    // Staff.
    for store in &stores {
        tasks.push(tokio::spawn(staff(ctx.clone(), store.clone())));
    }
    // Riders.
    for i in 0..ctx.cfg.riders {
        let store = stores[i % stores.len()].clone();
        // Ids carry the seed, so two simulators on one server (the demo's and a load test) do not
        // drive the same riders.
        let id = format!("sim{:04x}-rider-{i}", ctx.cfg.seed & 0xffff);
        let r = ctx
            .http
            .put(format!("{}/v1/riders/{id}", ctx.cfg.server))
            .bearer_auth(&admin)
            .json(&json!({"name": format!("Sim rider {i}"), "store_id": store.id}))
            .send()
            .await;
        if !matches!(&r, Ok(r) if r.status().is_success()) {
            ctx.stats.error("rider_registration");
            continue;
        }
        ctx.stats.rider_ids.lock().expect("rider ids lock").push(id.clone());
        tasks.push(tokio::spawn(rider(ctx.clone(), id, store, ctx.cfg.seed ^ (i as u64 + 1))));
    }
    // Customers on a fixed Poisson timeline.
    let mut rng = Rng::new(ctx.cfg.seed);
    let mut customers = Vec::new();
    let progress = ctx.cfg.progress.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(250));
        bar
    });
    let mut next = Duration::ZERO;
    let mut n = 0u64;
    loop {
        if ctx.cfg.order_rate <= 0.0 {
            break;
        }
        next += Duration::from_secs_f64(-rng.unit().max(1e-12).ln() / ctx.cfg.order_rate);
        if next >= ctx.cfg.duration {
            break;
        }
        let intended = started + next;
        tokio::time::sleep_until(intended.into()).await;
        n += 1;
        let store = stores[(rng.unit() * stores.len() as f64) as usize % stores.len()].clone();
        let (dist, bearing) = (200.0 + rng.unit() * 1200.0, rng.unit() * std::f64::consts::TAU);
        let (dlat, dlng) = offset(store.lat, dist * bearing.cos(), dist * bearing.sin());
        let point = (store.lat + dlat, store.lng + dlng);
        // Which customers cancel, and when: (the status after which they do).
        let cancel_after = (rng.unit() < ctx.cfg.cancel_rate)
            .then(|| CANCEL_POINTS[(rng.unit() * CANCEL_POINTS.len() as f64) as usize % CANCEL_POINTS.len()]);
        customers.push(tokio::spawn(customer(ctx.clone(), n, point, intended, rng.unit(), cancel_after)));
        if let Some(bar) = &progress {
            bar.set_message(format!(
                "{:>5.0}s  placed {}  delivered {}  positions {}  errors {}",
                started.elapsed().as_secs_f64(),
                ctx.stats.placed.load(Ordering::Relaxed),
                ctx.stats.delivered.load(Ordering::Relaxed),
                ctx.stats.positions.load(Ordering::Relaxed),
                ctx.stats.errors.lock().map(|e| e.values().sum::<u64>()).unwrap_or(0),
            ));
        }
    }
    // Arrivals are over: wait for orders in flight, up to the drain time.
    let deadline = Instant::now() + ctx.cfg.drain;
    for c in customers {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, c).await;
    }
    ctx.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    // Audit against the server: every 201 is known there, and no line is oversold.
    let mut accounted = 0;
    let placed_ids = ctx.stats.placed_ids.lock().expect("ids lock").clone();
    for id in placed_ids {
        match audit_get(&ctx, &format!("/v1/orders/{id}"), &admin).await {
            Ok(r) if r.status().is_success() => accounted += 1,
            Ok(r) => ctx.stats.error(format!("audit_{}", r.status().as_u16())),
            Err(_) => ctx.stats.error("audit_unreachable"),
        }
    }
    let mut oversold = 0;
    for store in &stores {
        let r = audit_get(&ctx, &format!("/v1/stores/{}/stock", store.id), &admin).await;
        match r {
            Ok(r) if r.status().is_success() => {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                for l in v["lines"].as_array().into_iter().flatten() {
                    let (on_hand, reserved, available) = (
                        l["on_hand"].as_i64().unwrap_or(0),
                        l["reserved"].as_i64().unwrap_or(0),
                        l["available"].as_i64().unwrap_or(0),
                    );
                    if available < 0 || reserved > on_hand || on_hand < 0 {
                        oversold += 1;
                    }
                }
            }
            _ => ctx.stats.error("audit_stock"),
        }
    }
    // No rider may be left holding a cancelled order.
    let cancelled_ids = ctx.stats.cancelled_ids.lock().expect("cancelled lock").clone();
    if !cancelled_ids.is_empty() {
        let rider_ids = ctx.stats.rider_ids.lock().expect("rider ids lock").clone();
        for id in rider_ids {
            match audit_get(&ctx, &format!("/v1/riders/{id}"), &admin).await {
                Ok(r) if r.status().is_success() => {
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    let held = v["task"]["orders"].as_array().into_iter().flatten().filter_map(Value::as_str);
                    let stranded = held.filter(|o| cancelled_ids.contains(*o)).count() as u64;
                    ctx.stats.stranded.fetch_add(stranded, Ordering::Relaxed);
                }
                _ => ctx.stats.error("audit_rider"),
            }
        }
    }
    let s = &ctx.stats;
    let placed = s.placed.load(Ordering::Relaxed);
    let delivered = s.delivered.load(Ordering::Relaxed);
    let cancelled = s.cancelled.load(Ordering::Relaxed);
    // Taken out first: a lock inside the report's literal would live to its end.
    let promise_errors = s.promise_errors_s.lock().expect("errors lock").clone();
    let errors_by_kind = s.errors.lock().expect("errors lock").clone();
    Ok(Report {
        placed,
        delivered,
        undelivered: placed.saturating_sub(delivered + cancelled),
        cancelled,
        cancel_refused: s.cancel_refused.load(Ordering::Relaxed),
        stranded_riders: s.stranded.load(Ordering::Relaxed),
        insufficient_stock: s.insufficient.load(Ordering::Relaxed),
        not_serviceable: s.not_serviceable.load(Ordering::Relaxed),
        oversold,
        errors: errors_by_kind.values().sum(),
        errors_by_kind,
        accounted,
        lifecycle_violations: s.violations.load(Ordering::Relaxed),
        delivered_within_promise_pct: if delivered > 0 {
            100.0 * s.within_promise.load(Ordering::Relaxed) as f64 / delivered as f64
        } else {
            0.0
        },
        on_time_pct: if delivered > 0 {
            100.0 * s.on_time.load(Ordering::Relaxed) as f64 / delivered as f64
        } else {
            0.0
        },
        promise_error_p50_s: quantile(&promise_errors, 0.5),
        promise_error_p90_s: quantile(&promise_errors, 0.9),
        order_latency_ms: Dist::of(&s.order_ms.lock().expect("h"), 1.0),
        availability_latency_ms: Dist::of(&s.avail_ms.lock().expect("h"), 1.0),
        time_to_assignment_s: Dist::of(&s.assign_s.lock().expect("h"), 1.0 / 1000.0),
        click_to_door_min: Dist::of(&s.c2d_s.lock().expect("h"), 1.0 / 60_000.0),
        gps_to_ws_ms: Dist::of(&s.gps_ms.lock().expect("h"), 1.0),
        positions_published: s.positions.load(Ordering::Relaxed),
        tasks_received: s.tasks.load(Ordering::Relaxed),
        duration_s: started.elapsed().as_secs_f64(),
        speedup: ctx.cfg.speedup,
    })
}

/// The `q` quantile of `xs` (nearest rank), 0 when empty.
fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

/// A GET for the final audit, waiting out the server's rate limit (the audit is a burst).
async fn audit_get(ctx: &Ctx, path: &str, token: &str) -> Result<reqwest::Response, reqwest::Error> {
    let mut tries = 0;
    loop {
        let r = ctx.http.get(format!("{}{path}", ctx.cfg.server)).bearer_auth(token).send().await?;
        if r.status().as_u16() != 429 || tries >= 30 {
            return Ok(r);
        }
        tries += 1;
        let wait = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

/// The points of an order's life after which a cancelling customer cancels (the status it has
/// just seen). After pickup the server refuses.
const CANCEL_POINTS: [&str; 4] = ["confirmed", "packed", "assigned", "picked_up"];

const LIFECYCLE: [&str; 6] = ["pending_payment", "confirmed", "packed", "assigned", "picked_up", "delivered"];

fn rank(status: &str) -> Option<usize> {
    LIFECYCLE.iter().position(|s| *s == status)
}

/// Cancels an order as its customer; a successful cancel of an order a rider held is audited a
/// second later: that rider must no longer hold it.
async fn cancel(ctx: &Arc<Ctx>, token: &str, id: &str, rider: Option<String>) {
    let s = &ctx.stats;
    let r = ctx.http.post(format!("{}/v1/orders/{id}/cancel", ctx.cfg.server)).bearer_auth(token).send().await;
    match r {
        Ok(r) if r.status().is_success() => {
            s.cancelled.fetch_add(1, Ordering::Relaxed);
            s.cancelled_ids.lock().expect("cancelled lock").insert(id.to_owned());
            let Some(rider) = rider else { return };
            let (ctx, id) = (ctx.clone(), id.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let admin = ctx.token(Role::Admin, "darkstore-sim", None);
                let Ok(r) = audit_get(&ctx, &format!("/v1/riders/{rider}"), &admin).await else {
                    return ctx.stats.error("audit_rider");
                };
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if v["task"]["orders"].as_array().into_iter().flatten().any(|o| o.as_str() == Some(id.as_str())) {
                    ctx.stats.stranded.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // Too late: the order was picked up.
        Ok(r) if r.status().as_u16() == 409 => {
            s.cancel_refused.fetch_add(1, Ordering::Relaxed);
        }
        Ok(r) => s.error(format!("cancel_{}", r.status().as_u16())),
        Err(_) => s.error("cancel_unreachable"),
    }
}

async fn customer(
    ctx: Arc<Ctx>,
    n: u64,
    point: (f64, f64),
    intended: Instant,
    pick: f64,
    mut cancel_after: Option<&'static str>,
) {
    let s = &ctx.stats;
    let token = ctx.token(Role::Customer, &format!("sim{:04x}-customer-{n}", ctx.cfg.seed & 0xffff), None);
    let url = format!("{}/v1/availability?lat={}&lng={}&limit=50", ctx.cfg.server, point.0, point.1);
    let avail: Value = match ctx.http.get(url).send().await {
        Ok(r) if r.status().is_success() => {
            s.record(&s.avail_ms, intended.elapsed().as_secs_f64() * 1000.0);
            r.json().await.unwrap_or(Value::Null)
        }
        Ok(r) => return s.error(format!("availability_{}", r.status().as_u16())),
        Err(_) => return s.error("availability_unreachable"),
    };
    let items: Vec<&Value> = avail["items"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    if avail["serviceable"] != true || items.is_empty() {
        s.not_serviceable.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let n_lines = 1 + (pick * 3.0) as usize % 3;
    let start = (pick * items.len() as f64) as usize % items.len();
    let lines: Vec<Value> = (0..n_lines.min(items.len()))
        .map(|i| json!({"sku": items[(start + i * 7) % items.len()]["sku"], "qty": 1}))
        .collect::<Vec<_>>();
    let mut lines = lines;
    lines.sort_by(|a, b| a["sku"].as_str().cmp(&b["sku"].as_str()));
    lines.dedup_by(|a, b| a["sku"] == b["sku"]);
    let sent = Instant::now();
    let r = ctx
        .http
        .post(format!("{}/v1/orders", ctx.cfg.server))
        .bearer_auth(&token)
        .header("idempotency-key", format!("sim{:04x}-{n}", ctx.cfg.seed & 0xffff))
        .json(&json!({"lat": point.0, "lng": point.1, "lines": lines}))
        .send()
        .await;
    let order: Value = match r {
        Ok(r) if r.status().as_u16() == 201 => {
            s.record(&s.order_ms, sent.elapsed().as_secs_f64() * 1000.0);
            r.json().await.unwrap_or(Value::Null)
        }
        Ok(r) if r.status().as_u16() == 409 => {
            s.insufficient.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ok(r) if r.status().as_u16() == 422 => {
            s.not_serviceable.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ok(r) => return s.error(format!("order_{}", r.status().as_u16())),
        Err(_) => return s.error("order_unreachable"),
    };
    let Some(id) = order["id"].as_str().map(str::to_owned) else { return s.error("order_without_id") };
    s.placed.fetch_add(1, Ordering::Relaxed);
    s.placed_ids.lock().expect("ids lock").push(id.clone());
    let created = order["created_at"].as_str().and_then(parse_time).unwrap_or_else(now_ms);
    // Follow the order to its door.
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(ctx.ws_url(&token)).await else {
        return s.error("ws_connect");
    };
    let topic = format!("order/{id}");
    if ws.send(Message::Text(json!({"op": "subscribe", "topic": topic}).to_string().into())).await.is_err() {
        return s.error("ws_send");
    }
    let mut statuses: Vec<String> = Vec::new();
    let mut last_seq = None;
    let mut assigned_at = None;
    let mut last_position_ts = i64::MIN;
    let follow_until = Instant::now() + ctx.cfg.duration + ctx.cfg.drain;
    while Instant::now() < follow_until {
        let msg = match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) | Err(_) => continue,
            Ok(None) | Ok(Some(Err(_))) => return s.error("ws_closed"),
        };
        let v: Value = serde_json::from_str(&msg).unwrap_or(Value::Null);
        if v["topic"] != topic.as_str() {
            continue;
        }
        if let (Some(prev), Some(seq)) = (last_seq, v["seq"].as_u64())
            && seq != prev + 1
        {
            s.error("ws_seq_gap");
        }
        last_seq = v["seq"].as_u64();
        let status = match v["type"].as_str() {
            Some("snapshot") => v["data"]["order"]["status"].as_str(),
            Some("status") => v["data"]["status"].as_str(),
            Some("rider_position") => {
                // Only a position reported while the order is followed measures GPS-to-WebSocket
                // latency. The first frame after assignment carries the rider's last known fix,
                // up to one report interval old; later frames that follow events (status changes)
                // repeat the last position.
                if let Some(ts) = v["data"]["ts"].as_i64()
                    && ts > last_position_ts
                {
                    if last_position_ts != i64::MIN {
                        s.record(&s.gps_ms, (now_ms() - ts) as f64);
                    }
                    last_position_ts = ts;
                }
                None
            }
            Some("error") => return s.error(format!("ws_{}", v["data"]["error"].as_str().unwrap_or("error"))),
            _ => None,
        };
        let Some(status) = status else { continue };
        if statuses.last().map(String::as_str) != Some(status) {
            statuses.push(status.to_owned());
        }
        if cancel_after == Some(status) {
            cancel_after = None;
            let data = if v["type"] == "snapshot" { &v["data"]["order"] } else { &v["data"] };
            let rider = data["rider_id"].as_str().map(str::to_owned);
            cancel(&ctx, &token, &id, rider).await;
        }
        let now = now_ms();
        if status == "assigned" && assigned_at.is_none() {
            assigned_at = Some(now);
            s.record(&s.assign_s, (now - created) as f64 * ctx.cfg.speedup);
        }
        if status == "delivered" {
            let data = if v["type"] == "snapshot" { &v["data"]["order"] } else { &v["data"] };
            let delivered = data["delivered_at"].as_str().and_then(parse_time).unwrap_or(now);
            let c2d_sim = (delivered - created) as f64 * ctx.cfg.speedup;
            s.record(&s.c2d_s, c2d_sim);
            let promise = data["deadline"].as_str().and_then(parse_time).map(|d| d - created).unwrap_or(600_000) as f64;
            if let Some(promised) = data["promised_by"].as_str().and_then(parse_time) {
                if delivered <= promised {
                    s.on_time.fetch_add(1, Ordering::Relaxed);
                }
                let error_s = (delivered - promised) as f64 * ctx.cfg.speedup / 1000.0;
                s.promise_errors_s.lock().expect("errors lock").push(error_s);
            }
            if c2d_sim <= promise {
                s.within_promise.fetch_add(1, Ordering::Relaxed);
            }
            let ranks: Vec<Option<usize>> = statuses.iter().map(|st| rank(st)).collect();
            let in_order = ranks.iter().all(Option::is_some) && ranks.windows(2).all(|w| w[0] < w[1]);
            if !in_order || !statuses.iter().any(|st| st == "picked_up") && statuses.len() > 1 {
                s.violations.fetch_add(1, Ordering::Relaxed);
            }
            s.delivered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if status == "cancelled" || status == "expired" {
            return;
        }
    }
}

async fn staff(ctx: Arc<Ctx>, store: Store) {
    let s = &ctx.stats;
    let token = ctx.token(Role::Staff, &format!("sim-staff-{}", store.id), Some(&store.id));
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(ctx.ws_url(&token)).await else {
        return s.error("staff_ws_connect");
    };
    let topic = format!("store/{}", store.id);
    let _ = ws.send(Message::Text(json!({"op": "subscribe", "topic": topic}).to_string().into())).await;
    let mut restocking: std::collections::HashSet<String> = std::collections::HashSet::new();
    while !ctx.stop.load(Ordering::Relaxed) {
        let msg = match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) | Err(_) => continue,
            Ok(None) | Ok(Some(Err(_))) => return s.error("staff_ws_closed"),
        };
        let v: Value = serde_json::from_str(&msg).unwrap_or(Value::Null);
        match v["type"].as_str() {
            Some("order") if v["data"]["status"] == "confirmed" => {
                let Some(id) = v["data"]["id"].as_str().map(str::to_owned) else { continue };
                let (ctx, token) = (ctx.clone(), token.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(ctx.real(ctx.cfg.picking_secs)).await;
                    let r = ctx
                        .http
                        .post(format!("{}/v1/orders/{id}/packed", ctx.cfg.server))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    match r {
                        // 409: a rider was already assigned and the order left the packing queue.
                        Ok(r) if r.status().is_success() || r.status().as_u16() == 409 => {}
                        Ok(r) => ctx.stats.error(format!("packed_{}", r.status().as_u16())),
                        Err(_) => ctx.stats.error("packed_unreachable"),
                    }
                });
            }
            Some("stock") => {
                let sku = v["data"]["sku"].as_str().unwrap_or_default().to_owned();
                let available = v["data"]["available"].as_i64().unwrap_or(0);
                if available < 5 && restocking.insert(sku.clone()) {
                    let r = ctx
                        .http
                        .post(format!("{}/v1/stores/{}/stock", ctx.cfg.server, store.id))
                        .bearer_auth(&token)
                        .json(&json!({"sku": sku, "delta": 40, "reason": "restock"}))
                        .send()
                        .await;
                    if !matches!(&r, Ok(r) if r.status().is_success()) {
                        s.error("restock");
                    }
                } else if available >= 5 {
                    restocking.remove(&sku);
                }
            }
            _ => {}
        }
    }
}

/// One rider: MQTT connection, shift, positions every second, tasks and events.
async fn rider(ctx: Arc<Ctx>, id: String, store: Store, seed: u64) {
    let s = &ctx.stats;
    let token = ctx.token(Role::Rider, &id, None);
    let hostport = ctx.cfg.mqtt.trim_start_matches("mqtt://").trim_end_matches('/');
    let Some((host, port)) = hostport.rsplit_once(':').and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
    else {
        return s.error("mqtt_url");
    };
    // `{rider}:…`: the embedded broker binds client ids to the token's subject.
    let mut opts = MqttOptions::new(format!("{id}:{}", std::process::id()), host, port);
    opts.set_keep_alive(Duration::from_secs(15));
    opts.set_credentials(id.clone(), token);
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let (tasks_tx, mut tasks_rx) = mpsc::channel::<Value>(16);
    let poller_ctx = ctx.clone();
    let poller = tokio::spawn(async move {
        // A broker that cannot be reached or drops the rider counts once per outage, as
        // `mqtt_connection`; the rider keeps retrying.
        let mut down = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                        let _ = tasks_tx.send(v).await;
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => down = false,
                Ok(_) => {}
                Err(_) => {
                    if !down && !poller_ctx.stop.load(Ordering::Relaxed) {
                        poller_ctx.stats.error("mqtt_connection");
                    }
                    down = true;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    let _ = client.subscribe(format!("riders/{id}/tasks"), QoS::AtLeastOnce).await;
    let _ = client.publish(format!("riders/{id}/shift"), QoS::AtLeastOnce, false, r#"{"on_shift":true}"#).await;
    let mut rng = Rng::new(seed);
    let (dlat, dlng) = offset(store.lat, (rng.unit() - 0.5) * 600.0, (rng.unit() - 0.5) * 600.0);
    let mut pos = (store.lat + dlat, store.lng + dlng);
    // The route: (task, target, what happens there).
    let mut route: Vec<(String, (f64, f64), Stop)> = Vec::new();
    let mut wait_until: Option<Instant> = None;
    // A position a second; faster with a large speedup, so that no report jumps further than the
    // server finds plausible (about 50 m between reports).
    let per_second = (ctx.cfg.speedup * ctx.cfg.rider_speed_mps / 50.0).ceil().max(1.0);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    let step = ctx.cfg.rider_speed_mps * ctx.cfg.speedup / per_second;
    while !ctx.stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => {}
            Some(task) = tasks_rx.recv() => {
                s.tasks.fetch_add(1, Ordering::Relaxed);
                let task_id = task["task_id"].as_str().unwrap_or_default().to_owned();
                let pickup = (task["pickup"]["lat"].as_f64().unwrap_or(store.lat), task["pickup"]["lng"].as_f64().unwrap_or(store.lng));
                let orders: Vec<(String, (f64, f64))> = task["orders"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| Some((o["id"].as_str()?.to_owned(), (o["lat"].as_f64()?, o["lng"].as_f64()?))))
                    .collect();
                if route.iter().any(|(t, _, _)| *t == task_id) {
                    // The task again, changed (an order was cancelled or handed back): keep only
                    // the stops of the orders still on it; none left withdraws it.
                    let first = route.first().cloned();
                    let keep = |o: &String| orders.iter().any(|(id, _)| id == o);
                    for (t, _, stop) in route.iter_mut() {
                        if *t == task_id && let Stop::Store(os) = stop {
                            os.retain(keep);
                        }
                    }
                    route.retain(|(t, _, stop)| *t != task_id || match stop {
                        Stop::Store(os) => !os.is_empty(),
                        Stop::Door(o) => keep(o),
                    });
                    if route.first() != first.as_ref() {
                        wait_until = None;
                    }
                    continue;
                }
                route.push((task_id.clone(), pickup, Stop::Store(orders.iter().map(|o| o.0.clone()).collect())));
                for (oid, at) in orders {
                    route.push((task_id.clone(), at, Stop::Door(oid)));
                }
                continue;
            }
        }
        // Move toward the next stop.
        if let Some((_, target, _)) = route.first().cloned() {
            if wait_until.is_some_and(|w| Instant::now() < w) {
                // Being served at the store or the door.
            } else if let Some(w) = wait_until.take() {
                let _ = w;
                let (_, _, stop) = route.remove(0);
                let events: Vec<(&str, String)> = match &stop {
                    Stop::Store(orders) => orders.iter().map(|o| ("picked_up", o.clone())).collect(),
                    Stop::Door(o) => vec![("delivered", o.clone())],
                };
                for (kind, order_id) in events {
                    let body = json!({"type": kind, "order_id": order_id, "ts": now_ms()}).to_string();
                    if client.publish(format!("riders/{id}/events"), QoS::AtLeastOnce, false, body).await.is_err() {
                        s.error("mqtt_publish");
                    }
                }
            } else {
                let d = distance_m(pos, target);
                if d <= step {
                    pos = target;
                    if let Some((_, _, Stop::Store(orders))) = route.first()
                        && let Some(first) = orders.first()
                    {
                        let body = json!({"type": "arrived_store", "order_id": first, "ts": now_ms()}).to_string();
                        let _ = client.publish(format!("riders/{id}/events"), QoS::AtLeastOnce, false, body).await;
                    }
                    // One simulated minute of service at each stop.
                    wait_until = Some(Instant::now() + ctx.real(60.0));
                } else {
                    let f = step / d;
                    pos = (pos.0 + (target.0 - pos.0) * f, pos.1 + (target.1 - pos.1) * f);
                }
            }
        }
        let body = json!({"lat": pos.0, "lng": pos.1, "ts": now_ms()});
        match client.try_publish(format!("riders/{id}/location"), QoS::AtMostOnce, false, body.to_string()) {
            Ok(()) => {
                s.positions.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => s.error("mqtt_publish"),
        }
    }
    // The app must never be left going for an order its customer cancelled.
    let cancelled = s.cancelled_ids.lock().expect("cancelled lock").clone();
    let stranded = route
        .iter()
        .filter(|(_, _, stop)| match stop {
            Stop::Store(os) => os.iter().any(|o| cancelled.contains(o)),
            Stop::Door(o) => cancelled.contains(o),
        })
        .count();
    s.stranded.fetch_add(stranded as u64, Ordering::Relaxed);
    let _ = client.publish(format!("riders/{id}/shift"), QoS::AtLeastOnce, false, r#"{"on_shift":false}"#).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = client.disconnect().await;
    poller.abort();
}

#[derive(Debug, Clone, PartialEq)]
enum Stop {
    /// Pick up these orders.
    Store(Vec<String>),
    /// Deliver this order.
    Door(String),
}

impl Report {
    /// The report as a person reads it.
    pub fn human(&self) -> String {
        let d = |name: &str, unit: &str, x: &Dist| {
            format!(
                "  {name:<26} p50 {:>8.1}  p99 {:>8.1}  p99.9 {:>8.1}  max {:>8.1} {unit}  (n={})\n",
                x.p50, x.p99, x.p999, x.max, x.count
            )
        };
        let mut out = format!(
            "darkstore-sim: {:.0} s at speedup {}\n  orders placed {}, delivered {}, undelivered {}, insufficient stock {}, not serviceable {}\n  \
             cancelled {}, cancels refused (after pickup) {}, riders left holding a cancelled order {}\n  \
             oversold {}, accounted {} of {}, lifecycle violations {}, delivered within the promise {:.1}%\n  \
             on time (by promised_by) {:.1}%, promise error p50 {:.0} s, p90 {:.0} s (simulated; negative is early)\n  \
             positions published {}, tasks received {}, errors {}\n",
            self.duration_s,
            self.speedup,
            self.placed,
            self.delivered,
            self.undelivered,
            self.insufficient_stock,
            self.not_serviceable,
            self.cancelled,
            self.cancel_refused,
            self.stranded_riders,
            self.oversold,
            self.accounted,
            self.placed,
            self.lifecycle_violations,
            self.delivered_within_promise_pct,
            self.on_time_pct,
            self.promise_error_p50_s,
            self.promise_error_p90_s,
            self.positions_published,
            self.tasks_received,
            self.errors,
        );
        for (kind, n) in &self.errors_by_kind {
            out.push_str(&format!("    {kind}: {n}\n"));
        }
        out.push_str(&d("order placement", "ms", &self.order_latency_ms));
        out.push_str(&d("availability", "ms", &self.availability_latency_ms));
        out.push_str(&d("time to assignment (sim)", "s", &self.time_to_assignment_s));
        out.push_str(&d("click-to-door (sim)", "min", &self.click_to_door_min));
        out.push_str(&d("GPS to WebSocket", "ms", &self.gps_to_ws_ms));
        out
    }
}
