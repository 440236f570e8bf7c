//! Start-up as history grows: how long the release server takes from its start to its ready line,
//! and its resident size then, on a database with a long history (ledger rows and finished
//! orders) against the same catalog with no history, in the same run. SQLite always; PostgreSQL
//! too when `DARKSTORE_TEST_POSTGRES` is set.
//!
//! Each history is measured twice: as written (the ledger summed whole, the top picks' days summed
//! from their orders) and after checkpointing the ledger and rolling up the days of orders as a
//! running server does (start-up sums only the ledger rows after the checkpoint and the orders of
//! the days not rolled up).
//!
//! `cargo bench --bench startup`; `STARTUP_LEDGER_ROWS` and `STARTUP_ORDERS` set the history
//! (10,000,000 and 1,000,000 by default: issue 13's size). The catalog: 100 stores × 1,000 SKUs,
//! one lot per line restocked once, then reserved and sold one unit at a time; the orders are
//! delivered ones over the last 12 days, each with a line and two events.

mod common;

use std::time::{Duration, Instant};

use common::BenchServer;
use darkstore_db::scratch::ScratchDb;
use darkstore_db::{Db, Write};
use sqlx::Executor;

const STORES: i64 = 100;
const SKUS: i64 = 1_000;
const RUNS: usize = 3;

fn env_or(name: &str, default: i64) -> i64 {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// SQL that differs between the two databases.
struct Dialect {
    postgres: bool,
}

impl Dialect {
    /// `INSERT INTO {into} SELECT {select} FROM` a series `x` = 0 … n − 1.
    fn insert_series(&self, into: &str, select: &str, n: i64) -> String {
        if self.postgres {
            format!("INSERT INTO {into} SELECT {select} FROM generate_series(0, {}) AS seq(x)", n - 1)
        } else {
            format!(
                "WITH RECURSIVE seq(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM seq WHERE x < {}) \
                 INSERT INTO {into} SELECT {select} FROM seq",
                n - 1
            )
        }
    }

    /// `prefix` followed by `expr` zero-padded to `width` digits.
    fn padded(&self, prefix: &str, expr: &str, width: usize) -> String {
        if self.postgres {
            format!("'{prefix}' || lpad(({expr})::text, {width}, '0')")
        } else {
            format!("printf('{prefix}%0{width}d', {expr})")
        }
    }
}

/// The catalog, and a history of `ledger` rows and `orders` finished orders.
async fn fill(url: &str, postgres: bool, ledger: i64, orders: i64) {
    drop(Db::connect(url).await.expect("connect and migrate"));
    let pool = sqlx::AnyPool::connect(url).await.expect("connect");
    let d = Dialect { postgres };
    let now = common::now_ms();
    let store = |x: &str| d.padded("store-", x, 3);
    let sku = |x: &str| d.padded("sku-", x, 5);
    let order_id = d.padded("o", "x", 9);
    let lines = STORES * SKUS;
    let statements = [
        d.insert_series(
            "stores (id, name, lat, lng, updated_at)",
            &format!("{}, 'Store', 12.9 + (x % 10) * 0.02, 77.5 + (x / 10) * 0.02, 0", store("x")),
            STORES,
        ),
        d.insert_series(
            "products (sku, name, category, price_minor, low_stock_threshold, updated_at)",
            &format!("{}, 'Product', 'dairy', 1000, 5, 0", sku("x")),
            SKUS,
        ),
        // Lot `x mod lines` of store `lot mod STORES`, SKU `lot div STORES`: restocked with 1,000
        // in its first row, then reserved and sold one unit at a time (never below zero).
        d.insert_series(
            "stock_ledger (store_id, sku, lot_id, expires_at, kind, d_on_hand, d_reserved, order_id, ts)",
            &format!(
                "{}, {}, (x % {lines}) + 1, NULL, \
                 CASE WHEN x < {lines} THEN 'restock' WHEN (x / {lines}) % 2 = 1 THEN 'reserve' ELSE 'sale' END, \
                 CASE WHEN x < {lines} THEN 1000 WHEN (x / {lines}) % 2 = 1 THEN 0 ELSE -1 END, \
                 CASE WHEN x < {lines} THEN 0 WHEN (x / {lines}) % 2 = 1 THEN 1 ELSE -1 END, NULL, {now} - {ledger} + x",
                store(&format!("(x % {lines}) % {STORES}")),
                sku(&format!("(x % {lines}) / {STORES}")),
            ),
            ledger,
        ),
        d.insert_series(
            "orders (id, customer_id, idempotency_key, request_hash, store_id, lat, lng, status, rider_id, \
             eta_minutes, created_at, updated_at, hold_expires_at, payment_status, total_minor, promised_by)",
            &format!(
                "{order_id}, 'c' || (x % 10000), 'k' || x, 'h', {}, 12.9, 77.5, 'delivered', NULL, 10, \
                 {now} - x * 1000, {now} - x * 1000 + 600000, NULL, 'paid', 1000, {now} - x * 1000 + 600000",
                store(&format!("x % {STORES}")),
            ),
            orders,
        ),
        d.insert_series(
            "order_lines (order_id, line_no, sku, qty, price_minor)",
            &format!("{order_id}, 0, {}, 1, 1000", sku(&format!("x % {SKUS}"))),
            orders,
        ),
        d.insert_series(
            "order_events (order_id, status, rider_id, ts)",
            &format!("{order_id}, 'packed', NULL, {now} - x * 1000 + 120000"),
            orders,
        ),
        d.insert_series(
            "order_events (order_id, status, rider_id, ts)",
            &format!("{order_id}, 'delivered', NULL, {now} - x * 1000 + 600000"),
            orders,
        ),
    ];
    for sql in statements {
        pool.execute(sql.as_str()).await.unwrap_or_else(|e| panic!("{e}: {sql}"));
    }
    if postgres {
        pool.execute("ANALYZE").await.expect("analyze");
    }
    pool.close().await;
}

/// Starts the server `RUNS` times on `url`: time to its ready line, and its resident size then.
fn ready(url: &str) -> Vec<(Duration, u64)> {
    (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            let server = BenchServer::start(url, &["--mqtt-listen", "127.0.0.1:0"]);
            let took = t.elapsed();
            let rss = common::rss_bytes_of(&server.child.id().to_string());
            (took, rss)
        })
        .collect()
}

fn report(what: &str, runs: &[(Duration, u64)]) {
    let mut secs: Vec<f64> = runs.iter().map(|r| r.0.as_secs_f64()).collect();
    secs.sort_by(f64::total_cmp);
    let rss = runs.iter().map(|r| r.1).max().unwrap_or(0) as f64 / (1024.0 * 1024.0);
    println!(
        "{what:<58} ready in {:>7.2} s (median of {RUNS}; {:.2}–{:.2} s)  resident {rss:>7.1} MiB",
        secs[secs.len() / 2],
        secs[0],
        secs[secs.len() - 1]
    );
}

async fn case(db: ScratchDb, postgres: bool, name: &str, ledger: i64, orders: i64) {
    let t = Instant::now();
    fill(&db.url, postgres, ledger, orders).await;
    let filled = t.elapsed();
    let runs = ready(&db.url);
    report(&format!("{name}: {ledger} ledger rows, {orders} orders"), &runs);
    println!("{:<58} (history written in {:.0} s)", "", filled.as_secs_f64());
    if orders > 0 {
        // As a server that had been running would have left it: the ledger checkpointed (a slice
        // at a time, as the server does every 30 s).
        let t = Instant::now();
        let database = Db::connect(&db.url).await.expect("connect");
        // The ledger a slice a write, the days of orders one a write (12 of them).
        let complete_before = (common::now_ms() - 3_600_000).div_euclid(86_400_000);
        for _ in 0..=(ledger / darkstore_db::CHECKPOINT_MAX_ROWS).max(16) {
            let writes = [Write::Checkpoint, Write::RollUp { complete_before }];
            database.write_batch(&writes).await.expect("checkpoint");
        }
        drop(database);
        let took = t.elapsed();
        report(&format!("{name}: the same, checkpointed, rolled up"), &ready(&db.url));
        println!("{:<58} (checkpointed in {:.0} s)", "", took.as_secs_f64());
    }
    db.drop_database().await;
}

#[tokio::main]
async fn main() {
    let ledger = env_or("STARTUP_LEDGER_ROWS", 10_000_000);
    let orders = env_or("STARTUP_ORDERS", 1_000_000);
    println!("start-up: {STORES} stores × {SKUS} SKUs; the release server, {RUNS} starts per case");
    // The catalog alone has one restock row per line.
    let lines = STORES * SKUS;
    case(ScratchDb::sqlite("ds_bench_startup_empty"), false, "SQLite, no history", lines, 0).await;
    case(ScratchDb::sqlite("ds_bench_startup"), false, "SQLite", ledger.max(lines), orders).await;
    match ScratchDb::postgres("ds_bench_startup_empty").await {
        Some(db) => {
            case(db, true, "PostgreSQL, no history", lines, 0).await;
            let db = ScratchDb::postgres("ds_bench_startup").await.expect("postgres");
            case(db, true, "PostgreSQL", ledger.max(lines), orders).await;
        }
        None => println!("DARKSTORE_TEST_POSTGRES is not set: PostgreSQL skipped"),
    }
}
