//! `GET /v1/availability` over HTTP against a well-indexed PostgreSQL query for the same pages,
//! in the same run: 200 stores × 5,000 SKUs, pages of 200 in-stock SKUs with catalog data.
//!
//! `cargo bench --bench availability_http` (needs `wrk`: `apt-get install wrk`; PostgreSQL at
//! `DARKSTORE_TEST_POSTGRES`, default postgres://postgres@127.0.0.1:5432/postgres). `BENCH_SECS`
//! (default 10) sets each phase.
//!
//! PostgreSQL: the nearest store in a bounding box, then a lateral scan of its first 200 in-stock
//! SKUs (index on (store_id, sku) where available > 0) joined to the catalog; 16 connections.
//! darkstore: the release server on SQLite holding the same data, loaded by `wrk` (2 threads,
//! 64 connections) cycling through the same 1,000 points.

mod common;

use common::{BenchServer, Rng};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use darkstore_db::scratch::ScratchDb;
use darkstore_db::{Db, LedgerRow, Write};
use sqlx::{Connection, Executor, Row};

const N_STORES: usize = 200;
const N_SKUS: usize = 5_000;

struct City {
    stores: Vec<(String, f64, f64)>,
    /// (store index, sku index, available)
    stock: Vec<(usize, usize, i64)>,
    points: Vec<(f64, f64)>,
}

fn city() -> City {
    let mut rng = Rng(0x2545F4914F6CDD1D);
    let stores: Vec<(String, f64, f64)> = (0..N_STORES)
        .map(|i| (format!("store-{i:03}"), 12.97 + (rng.unit() - 0.5) * 0.36, 77.59 + (rng.unit() - 0.5) * 0.37))
        .collect();
    let mut stock = Vec::new();
    for s in 0..N_STORES {
        for k in 0..N_SKUS {
            if rng.unit() >= 0.1 {
                stock.push((s, k, 1 + (rng.unit() * 50.0) as i64));
            }
        }
    }
    let points = (0..1000)
        .map(|_| {
            let (_, lat, lng) = &stores[(rng.unit() * N_STORES as f64) as usize % N_STORES];
            (lat + (rng.unit() - 0.5) * 0.02, lng + (rng.unit() - 0.5) * 0.02)
        })
        .collect();
    City { stores, stock, points }
}

async fn load_darkstore(url: &str, c: &City) {
    let db = Db::connect(url).await.unwrap();
    let mut writes: Vec<Write> = c
        .stores
        .iter()
        .map(|(id, lat, lng)| Write::Store {
            id: id.clone(),
            name: id.clone(),
            lat: *lat,
            lng: *lng,
            timezone: None,
            hours: None,
            paused: None,
            ts: 0,
        })
        .collect();
    for k in 0..N_SKUS {
        writes.push(Write::Product {
            sku: format!("sku-{k:05}"),
            name: format!("Product {k}"),
            category: ["dairy", "snacks", "staples", "fruit_veg", "household"][k % 5].into(),
            price_minor: 1000 + k as i64,
            low_stock_threshold: 5,
            ts: 0,
        });
    }
    db.write_batch(writes.iter()).await.unwrap();
    for (n, chunk) in c.stock.chunks(50_000).enumerate() {
        let rows: Vec<Write> = chunk
            .iter()
            .enumerate()
            .map(|(i, (s, k, q))| {
                Write::Ledger(LedgerRow {
                    store_id: c.stores[*s].0.clone(),
                    sku: format!("sku-{k:05}"),
                    lot_id: (n * 50_000 + i + 1) as i64,
                    expires_at: None,
                    kind: "restock",
                    d_on_hand: *q,
                    d_reserved: 0,
                    order_id: None,
                    ts: 0,
                })
            })
            .collect();
        db.write_batch(rows.iter()).await.unwrap();
    }
    db.close().await;
}

async fn postgres(url: &str, c: &City, secs: u64) -> (f64, u64) {
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    conn.execute(
        "CREATE TABLE stores (id TEXT PRIMARY KEY, lat DOUBLE PRECISION NOT NULL, lng DOUBLE PRECISION NOT NULL);
         CREATE INDEX stores_lat_lng ON stores (lat, lng);
         CREATE TABLE products (sku TEXT PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL, price_minor BIGINT NOT NULL);
         CREATE TABLE stock (store_id TEXT NOT NULL, sku TEXT NOT NULL, available BIGINT NOT NULL, PRIMARY KEY (store_id, sku));
         CREATE INDEX stock_in_stock ON stock (store_id, sku) WHERE available > 0;",
    )
    .await
    .unwrap();
    for (id, lat, lng) in &c.stores {
        sqlx::query("INSERT INTO stores VALUES ($1, $2, $3)")
            .bind(id)
            .bind(lat)
            .bind(lng)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn.execute(
        "INSERT INTO products SELECT 'sku-' || lpad(g::text, 5, '0'), 'Product ' || g, (ARRAY['dairy','snacks','staples','fruit_veg','household'])[g % 5 + 1], 1000 + g FROM generate_series(0, 4999) g",
    )
    .await
    .unwrap();
    for chunk in c.stock.chunks(5_000) {
        let mut sql = String::from("INSERT INTO stock VALUES ");
        for (i, (s, k, q)) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("('{}','sku-{k:05}',{q})", c.stores[*s].0));
        }
        conn.execute(sql.as_str()).await.unwrap();
    }
    conn.execute("ANALYZE").await.unwrap();
    let query = "WITH s AS (SELECT id FROM stores WHERE lat BETWEEN $1 - 0.02 AND $1 + 0.02 AND lng BETWEEN $2 - 0.02 AND $2 + 0.02 \
                 ORDER BY (lat - $1) * (lat - $1) + (lng - $2) * (lng - $2) LIMIT 1) \
                 SELECT st.sku, p.name, p.category, p.price_minor, st.available FROM s CROSS JOIN LATERAL \
                 (SELECT sku, available FROM stock WHERE store_id = s.id AND available > 0 ORDER BY sku LIMIT 200) st \
                 JOIN products p ON p.sku = st.sku ORDER BY st.sku";
    let stop = Arc::new(AtomicBool::new(false));
    let pages = Arc::new(AtomicU64::new(0));
    let rows_seen = Arc::new(AtomicU64::new(0));
    let points = Arc::new(c.points.clone());
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (stop, pages, rows_seen, points, url) =
            (stop.clone(), pages.clone(), rows_seen.clone(), points.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
            let mut i = t * 61;
            while !stop.load(Ordering::Relaxed) {
                let (lat, lng) = points[i % points.len()];
                i += 1;
                let rows = sqlx::query(query).bind(lat).bind(lng).fetch_all(&mut conn).await.unwrap();
                let _: Option<String> = rows.first().map(|r| r.get(1));
                rows_seen.fetch_add(rows.len() as u64, Ordering::Relaxed);
                pages.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let n = pages.load(Ordering::Relaxed);
    (n as f64 / started.elapsed().as_secs_f64(), rows_seen.load(Ordering::Relaxed) / n.max(1))
}

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    if std::env::var(darkstore_db::scratch::POSTGRES_ENV).is_err() {
        // SAFETY: single-threaded here, before the runtime starts.
        unsafe {
            std::env::set_var(darkstore_db::scratch::POSTGRES_ENV, "postgres://postgres@127.0.0.1:5432/postgres")
        };
    }
    let c = city();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        println!("availability pages: {N_STORES} stores × {N_SKUS} SKUs ({} in stock), {secs} s per phase", c.stock.len());
        let pg = darkstore_db::scratch::ScratchDb::postgres("ds_bench_avail").await.expect("PostgreSQL");
        let (pg_rate, pg_rows) = postgres(&pg.url, &c, secs).await;
        println!("PostgreSQL, 16 connections: {pg_rate:.0} pages/s ({pg_rows} rows a page)");
        pg.drop_database().await;

        let sqlite = ScratchDb::sqlite("ds_bench_avail_http");
        load_darkstore(&sqlite.url, &c).await;
        let server = BenchServer::start(&sqlite.url, &["--mqtt-listen", "127.0.0.1:0"]);
        let addr = server.base.trim_start_matches("http://").to_owned();
        let script = std::env::temp_dir().join(format!("ds-avail-{}.lua", std::process::id()));
        let points: Vec<String> = c.points.iter().map(|(lat, lng)| format!("\"/v1/availability?lat={lat:.6}&lng={lng:.6}\"")).collect();
        std::fs::write(
            &script,
            format!("local paths = {{{}}}\nlocal i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"GET\", paths[(i % #paths) + 1])\nend\n", points.join(",")),
        )
        .unwrap();
        let sample = reqwest::get(format!("http://{addr}/v1/availability?lat={}&lng={}", c.points[0].0, c.points[0].1))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        println!("darkstore page sample: {} items, next {}", sample["items"].as_array().map_or(0, Vec::len), sample["next"]);
        let out = Command::new("wrk")
            .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", "-s", script.to_str().unwrap(), &format!("http://{addr}")])
            .output();
        match out {
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stdout);
                let rate: f64 = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Requests/sec:").and_then(|v| v.trim().parse().ok()))
                    .unwrap_or(0.0);
                for l in text.lines().filter(|l| l.contains("50%") || l.contains("99%") || l.contains("Non-2xx")) {
                    println!("  wrk {}", l.trim());
                }
                println!("darkstore GET /v1/availability over HTTP, wrk 2 threads × 64 connections: {rate:.0} pages/s");
                println!("ratio: {:.1}× PostgreSQL", rate / pg_rate.max(1.0));
            }
            Err(e) => println!("wrk is not installed ({e}): apt-get install wrk"),
        }
        let _ = std::fs::remove_file(&script);
        drop(server);
        sqlite.drop_database().await;
    });
}
