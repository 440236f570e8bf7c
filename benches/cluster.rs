//! Cluster mode (issue #11): failover time over repeated kills of a busy owner (then an audit:
//! every acknowledged order looked up, the region's reserved units against the ledger), the added latency
//! of a forwarded request, and order throughput on disjoint regions with 1, 2 and 3 nodes.
//!
//! `cargo bench --bench cluster` with `DARKSTORE_TEST_POSTGRES` set and `nats-server` installed
//! (the bench starts its own, with JetStream, in a temporary directory). `CLUSTER_KILLS` (default
//! 20) and `CLUSTER_SECS` (throughput seconds per size, default 10) shorten or lengthen it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Nats, Server, admin, get_retried, ledger};
use darkstore_db::scratch::ScratchDb;
use serde_json::{Value, json};

const TTL_MS: u64 = 2_000;

fn node(db: &str, nats: &Nats, id: &str) -> Server {
    Server::start(db, &["--cluster-url", &nats.url, "--node-id", id, "--lease-ttl-ms", &TTL_MS.to_string()])
}

fn stores() -> Vec<(String, f64, f64)> {
    (0..6).map(|i| (format!("s{i}"), 12.9 + 0.3 * i as f64, 77.6)).collect()
}

fn order_body(lat: f64, lng: f64) -> Value {
    json!({"lat": lat, "lng": lng, "lines": [{"sku": "milk", "qty": 1}]})
}

async fn cluster_view(server: &Server, nodes: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = server.call("GET", "/v1/cluster", Some(&admin()), None).await;
        let regions = v["regions"].as_array().cloned().unwrap_or_default();
        let n: usize = regions.iter().map(|r| r["stores"].as_array().map_or(0, Vec::len)).sum();
        if s == 200
            && v["nodes"].as_array().map_or(0, Vec::len) == nodes
            && n == 6
            && regions.iter().all(|r| r["owner"].is_string())
        {
            return v;
        }
        assert!(Instant::now() < deadline, "the cluster did not settle: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn owner_of(view: &Value, store: &str) -> String {
    let r =
        view["regions"].as_array().unwrap().iter().find(|r| r["stores"].as_array().unwrap().iter().any(|s| s == store));
    r.unwrap()["owner"].as_str().unwrap().to_owned()
}

/// Places an order, retrying a 503 or 429 with the same key; the order's id once acknowledged.
async fn place(server: &Server, key: &str, body: &Value) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = server.order(&admin(), key, body.clone()).await;
        match s {
            201 => return v["id"].as_str().map(str::to_owned),
            503 | 429 if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => return None,
        }
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p).ceil() as usize).saturating_sub(1).min(v.len() - 1)]
}

async fn seed(via: &Server) {
    let admin = admin();
    for (id, lat, lng) in stores() {
        via.call("PUT", &format!("/v1/stores/{id}"), Some(&admin), Some(json!({"name": id, "lat": lat, "lng": lng})))
            .await;
    }
    via.call(
        "PUT",
        "/v1/catalog/milk",
        Some(&admin),
        Some(json!({"name": "Milk", "category": "dairy", "price_minor": 4500})),
    )
    .await;
}

async fn restock(via: &Server) {
    for (id, _, _) in stores() {
        let body = json!({"sku": "milk", "delta": 1_000_000, "reason": "restock"});
        let (s, v) = via.call("POST", &format!("/v1/stores/{id}/stock"), Some(&admin()), Some(body)).await;
        assert_eq!(s, 200, "{v}");
    }
}

async fn failover(db: &str, nats: &Nats, kills: usize) {
    let mut nodes: BTreeMap<String, Server> = BTreeMap::new();
    nodes.insert("a".into(), node(db, nats, "a"));
    seed(&nodes["a"]).await;
    for id in ["b", "c"] {
        nodes.insert(id.into(), node(db, nats, id));
    }
    let mut view = cluster_view(&nodes["a"], 3).await;
    restock(&nodes["a"]).await;
    let (_, lat, lng) = stores()[0].clone();
    let mut times = Vec::new();
    let mut acknowledged: Vec<String> = Vec::new();
    let mut n = 0usize;
    for round in 0..kills {
        let victim = owner_of(&view, "s0");
        let survivor = nodes.keys().find(|k| **k != victim).unwrap().clone();
        // Busy: orders for the victim's region through a survivor, until the kill.
        for _ in 0..20 {
            n += 1;
            acknowledged.push(place(&nodes[&survivor], &format!("f{n}"), &order_body(lat, lng)).await.expect("placed"));
        }
        let mut killed = nodes.remove(&victim).unwrap();
        let t0 = Instant::now();
        killed.kill();
        // The first order sent after the kill that is placed: the region is served again.
        n += 1;
        let id = place(&nodes[&survivor], &format!("f{n}"), &order_body(lat, lng)).await;
        times.push(t0.elapsed().as_secs_f64());
        acknowledged.push(id.unwrap_or_else(|| panic!("round {round}: not placed")));
        nodes.insert(victim.clone(), node(db, nats, &victim));
        view = cluster_view(&nodes[&survivor], 3).await;
    }
    let mut t = times.clone();
    println!(
        "failover over {kills} kills of the owner (TTL {TTL_MS} ms): p50 {:.2} s, p99 {:.2} s, max {:.2} s; {n} orders placed",
        pct(&mut t, 0.5),
        pct(&mut t, 0.99),
        times.iter().cloned().fold(0.0, f64::max)
    );
    // The audit after every kill: each acknowledged order is there, and what the owner holds
    // reserved is what was acknowledged and what the ledger says.
    let any = nodes.values().next().unwrap();
    let mut lost = 0;
    for id in &acknowledged {
        let (s, _) = get_retried(any, &format!("/v1/orders/{id}")).await;
        lost += usize::from(s != 200);
    }
    let (_, stock) = get_retried(any, "/v1/stores/s0/stock").await;
    let reserved = stock["lines"][0]["reserved"].as_i64().unwrap_or(-1);
    let ledger = ledger(db).await.get("s0").map_or(0, |l| l.1);
    println!(
        "failover audit: {} acknowledged, {lost} lost, {} distinct ids; s0 reserved {reserved} in memory, {ledger} in the ledger",
        acknowledged.len(),
        acknowledged.iter().collect::<std::collections::BTreeSet<_>>().len(),
    );
}

async fn forwarding(db: &str, nats: &Nats) {
    let a = node(db, nats, "fa");
    seed(&a).await;
    let b = node(db, nats, "fb");
    let view = cluster_view(&a, 2).await;
    restock(&a).await;
    let (_, lat, lng) = stores()[0].clone();
    let owner = owner_of(&view, "s0");
    let (direct, forwarded) = if owner == "fa" { (&a, &b) } else { (&b, &a) };
    let path = format!("/v1/availability?lat={lat}&lng={lng}");
    for (what, via) in [("owner", direct), ("forwarded", forwarded)] {
        let mut reads = Vec::new();
        let mut writes = Vec::new();
        for i in 0..500 {
            let t = Instant::now();
            let (s, _) = via.call("GET", &path, None, None).await;
            assert_eq!(s, 200);
            reads.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            assert!(place(via, &format!("{what}-{i}"), &order_body(lat, lng)).await.is_some());
            writes.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "via the {what}: availability p50 {:.2} ms p99 {:.2} ms; order p50 {:.2} ms p99 {:.2} ms (500 each, one client)",
            pct(&mut reads, 0.5),
            pct(&mut reads, 0.99),
            pct(&mut writes, 0.5),
            pct(&mut writes, 0.99)
        );
    }
}

async fn throughput(db: &str, nats: &Nats, n_nodes: usize, secs: u64) {
    let ids = ["ta", "tb", "tc"];
    let mut nodes: Vec<Server> = Vec::new();
    nodes.push(node(db, nats, ids[0]));
    seed(&nodes[0]).await;
    for id in &ids[1..n_nodes] {
        nodes.push(node(db, nats, id));
    }
    let view = cluster_view(&nodes[0], n_nodes).await;
    restock(&nodes[0]).await;
    let nodes = Arc::new(nodes);
    let placed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    // 8 clients per region, each to its region's owner (disjoint regions, no forwarding).
    for (store, lat, lng) in stores() {
        let owner = owner_of(&view, &store);
        let idx = ids.iter().position(|i| *i == owner).unwrap();
        for c in 0..8 {
            let (nodes, placed, store) = (nodes.clone(), placed.clone(), store.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0;
                while Instant::now() < deadline {
                    i += 1;
                    if place(&nodes[idx], &format!("t{n_nodes}-{store}-{c}-{i}"), &order_body(lat, lng)).await.is_some()
                    {
                        placed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = placed.load(Ordering::Relaxed);
    println!(
        "{n_nodes} node(s): {:.0} orders/s over {secs} s (48 clients, each to its region's owner)",
        n as f64 / secs as f64
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some(_) = std::env::var("DARKSTORE_TEST_POSTGRES").ok().filter(|v| !v.is_empty()) else {
        println!("cluster bench: DARKSTORE_TEST_POSTGRES is not set; skipped");
        return;
    };
    let Some(nats) = Nats::start() else {
        println!("cluster bench: nats-server is not installed; skipped");
        return;
    };
    let kills: usize = std::env::var("CLUSTER_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let secs: u64 = std::env::var("CLUSTER_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    println!(
        "cluster bench on {} cores, nats-server at {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        nats.url
    );
    {
        let scratch = ScratchDb::postgres("ds_bench_failover").await.unwrap();
        failover(&scratch.url, &nats, kills).await;
        scratch.drop_database().await;
    }
    {
        let scratch = ScratchDb::postgres("ds_bench_forward").await.unwrap();
        forwarding(&scratch.url, &nats).await;
        scratch.drop_database().await;
    }
    for n in 1..=3 {
        let scratch = ScratchDb::postgres("ds_bench_tput").await.unwrap();
        throughput(&scratch.url, &nats, n, secs).await;
        scratch.drop_database().await;
    }
}
