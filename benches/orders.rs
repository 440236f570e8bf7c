//! Durable order placement on one hot SKU, through the real server over HTTP, against PostgreSQL
//! doing the same reservation the usual way, in the same run.
//!
//! `cargo bench --bench orders` (PostgreSQL at `DARKSTORE_TEST_POSTGRES`, default
//! postgres://postgres@127.0.0.1:5432/postgres). `BENCH_SECS` (default 10) sets each phase's length,
//! `BENCH_CLIENTS` (default 64) the concurrent HTTP clients.
//!
//! Phases:
//! 1. darkstore on SQLite (WAL, synchronous=FULL), 64 clients;
//! 2. darkstore on PostgreSQL (synchronous_commit on), 64 clients;
//! 3. PostgreSQL alone, 16 connections, one transaction per order:
//!    `UPDATE stock SET qty = qty - 1 WHERE sku = $1 AND qty >= 1` then `INSERT INTO orders`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{BenchServer, metric, token};
use darkstore::auth::Role;
use darkstore_db::scratch::ScratchDb;
use hdrhistogram::Histogram;
use sqlx::{Connection, Executor};

const STOCK: i64 = 100_000_000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Outcome {
    ok: u64,
    failed: u64,
    latency: Histogram<u64>,
    secs: f64,
}

fn print(name: &str, o: &Outcome) {
    println!(
        "{name:<48} {:>8.0} orders/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  ({} ok, {} failed)",
        o.ok as f64 / o.secs,
        o.latency.value_at_quantile(0.5) as f64 / 1000.0,
        o.latency.value_at_quantile(0.99) as f64 / 1000.0,
        o.latency.value_at_quantile(0.999) as f64 / 1000.0,
        o.ok,
        o.failed
    );
}

/// Lets the load run for `secs`, stops it, and sums what each task counted.
async fn collect(
    tasks: Vec<tokio::task::JoinHandle<(u64, u64, Histogram<u64>)>>,
    stop: &AtomicBool,
    started: Instant,
    secs: u64,
) -> Outcome {
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut out =
        Outcome { ok: 0, failed: 0, latency: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(), secs: 0.0 };
    for t in tasks {
        let (ok, failed, h) = t.await.unwrap();
        out.ok += ok;
        out.failed += failed;
        out.latency.add(&h).unwrap();
    }
    out.secs = started.elapsed().as_secs_f64();
    out
}

async fn run_server(db_url: &str, clients: u64, secs: u64) -> Outcome {
    let server = BenchServer::start(db_url, &["--mqtt-listen", "127.0.0.1:0"]);
    let base = server.base.clone();
    let admin = token(Role::Admin, "admin", None);
    let client = reqwest::Client::new();
    let put = |path: &str, body: serde_json::Value| {
        client.put(format!("{base}{path}")).bearer_auth(&admin).body(body.to_string()).send()
    };
    put("/v1/stores/hot", serde_json::json!({"name": "Hot", "lat": 12.9719, "lng": 77.6412})).await.unwrap();
    put("/v1/catalog/milk", serde_json::json!({"name": "Milk", "category": "dairy", "price_minor": 4500}))
        .await
        .unwrap();
    let r = client
        .post(format!("{base}/v1/stores/hot/stock"))
        .bearer_auth(&admin)
        .body(serde_json::json!({"sku": "milk", "delta": 1_000_000, "reason": "restock"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let stop = stop.clone();
        let base = base.clone();
        let token = token(Role::Customer, &format!("c{c}"), None);
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let (mut ok, mut failed, mut i) = (0u64, 0u64, 0u64);
            let body = r#"{"lat":12.972,"lng":77.6412,"lines":[{"sku":"milk","qty":1}]}"#;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let t = Instant::now();
                let r = client
                    .post(format!("{base}/v1/orders"))
                    .bearer_auth(&token)
                    .header("idempotency-key", i.to_string())
                    .body(body)
                    .send()
                    .await;
                let status = match r {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.bytes().await;
                        s
                    }
                    Err(_) => 0,
                };
                h.record((t.elapsed().as_micros() as u64).max(1)).unwrap();
                if status == 201 { ok += 1 } else { failed += 1 }
            }
            (ok, failed, h)
        }));
    }
    let out = collect(tasks, &stop, started, secs).await;
    // Oversold check: reserved never exceeds what arrived.
    let r = client.get(format!("{base}/v1/stores/hot/stock")).bearer_auth(&admin).send().await.unwrap();
    let stock: serde_json::Value = r.json().await.unwrap();
    let line = &stock["lines"][0];
    assert_eq!(line["reserved"].as_u64(), Some(out.ok), "every 201 reserved exactly one unit: {line}");
    assert!(line["available"].as_i64().unwrap() >= 0);
    let metrics = common::metrics_text(&client, &base).await;
    let (jobs, transactions) =
        (metric(&metrics, "darkstore_db_commit_jobs_total "), metric(&metrics, "darkstore_db_transactions_total "));
    println!(
        "  group commit: {jobs} jobs in {transactions} transactions, {:.1} jobs per transaction",
        jobs / transactions.max(1.0)
    );
    drop(server);
    out
}

async fn run_postgres_baseline(url: &str, conns: u64, secs: u64) -> Outcome {
    let mut setup = sqlx::AnyConnection::connect(url).await.unwrap();
    setup
        .execute("CREATE TABLE stock (sku TEXT PRIMARY KEY, qty BIGINT NOT NULL); CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, sku TEXT NOT NULL, qty BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        .await
        .unwrap();
    sqlx::query("INSERT INTO stock VALUES ('milk', $1)").bind(STOCK).execute(&mut setup).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let stop = stop.clone();
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let (mut ok, mut failed) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let mut tx = conn.begin().await.unwrap();
                let updated = sqlx::query("UPDATE stock SET qty = qty - $1 WHERE sku = $2 AND qty >= $1")
                    .bind(1i64)
                    .bind("milk")
                    .execute(&mut *tx)
                    .await
                    .unwrap()
                    .rows_affected();
                if updated == 1 {
                    sqlx::query("INSERT INTO orders (sku, qty) VALUES ($1, $2)")
                        .bind("milk")
                        .bind(1i64)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                    ok += 1;
                } else {
                    tx.rollback().await.unwrap();
                    failed += 1;
                }
                h.record((t.elapsed().as_micros() as u64).max(1)).unwrap();
            }
            (ok, failed, h)
        }));
    }
    collect(tasks, &stop, started, secs).await
}

fn main() {
    let secs = env_or("BENCH_SECS", 10);
    let clients = env_or("BENCH_CLIENTS", 64);
    if std::env::var(darkstore_db::scratch::POSTGRES_ENV).is_err() {
        // SAFETY: single-threaded here, before the runtime starts.
        unsafe {
            std::env::set_var(darkstore_db::scratch::POSTGRES_ENV, "postgres://postgres@127.0.0.1:5432/postgres")
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        println!("orders on one hot SKU, {secs} s per phase, clients and server share this machine's cores");
        let sqlite = ScratchDb::sqlite("ds_bench_orders");
        let o = run_server(&sqlite.url, clients, secs).await;
        print(&format!("darkstore HTTP, SQLite, {clients} clients"), &o);
        sqlite.drop_database().await;

        let pg = ScratchDb::postgres("ds_bench_orders").await.expect("PostgreSQL");
        let o = run_server(&pg.url, clients, secs).await;
        print(&format!("darkstore HTTP, PostgreSQL, {clients} clients"), &o);
        pg.drop_database().await;

        let pg = ScratchDb::postgres("ds_bench_baseline").await.expect("PostgreSQL");
        let o = run_postgres_baseline(&pg.url, 16, secs).await;
        print("PostgreSQL conditional UPDATE + INSERT, 16 conns", &o);
        pg.drop_database().await;
    });
}
