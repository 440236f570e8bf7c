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
//! - **Staff** (one WebSocket per store): `pickers` people per store pick confirmed orders in
//!   turn, each taking the picking time (±25%), mark them packed, and restock lines that run low.
//! - **Demand**: flat, or a compressed day with a lunch and an evening peak.
//!
//! Arrivals are scheduled on a fixed timeline and latency is measured from each arrival's
//! intended time, so a stalled server cannot hide behind a slower request rate. `speedup` makes
//! riders move and staff pick that many times faster than real time; times inside the city
//! (click-to-door, time to assignment) are reported in simulated time (real × speedup).

mod customer;
mod report;
mod rider;
mod staff;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use darkstore_auth::{Claims, Role, sign};
use serde_json::{Value, json};

pub use report::{Dist, Report};

use report::{Stats, quantile};

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
    /// Staff picking at once in each store (orders wait their turn).
    pub pickers: usize,
    /// How arrivals spread over the run.
    pub demand: Demand,
    /// A server with no stores gets a city of this many stores (0: none is seeded, and a server
    /// without stores is an error) …
    pub seed_stores: usize,
    /// … with this many SKUs, each stocked with 200 units in every store.
    pub seed_skus: usize,
}

/// How customer arrivals spread over the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demand {
    /// A constant rate.
    Flat,
    /// The run is one day from 08:00 to 24:00, compressed: a lunch peak about 13:00 and a larger
    /// evening peak about 20:00 over a base, with the same mean rate as `Flat`.
    Peaks,
}

impl Demand {
    /// The rate at a fraction `x` of the run, relative to the mean (mean 1 over [0, 1]).
    pub fn shape(self, x: f64) -> f64 {
        match self {
            Demand::Flat => 1.0,
            Demand::Peaks => Demand::peaks_raw(x) / PEAKS_MEAN,
        }
    }

    fn peaks_raw(x: f64) -> f64 {
        let hour = 8.0 + 16.0 * x.clamp(0.0, 1.0);
        let bump = |at: f64, width: f64| (-((hour - at) / width).powi(2) / 2.0).exp();
        0.4 + 1.2 * bump(13.0, 1.0) + 1.8 * bump(20.0, 1.2)
    }

    /// The highest relative rate (for thinning).
    fn max_shape(self) -> f64 {
        (0..=1000).map(|i| self.shape(f64::from(i) / 1000.0)).fold(0.0, f64::max)
    }
}

/// The mean of `peaks_raw` over [0, 1] (checked numerically by a test).
const PEAKS_MEAN: f64 = 0.926_247;

#[cfg(test)]
mod tests {
    use super::Demand;

    #[test]
    fn demand_curves_keep_the_mean_rate() {
        let n = 100_000;
        for d in [Demand::Flat, Demand::Peaks] {
            let mean: f64 = (0..n).map(|i| d.shape((f64::from(i) + 0.5) / f64::from(n))).sum::<f64>() / f64::from(n);
            assert!((mean - 1.0).abs() < 1e-4, "{d:?}: {mean}");
        }
        // Evening above lunch above the morning.
        let at = |hour: f64| Demand::Peaks.shape((hour - 8.0) / 16.0);
        assert!(at(20.0) > at(13.0) && at(13.0) > at(10.0) * 2.0, "{} {} {}", at(20.0), at(13.0), at(10.0));
    }
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
            pickers: 2,
            demand: Demand::Flat,
            seed_stores: 8,
            seed_skus: 200,
        }
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
    let stores = if stores.is_empty() && ctx.cfg.seed_stores > 0 { seed_city(&ctx, &admin).await? } else { stores };
    if stores.is_empty() {
        return Err("the server has no stores: seed a city first (--stores N, or darkstore demo loads one)".into());
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    // Staff.
    for store in &stores {
        tasks.push(tokio::spawn(staff::staff(ctx.clone(), store.clone())));
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
        tasks.push(tokio::spawn(rider::rider(ctx.clone(), id, store, ctx.cfg.seed ^ (i as u64 + 1))));
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
    let max_shape = ctx.cfg.demand.max_shape();
    loop {
        if ctx.cfg.order_rate <= 0.0 {
            break;
        }
        // A Poisson process at the peak rate, thinned to the demand curve.
        let peak = ctx.cfg.order_rate * max_shape;
        next += Duration::from_secs_f64(-rng.unit().max(1e-12).ln() / peak);
        if next >= ctx.cfg.duration {
            break;
        }
        let x = next.as_secs_f64() / ctx.cfg.duration.as_secs_f64().max(1e-9);
        if rng.unit() * max_shape > ctx.cfg.demand.shape(x) {
            continue;
        }
        let intended = started + next;
        tokio::time::sleep_until(intended.into()).await;
        n += 1;
        let store = stores[(rng.unit() * stores.len() as f64) as usize % stores.len()].clone();
        let (dist, bearing) = (200.0 + rng.unit() * 1200.0, rng.unit() * std::f64::consts::TAU);
        let (dlat, dlng) = offset(store.lat, dist * bearing.cos(), dist * bearing.sin());
        let point = (store.lat + dlat, store.lng + dlng);
        // Which customers cancel, and when: (the status after which they do).
        let cancel_after = (rng.unit() < ctx.cfg.cancel_rate).then(|| {
            customer::CANCEL_POINTS
                [(rng.unit() * customer::CANCEL_POINTS.len() as f64) as usize % customer::CANCEL_POINTS.len()]
        });
        customers.push(tokio::spawn(customer::customer(ctx.clone(), n, point, intended, rng.unit(), cancel_after)));
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
    let eta_errors = s.eta_errors_s.lock().expect("errors lock").clone();
    let fee_levels = s.fees.lock().expect("fees lock").clone();
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
        eta_error_at_pickup_p50_s: quantile(&eta_errors, 0.5),
        eta_error_at_pickup_p90_s: quantile(&eta_errors, 0.9),
        fee_levels,
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

/// A request through the admin API, waiting out the server's rate limit (seeding is a burst).
async fn admin_call(ctx: &Ctx, method: reqwest::Method, path: &str, token: &str, body: Value) -> Result<(), String> {
    for _ in 0..60 {
        let r = ctx
            .http
            .request(method.clone(), format!("{}{path}", ctx.cfg.server))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        if r.status().is_success() {
            return Ok(());
        }
        if r.status().as_u16() != 429 {
            return Err(format!("{method} {path}: {} {}", r.status(), r.text().await.unwrap_or_default()));
        }
        let wait = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
    Err(format!("{method} {path}: still rate limited"))
}

/// Seeds a city through the admin API: `seed_stores` stores 3 km apart on a grid around central
/// Bengaluru, `seed_skus` products in six categories, 200 units of each in every store.
async fn seed_city(ctx: &Arc<Ctx>, admin: &str) -> Result<Vec<Store>, String> {
    const CENTRE: (f64, f64) = (12.9716, 77.5946);
    const CATEGORIES: [&str; 6] = ["fruit_veg", "dairy", "bakery", "staples", "snacks", "household"];
    let (n, m) = (ctx.cfg.seed_stores, ctx.cfg.seed_skus);
    let side = (n as f64).sqrt().ceil() as usize;
    let mut stores = Vec::with_capacity(n);
    for i in 0..n {
        let (row, col) = ((i / side) as f64, (i % side) as f64);
        let half = (side as f64 - 1.0) / 2.0;
        let (dlat, dlng) = offset(CENTRE.0, (row - half) * 3_000.0, (col - half) * 3_000.0);
        let store = Store { id: format!("sim-store-{i:03}"), lat: CENTRE.0 + dlat, lng: CENTRE.1 + dlng };
        let body = json!({"name": format!("Sim store {i}"), "lat": store.lat, "lng": store.lng});
        admin_call(ctx, reqwest::Method::PUT, &format!("/v1/stores/{}", store.id), admin, body).await?;
        stores.push(store);
    }
    for k in 0..m {
        let body = json!({
            "name": format!("Sim item {k}"),
            "category": CATEGORIES[k % CATEGORIES.len()],
            "price_minor": 1_000 + (k as i64 * 37) % 40_000,
        });
        admin_call(ctx, reqwest::Method::PUT, &format!("/v1/catalog/sim-sku-{k:05}"), admin, body).await?;
    }
    // Stock, a few requests at a time.
    let mut jobs = Vec::new();
    for store in &stores {
        for k in 0..m {
            jobs.push((store.id.clone(), format!("sim-sku-{k:05}")));
        }
    }
    for chunk in jobs.chunks(16) {
        let mut set = tokio::task::JoinSet::new();
        for (store, sku) in chunk {
            let (ctx, admin, store, sku) = (ctx.clone(), admin.to_owned(), store.clone(), sku.clone());
            set.spawn(async move {
                let body = json!({"sku": sku, "delta": 200, "reason": "restock"});
                admin_call(&ctx, reqwest::Method::POST, &format!("/v1/stores/{store}/stock"), &admin, body).await
            });
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| e.to_string())??;
        }
    }
    Ok(stores)
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
