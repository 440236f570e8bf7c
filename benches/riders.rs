//! Rider positions: into the index in process, nearest-rider queries, and through a real broker
//! (Mosquitto at 127.0.0.1:1883) against a plain subscriber on the same broker, and Redis `GEOADD` /
//! `GEOSEARCH` (127.0.0.1:6379) on the same 100,000 positions, all in one run.
//!
//! `cargo bench --bench riders` (`BENCH_SECS`, default 10, sets the broker phase).

mod common;

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

use common::{BenchServer, Rng, metric, token};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use darkstore::auth::Role;
use darkstore::changes::Changes;
use darkstore::ingest::Location;
use darkstore::riders::Riders;
use darkstore_db::scratch::ScratchDb;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const N_RIDERS: usize = 100_000;

/// Runs the in-process figures; returns the riders' final positions (lat, lng) for the peer.
fn in_process() -> Vec<(f64, f64)> {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let fleet = Riders::new(3_600_000, None, Arc::new(Changes::new()));
    let t0 = common::now_ms();
    let names: Vec<String> = (0..N_RIDERS).map(|i| format!("r{i}")).collect();
    let mut pos: Vec<(f64, f64)> = Vec::with_capacity(N_RIDERS);
    let (heap_before, rss_before) = (common::live_bytes(), common::trimmed_rss_bytes());
    for n in &names {
        fleet.upsert(n, n, None);
        fleet.shift(n, true, t0).unwrap();
        let p = (12.97 + (rng.unit() - 0.5) * 0.3, 77.59 + (rng.unit() - 0.5) * 0.3);
        fleet
            .location(
                n,
                Location { lat: p.0, lng: p.1, ts: t0, speed_mps: None, heading_deg: None, accuracy_m: None }.fix(),
                t0,
            )
            .unwrap();
        pos.push(p);
    }
    // What a rider costs in memory: the heap kept (live bytes grown) and the process's resident
    // size grown (allocator overhead included, free memory given back first) by registering,
    // putting on shift and placing every rider (the map, the index, the ids).
    let heap = common::live_bytes() - heap_before;
    let grown = common::trimmed_rss_bytes() as i64 - rss_before as i64;
    println!(
        "memory: {:.0} B of heap, {:.0} B resident per rider ({:.1} MiB resident for {N_RIDERS} riders on shift with a position)",
        heap as f64 / N_RIDERS as f64,
        grown as f64 / N_RIDERS as f64,
        grown as f64 / (1 << 20) as f64
    );
    // Updates: every rider moves a few metres a second.
    let rounds = 10;
    let started = Instant::now();
    for round in 1..=rounds {
        let ts = t0 + round * 1000;
        for (i, n) in names.iter().enumerate() {
            let p = &mut pos[i];
            p.0 += (rng.unit() - 0.5) * 0.0001;
            p.1 += (rng.unit() - 0.5) * 0.0001;
            let loc = Location { lat: p.0, lng: p.1, ts, speed_mps: None, heading_deg: None, accuracy_m: None };
            black_box(fleet.location(n, loc.fix(), ts).is_ok());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let n = rounds as usize * N_RIDERS;
    println!(
        "Riders::location, {N_RIDERS} riders, one thread: {:.2} M updates/s ({n} updates in {secs:.2} s)",
        n as f64 / secs / 1e6
    );

    // The same with the JSON payload parsed, as the MQTT path does.
    let payloads: Vec<Vec<u8>> = (0..N_RIDERS)
        .map(|i| format!(r#"{{"lat":{},"lng":{},"ts":{}}}"#, pos[i].0, pos[i].1, t0 + 100_000).into_bytes())
        .collect();
    let started = Instant::now();
    for (n, payload) in names.iter().zip(&payloads) {
        let loc: Location = serde_json::from_slice(payload).unwrap();
        black_box(fleet.location(n, loc.fix(), t0 + 100_000).is_ok());
    }
    let secs = started.elapsed().as_secs_f64();
    println!("JSON parse + Riders::location: {:.2} M updates/s", N_RIDERS as f64 / secs / 1e6);

    // Nearest 10 among 100k (the first query rebuilds the dirty partitions).
    let t = Instant::now();
    black_box(fleet.nearest(12.97, 77.59, 10));
    println!(
        "first nearest-10 query after updates (rebuilds dirty partitions): {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let (p50, p99) = nearest_queries(&mut rng, |lat, lng| {
        black_box(fleet.nearest(lat, lng, 10));
    });
    println!(
        "Riders::nearest(10) among {N_RIDERS} (H3 partition lookup, 7 partitions, ids returned): p50 {p50:.2} µs, p99 {p99:.2} µs"
    );

    // The index alone: one partition holding all 100k riders.
    let mut index = darkstore_dispatch::index::RiderIndex::<u8>::new();
    for (i, p) in pos.iter().enumerate() {
        index.upsert(i as u32, 0, p.1, p.0);
    }
    black_box(index.nearest(&[0], 77.59, 12.97, 10));
    let (p50, p99) = nearest_queries(&mut rng, |lat, lng| {
        black_box(index.nearest(&[0], lng, lat, 10));
    });
    println!("RiderIndex::nearest(10) among {N_RIDERS}, one partition: p50 {p50:.2} µs, p99 {p99:.2} µs");
    // Baseline in the same run: rstar's own nearest-neighbour iterator on a tree of the same
    // points (what the index used before its branch-and-bound search).
    let tree = rstar::RTree::bulk_load(pos.iter().map(|p| [p.1, p.0]).collect::<Vec<[f64; 2]>>());
    let (p50, p99) = nearest_queries(&mut rng, |lat, lng| {
        let ids: Vec<[f64; 2]> = tree.nearest_neighbor_iter(&[lng, lat]).take(10).copied().collect();
        black_box(ids);
    });
    println!("baseline: rstar nearest_neighbor_iter, 10 among {N_RIDERS}: p50 {p50:.2} µs, p99 {p99:.2} µs");
    pos
}

/// Times 100,000 nearest queries from random points over the city; returns p50 and p99 in µs.
fn nearest_queries(rng: &mut Rng, mut query: impl FnMut(f64, f64)) -> (f64, f64) {
    let queries = 100_000;
    let mut times: Vec<u64> = Vec::with_capacity(queries);
    for _ in 0..queries {
        let (lat, lng) = (12.97 + (rng.unit() - 0.5) * 0.3, 77.59 + (rng.unit() - 0.5) * 0.3);
        let t = Instant::now();
        query(lat, lng);
        times.push(t.elapsed().as_nanos() as u64);
    }
    times.sort_unstable();
    (times[queries / 2] as f64 / 1000.0, times[queries * 99 / 100] as f64 / 1000.0)
}

/// Positions through a broker: Mosquitto (`external`), or the server's embedded broker with its
/// access checks (every client authenticated by token, every publish and subscribe authorized).
async fn through_broker(secs: u64, external: bool) {
    let scratch = ScratchDb::sqlite("ds_bench_riders");
    let flags: &[&str] =
        if external { &["--mqtt-url", "mqtt://127.0.0.1:1883"] } else { &["--mqtt-listen", "127.0.0.1:0"] };
    let server = BenchServer::start(&scratch.url, flags);
    let hostport = server.mqtt.trim_start_matches("mqtt://").to_owned();
    let (host, port) = hostport.rsplit_once(':').map(|(h, p)| (h.to_owned(), p.parse::<u16>().unwrap())).unwrap();
    // On the embedded broker an admin token may read and publish every rider's topics, under a
    // client id bound to its subject.
    let creds = |opts: &mut MqttOptions| {
        if !external {
            opts.set_credentials("bench", token(Role::Admin, "bench", None));
        }
    };
    let id = |name: String| if external { name } else { format!("admin:bench:{name}") };
    let base = server.base.clone();
    let admin = token(Role::Admin, "admin", None);
    let http = reqwest::Client::new();
    let n_riders = 1000;
    for i in 0..n_riders {
        http.put(format!("{base}/v1/riders/bench-{i}"))
            .bearer_auth(&admin)
            .body(r#"{"name":"B"}"#)
            .send()
            .await
            .unwrap();
    }
    let before = common::metrics_text(&http, &base).await;
    let processed_before = metric(&before, "darkstore_rider_positions_total ");

    // A plain subscriber on the same broker.
    let received = Arc::new(AtomicU64::new(0));
    let mut opts = MqttOptions::new(id(format!("bench-sub-{}", std::process::id())), host.clone(), port);
    opts.set_keep_alive(Duration::from_secs(10));
    creds(&mut opts);
    let (sub, mut sub_loop) = AsyncClient::new(opts, 1000);
    sub.subscribe("riders/+/location", QoS::AtMostOnce).await.unwrap();
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok(ev) = sub_loop.poll().await {
            if let Event::Incoming(Packet::Publish(_)) = ev {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Publishers: 8 connections, each for 125 riders, as fast as the broker takes them (QoS 0).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..8 {
        let stop = stop.clone();
        let sent = sent.clone();
        let mut opts = MqttOptions::new(id(format!("bench-pub-{p}-{}", std::process::id())), host.clone(), port);
        creds(&mut opts);
        tasks.push(tokio::spawn(async move {
            opts.set_keep_alive(Duration::from_secs(10));
            let (client, mut el) = AsyncClient::new(opts, 10_000);
            tokio::spawn(async move { while el.poll().await.is_ok() {} });
            let mut ts = common::now_ms();
            let mut rng = Rng(0x1234 + p as u64);
            while !stop.load(Ordering::Relaxed) {
                ts += 1;
                for r in (p * 125)..((p + 1) * 125) {
                    let body = format!(
                        r#"{{"lat":{},"lng":{},"ts":{ts}}}"#,
                        12.97 + (rng.unit() - 0.5) * 0.001,
                        77.59 + (rng.unit() - 0.5) * 0.001
                    );
                    if client.publish(format!("riders/bench-{r}/location"), QoS::AtMostOnce, false, body).await.is_err()
                    {
                        return;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    let received_at_start = received.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed) - received_at_start;
    let sent = sent.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = common::metrics_text(&http, &base).await;
    let processed = metric(&after, "darkstore_rider_positions_total ") - processed_before;
    let shed = metric(&after, "darkstore_rider_messages_dropped_total{reason=\"shed\"} ");
    let stale = metric(&after, "darkstore_rider_messages_dropped_total{reason=\"stale\"} ");
    let name = if external { "Mosquitto" } else { "the embedded broker (mqtt5, with access checks)" };
    println!("through {name}, {n_riders} riders, 8 publishers, {secs} s:");
    println!("  published            {:>9.0} positions/s", sent as f64 / elapsed);
    println!("  plain subscriber got {:>9.0} positions/s", got as f64 / elapsed);
    println!(
        "  darkstore applied    {:>9.0} positions/s ({:.2} of the subscriber; shed {shed}, stale {stale})",
        processed / elapsed,
        processed / got.max(1) as f64
    );
    for t in tasks {
        let _ = t.await;
    }
    drop(server);
    scratch.drop_database().await;
}

/// A minimal RESP client: enough to pipeline commands and read their replies.
struct Resp {
    w: std::io::BufWriter<std::net::TcpStream>,
    r: std::io::BufReader<std::net::TcpStream>,
}

impl Resp {
    fn connect() -> std::io::Result<Resp> {
        let s = std::net::TcpStream::connect("127.0.0.1:6379")?;
        s.set_nodelay(true)?;
        Ok(Resp { w: std::io::BufWriter::new(s.try_clone()?), r: std::io::BufReader::new(s) })
    }

    fn send(&mut self, args: &[&str]) {
        use std::io::Write;
        write!(self.w, "*{}\r\n", args.len()).unwrap();
        for a in args {
            write!(self.w, "${}\r\n{a}\r\n", a.len()).unwrap();
        }
    }

    fn flush(&mut self) {
        use std::io::Write;
        self.w.flush().unwrap();
    }

    /// Reads one reply; returns how many top-level array elements it had (0 for a scalar) and
    /// the text of a bulk or simple string.
    fn read(&mut self) -> (usize, String) {
        use std::io::{BufRead, Read};
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let (kind, rest) = line.trim_end().split_at(1);
        match kind {
            "+" | ":" => (0, rest.to_owned()),
            "-" => panic!("redis error: {rest}"),
            "$" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return (0, String::new());
                }
                let mut buf = vec![0; n as usize + 2];
                self.r.read_exact(&mut buf).unwrap();
                (0, String::from_utf8_lossy(&buf[..n as usize]).into_owned())
            }
            "*" => {
                let n: i64 = rest.parse().unwrap();
                for _ in 0..n.max(0) {
                    self.read();
                }
                (n.max(0) as usize, String::new())
            }
            _ => panic!("unexpected reply {line:?}"),
        }
    }

    fn call(&mut self, args: &[&str]) -> (usize, String) {
        self.send(args);
        self.flush();
        self.read()
    }
}

/// The Redis peer on the same positions: GEOADD (pipelined, one member per command, as a stream of
/// position updates would arrive) and GEOSEARCH for the 10 nearest from random points.
fn redis_geo(pos: &[(f64, f64)]) {
    let mut redis = match Resp::connect() {
        Ok(r) => r,
        Err(e) => return println!("Redis not available at 127.0.0.1:6379: {e}"),
    };
    let key = "darkstore:bench:riders";
    redis.call(&["DEL", key]);
    redis.call(&["CONFIG", "RESETSTAT"]);
    let names: Vec<String> = (0..pos.len()).map(|i| format!("r{i}")).collect();
    let started = Instant::now();
    for chunk in pos.iter().zip(&names).collect::<Vec<_>>().chunks(1000) {
        for ((lat, lng), name) in chunk {
            redis.send(&["GEOADD", key, &lng.to_string(), &lat.to_string(), name]);
        }
        redis.flush();
        for _ in chunk {
            redis.read();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("Redis GEOADD, one member per command, pipelined 1,000 deep: {:.0} updates/s", pos.len() as f64 / secs);
    let mut rng = Rng(0x5eed);
    let queries = 20_000;
    let mut times: Vec<u64> = Vec::with_capacity(queries);
    let mut short = 0;
    for _ in 0..queries {
        let (lat, lng) = (12.97 + (rng.unit() - 0.5) * 0.3, 77.59 + (rng.unit() - 0.5) * 0.3);
        let (lng, lat) = (lng.to_string(), lat.to_string());
        let t = Instant::now();
        let args = ["GEOSEARCH", key, "FROMLONLAT", &lng, &lat, "BYRADIUS", "1", "km", "ASC", "COUNT", "10"];
        let (n, _) = redis.call(&args);
        times.push(t.elapsed().as_nanos() as u64);
        if n < 10 {
            short += 1;
        }
    }
    times.sort_unstable();
    let (_, info) = redis.call(&["INFO", "commandstats"]);
    let per_call = info
        .lines()
        .find(|l| l.starts_with("cmdstat_geosearch:"))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("usec_per_call=")))
        .unwrap_or("?")
        .to_owned();
    println!(
        "Redis GEOSEARCH nearest 10 within 1 km among {}, one connection: round trip p50 {:.2} µs, p99 {:.2} µs; \
         Redis's own time {per_call} µs per call; {short} of {queries} found fewer than 10",
        pos.len(),
        times[queries / 2] as f64 / 1000.0,
        times[queries * 99 / 100] as f64 / 1000.0,
    );
    redis.call(&["DEL", key]);
}

fn main() {
    let positions = in_process();
    let secs = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
        through_broker(secs, true).await;
        through_broker(secs, false).await;
    });
    redis_geo(&positions);
}
