//! Live feeds in the two shapes users have (issue 13, item 2):
//!
//! - **customers**: every customer follows its own order (`order/{id}`, its rider's position once
//!   a second), and each store's dashboard (`store/{id}`) watches that store's riders: 200 stores ×
//!   50 riders, one order per rider, 10,000 customers and 200 dashboards by default. Measured:
//!   GPS-to-screen latency (the position's `ts` to the client's receipt).
//! - **hot**: one store's 500 riders, N screens on `store/s1`, either batched (`"batch": true`: one
//!   `riders` frame of what moved every `--ws-batch-ms`) or one frame per position as before.
//!   Measured: the age of every position on every screen when its frame arrives.
//!
//! `cargo bench --bench fanout`; `BENCH_STEPS="customers:10000,hot-batch:10000,hot-each:1000"`
//! picks the steps (`customers:N` is N orders, riders and customers over N/50 stores),
//! `BENCH_SECS` the seconds measured per step (default 20). Positions go through the machine's
//! Mosquitto (127.0.0.1:1883: one connection publishes for every rider, which a broker with
//! per-rider access would refuse; the server's work is the same) to a fresh release server per
//! step. The load generator (this process) shares the machine's cores with the server and
//! Mosquitto; the server's CPU is read from `/proc` and reported per 1,000 frames sent, a figure
//! that carries to other machines.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BenchServer, metric, metrics_text, now_ms, rss_bytes_of, token};
use darkstore::auth::Role;
use darkstore_db::scratch::ScratchDb;
use futures_util::{SinkExt, StreamExt, stream};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio_tungstenite::tungstenite::Message;

const RIDERS_PER_STORE: usize = 50;
const HOT_RIDERS: usize = 500;
const BASE_LAT: f64 = 12.80;
const BASE_LNG: f64 = 77.45;
/// Stores on a grid this far apart (degrees, about 4.4 km), so each order's point is served by
/// its own store.
const SPACING: f64 = 0.04;

/// Connecting stops after this long (a step that cannot keep up says how far it got).
const CONNECT_LIMIT: Duration = Duration::from_secs(120);

type Hist = Arc<Mutex<Histogram<u64>>>;

fn hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000, 3).unwrap()
}

/// Store `i`'s position.
fn store_at(i: usize) -> (f64, f64) {
    (BASE_LAT + (i / 15) as f64 * SPACING, BASE_LNG + (i % 15) as f64 * SPACING)
}

/// The server's CPU time so far, seconds (utime + stime from `/proc/PID/stat`).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which ends with ')'): state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Every `"ts":N` in `text`, each `now − N` ms recorded when `N ≥ since`; how many.
fn record_ages(text: &str, since: i64, now: i64, h: &mut Histogram<u64>) -> u64 {
    let mut n = 0;
    let mut rest = text;
    while let Some(i) = rest.find("\"ts\":") {
        rest = &rest[i + 5..];
        let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if let Ok(ts) = rest[..end].parse::<i64>()
            && ts >= since
        {
            h.record((now - ts).max(1) as u64).unwrap();
            n += 1;
        }
    }
    n
}

/// What the clients of a step saw.
struct Seen {
    gps: Hist,
    positions: Arc<AtomicU64>,
    frames: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    since: Arc<AtomicI64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            gps: Arc::new(Mutex::new(hist())),
            positions: Default::default(),
            frames: Default::default(),
            closed: Default::default(),
            stop: Default::default(),
            since: Arc::new(AtomicI64::new(i64::MAX)),
            tasks: Vec::new(),
        }
    }

    /// Connects a client with `token`, subscribes with `op`, and counts positions in frames of
    /// `kinds` until stopped. False when the connection failed.
    async fn client(&mut self, base: &str, token: &str, op: String, kinds: &'static [&'static str]) -> bool {
        let url = format!("{}/v1/ws?token={token}", base.replace("http://", "ws://"));
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else { return false };
        if ws.send(Message::Text(op.into())).await.is_err() {
            return false;
        }
        let (gps, positions, frames, closed, stop, since) = (
            self.gps.clone(),
            self.positions.clone(),
            self.frames.clone(),
            self.closed.clone(),
            self.stop.clone(),
            self.since.clone(),
        );
        self.tasks.push(tokio::spawn(async move {
            let mut local = hist();
            let (mut n, mut f) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let since = since.load(Ordering::Relaxed);
                        if since == i64::MAX || !kinds.iter().any(|k| t.contains(k)) {
                            continue;
                        }
                        f += 1;
                        n += record_ages(&t, since, now_ms(), &mut local);
                    }
                    Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                        closed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    _ => {}
                }
            }
            positions.fetch_add(n, Ordering::Relaxed);
            frames.fetch_add(f, Ordering::Relaxed);
            gps.lock().unwrap().add(&local).unwrap();
        }));
        true
    }

    async fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

/// Publishes every rider's position once a second (spread over the second, 10 ms batches),
/// each rider moving a few metres at a time near its start, until `stop`. Returns how many it
/// published a second.
fn publish_positions(riders: Arc<Vec<(String, (f64, f64))>>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        let mut opts = MqttOptions::new(format!("fanout-pub-{}", std::process::id()), "127.0.0.1", 1883);
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(opts, 200_000);
        tokio::spawn(async move { while el.poll().await.is_ok() {} });
        let started = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        let per_tick = riders.len().div_ceil(100);
        let (mut k, mut sent, mut round) = (0usize, 0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            ticker.tick().await;
            for _ in 0..per_tick {
                let (id, (lat, lng)) = &riders[k];
                // About 4 m a second back and forth: a rider moving slowly, always plausible.
                let wobble = ((round % 20) as f64 - 10.0).abs() * 4e-5;
                let body = format!(r#"{{"lat":{},"lng":{lng},"ts":{}}}"#, lat + wobble, now_ms());
                if client.try_publish(format!("riders/{id}/location"), QoS::AtMostOnce, false, body).is_ok() {
                    sent += 1;
                }
                k += 1;
                if k == riders.len() {
                    k = 0;
                    round += 1;
                }
            }
        }
        let _ = client.disconnect().await;
        sent as f64 / started.elapsed().as_secs_f64()
    })
}

async fn put(http: &reqwest::Client, url: String, admin: &str, body: String) {
    let r = http.put(url).bearer_auth(admin).body(body).send().await.expect("request");
    assert!(r.status().is_success(), "{}", r.text().await.unwrap_or_default());
}

/// Stores, a product stocked in each, and `per_store` riders of each, registered.
async fn city(base: &str, stores: usize, per_store: usize) -> Vec<(String, (f64, f64))> {
    let http = reqwest::Client::new();
    let admin = token(Role::Admin, "bench-admin", None);
    put(
        &http,
        format!("{base}/v1/catalog/milk"),
        &admin,
        r#"{"name":"Milk","category":"dairy","price_minor":4500}"#.into(),
    )
    .await;
    for s in 0..stores {
        let (lat, lng) = store_at(s);
        put(&http, format!("{base}/v1/stores/s{s}"), &admin, format!(r#"{{"name":"S{s}","lat":{lat},"lng":{lng}}}"#))
            .await;
        let r = http
            .post(format!("{base}/v1/stores/s{s}/stock"))
            .bearer_auth(&admin)
            .body(r#"{"sku":"milk","delta":100000,"reason":"restock"}"#)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let riders: Vec<(String, (f64, f64))> = (0..stores * per_store)
        .map(|i| {
            let (lat, lng) = store_at(i / per_store);
            (format!("f{i}"), (lat + 0.0005, lng))
        })
        .collect();
    stream::iter(riders.iter().enumerate())
        .for_each_concurrent(32, |(i, (id, _))| {
            let (http, admin) = (&http, &admin);
            async move {
                put(
                    http,
                    format!("{base}/v1/riders/{id}"),
                    admin,
                    format!(r#"{{"name":"F","store_id":"s{}"}}"#, i / per_store),
                )
                .await
            }
        })
        .await;
    riders
}

/// Puts every rider on shift over MQTT.
async fn on_shift(riders: &[(String, (f64, f64))]) {
    let opts = MqttOptions::new(format!("fanout-shift-{}", std::process::id()), "127.0.0.1", 1883);
    let (client, mut el) = AsyncClient::new(opts, 200_000);
    let poll = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    for (id, _) in riders {
        client.publish(format!("riders/{id}/shift"), QoS::AtLeastOnce, false, r#"{"on_shift":true}"#).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), poll).await;
}

struct Report {
    name: String,
    clients: usize,
    sent_per_s: f64,
    seen: Seen,
    cpu: f64,
    frames_sent: f64,
    secs: f64,
    rss_mib: f64,
    connect_s: f64,
}

fn print(r: &Report) {
    let h = r.seen.gps.lock().unwrap();
    let per_k = |n: f64| if n > 0.0 { r.cpu / n * 1000.0 * 1000.0 } else { 0.0 };
    let positions = r.seen.positions.load(Ordering::Relaxed) as f64;
    println!(
        "| {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {:.2} / {:.2} | {:.0} | {} | {:.1} |",
        r.name,
        r.clients,
        r.sent_per_s,
        r.frames_sent / r.secs,
        positions / r.secs,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        per_k(r.frames_sent),
        per_k(positions),
        r.rss_mib,
        r.seen.closed.load(Ordering::Relaxed),
        r.connect_s,
    );
}

/// Measures for `secs` with the clients connected and positions flowing.
async fn measure(server: &BenchServer, seen: &mut Seen, secs: u64) -> (f64, f64, f64) {
    let http = reqwest::Client::new();
    let pid = server.child.id();
    let frames0 = metric(&metrics_text(&http, &server.base).await, "darkstore_ws_frames_sent_total ");
    let cpu0 = cpu_secs(pid);
    let started = Instant::now();
    seen.since.store(now_ms(), Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid) - cpu0;
    let frames = metric(&metrics_text(&http, &server.base).await, "darkstore_ws_frames_sent_total ") - frames0;
    seen.finish().await;
    (elapsed, cpu, frames)
}

/// A step's server with its city of riders on shift, publishing positions until finished.
struct Step {
    scratch: ScratchDb,
    server: BenchServer,
    stop: Arc<AtomicBool>,
    publisher: tokio::task::JoinHandle<f64>,
}

impl Step {
    /// A fresh server with `stores` stores of `per_store` riders each, positions flowing.
    async fn start(stores: usize, per_store: usize) -> Step {
        let scratch = ScratchDb::sqlite("ds_bench_fanout");
        let server = BenchServer::start(
            &scratch.url,
            &["--mqtt-url", "mqtt://127.0.0.1:1883", "--ws-max-connections", "30000", "--rider-silence-secs", "600"],
        );
        let riders = Arc::new(city(&server.base, stores, per_store).await);
        on_shift(&riders).await;
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = publish_positions(riders, stop.clone());
        Step { scratch, server, stop, publisher }
    }

    /// With the clients connected (since `connect`): measures for `secs`, stops, reports.
    async fn finish(self, name: String, mut seen: Seen, connect: Instant, secs: u64) -> Report {
        let connect_s = connect.elapsed().as_secs_f64();
        let clients = seen.tasks.len();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (elapsed, cpu, frames) = measure(&self.server, &mut seen, secs).await;
        self.stop.store(true, Ordering::Relaxed);
        let sent_per_s = self.publisher.await.unwrap_or(0.0);
        let rss_mib = rss_bytes_of(&self.server.child.id().to_string()) as f64 / (1 << 20) as f64;
        drop(self.server);
        self.scratch.drop_database().await;
        Report { name, clients, sent_per_s, seen, cpu, frames_sent: frames, secs: elapsed, rss_mib, connect_s }
    }
}

async fn customers(n: usize, secs: u64) -> Report {
    let stores = n.div_ceil(RIDERS_PER_STORE);
    let step = Step::start(stores, RIDERS_PER_STORE).await;
    let base = step.server.base.clone();
    // One order per rider, each by its own customer, 300 m from its store.
    let http = reqwest::Client::new();
    let ids: Vec<(String, String)> = stream::iter(0..n)
        .map(|i| {
            let http = http.clone();
            let base = base.clone();
            async move {
                let (lat, lng) = store_at(i / RIDERS_PER_STORE);
                let customer = format!("c{i}");
                let t = token(Role::Customer, &customer, None);
                let body = format!(r#"{{"lat":{},"lng":{lng},"lines":[{{"sku":"milk","qty":1}}]}}"#, lat - 0.0027);
                let r = http
                    .post(format!("{base}/v1/orders"))
                    .bearer_auth(&t)
                    .header("idempotency-key", format!("k{i}"))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201);
                let v: serde_json::Value = r.json().await.unwrap();
                (v["id"].as_str().unwrap().to_owned(), t)
            }
        })
        .buffered(32)
        .collect()
        .await;
    // Packed, so the dispatcher gives each a rider at once.
    stream::iter(ids.iter().enumerate())
        .for_each_concurrent(32, |(i, (id, _))| {
            let (http, base) = (&http, &base);
            async move {
                let s = i / RIDERS_PER_STORE;
                let staff = token(Role::Staff, &format!("staff-s{s}"), Some(&format!("s{s}")));
                let r = http.post(format!("{base}/v1/orders/{id}/packed")).bearer_auth(staff).send().await.unwrap();
                assert!(r.status().is_success(), "{}", r.text().await.unwrap_or_default());
            }
        })
        .await;
    // Wait for the dispatcher to give every order a rider.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = metrics_text(&http, &base).await;
        let assigned = metric(&text, "darkstore_dispatch_orders_assigned_total ");
        if assigned >= n as f64 || Instant::now() > deadline {
            println!("  {assigned} of {n} orders assigned");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut seen = Seen::new();
    let connect = Instant::now();
    for (id, t) in &ids {
        let op = format!(r#"{{"op":"subscribe","topic":"order/{id}"}}"#);
        if !seen.client(&base, t, op, &["\"rider_position\""]).await {
            println!("  connect failed after {} clients", seen.tasks.len());
            break;
        }
    }
    for s in 0..stores {
        let t = token(Role::Staff, &format!("staff-s{s}"), Some(&format!("s{s}")));
        let op = format!(r#"{{"op":"subscribe","topic":"store/s{s}"}}"#);
        seen.client(&base, &t, op, &["\"type\":\"rider\""]).await;
    }
    step.finish(format!("customers ({n} orders, {stores} dashboards)"), seen, connect, secs).await
}

async fn hot(n: usize, batch: bool, secs: u64) -> Report {
    let step = Step::start(1, HOT_RIDERS).await;
    let base = step.server.base.clone();
    let mut seen = Seen::new();
    let connect = Instant::now();
    let kinds: &'static [&'static str] = if batch { &["\"type\":\"riders\""] } else { &["\"type\":\"rider\""] };
    for i in 0..n {
        let t = token(Role::Staff, &format!("screen-{i}"), Some("s0"));
        let op = format!(r#"{{"op":"subscribe","topic":"store/s0","batch":{batch}}}"#);
        if !seen.client(&base, &t, op, kinds).await {
            println!("  connect failed after {i} clients");
            break;
        }
        if connect.elapsed() > CONNECT_LIMIT {
            println!("  only {} clients connected in {CONNECT_LIMIT:?}", i + 1);
            break;
        }
    }
    let name = format!("hot store, {}", if batch { "batched (250 ms)" } else { "a frame per position" });
    step.finish(name, seen, connect, secs).await
}

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let steps = std::env::var("BENCH_STEPS").unwrap_or_else(|_| "customers:10000,hot-batch:10000,hot-each:1000".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        println!("live feeds, {secs} s measured per step, a fresh server per step, positions over Mosquitto");
        println!(
            "| step | clients | positions published/s | frames sent/s | positions received/s | p50 ms | p99 ms | p99.9 ms | max ms | server CPU ms per 1,000 frames / positions received | server RSS MiB | clients closed | connect s |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for step in steps.split(',') {
            let Some((shape, n)) = step.split_once(':') else { continue };
            let Ok(n) = n.parse::<usize>() else { continue };
            let report = match shape {
                "customers" => customers(n, secs).await,
                "hot-batch" => hot(n, true, secs).await,
                "hot-each" => hot(n, false, secs).await,
                other => {
                    println!("  unknown step {other}");
                    continue;
                }
            };
            print(&report);
        }
    });
}
