//! Cluster mode (issue #11): failover time over repeated kills of a busy owner (then an audit:
//! every acknowledged order looked up, the region's reserved units against the ledger, and what
//! the region's riders were told: no rider given a second task while one was open, no order in
//! two riders' tasks), the added latency of a forwarded request, and order throughput on disjoint
//! regions with 1, 2 and 3 nodes.
//!
//! `cargo bench --bench cluster` with `DARKSTORE_TEST_POSTGRES` set, `nats-server` installed (the
//! bench starts its own, with JetStream, in a temporary directory) and Mosquitto on
//! 127.0.0.1:1883 (the failover's nodes share it, so riders stay connected through the kills).
//! NATS's own costs (core messages, a rider's claim) are measured between the failover and the
//! rest. `CLUSTER_KILLS` (default 20; 0 skips the failover) and `CLUSTER_SECS` (throughput
//! seconds per size, default 10; 0 stops after NATS's costs) shorten or lengthen it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Nats, Server, admin, get_retried, ledger, publish, rider_client};
use darkstore_db::scratch::ScratchDb;
use serde_json::{Value, json};

const TTL_MS: u64 = 2_000;

fn node(db: &str, nats: &Nats, id: &str) -> Server {
    Server::start(db, &["--cluster-url", &nats.url, "--node-id", id, "--lease-ttl-ms", &TTL_MS.to_string()])
}

/// The machine's Mosquitto, which the failover's nodes share.
const MOSQUITTO: &str = "mqtt://127.0.0.1:1883";

fn node_on_mosquitto(db: &str, nats: &Nats, id: &str) -> Server {
    let log = std::env::var("CLUSTER_LOG").unwrap_or_else(|_| "warn,rumqttd=off".into());
    Server::start_with_env(
        db,
        &[
            "--cluster-url",
            &nats.url,
            "--node-id",
            id,
            "--lease-ttl-ms",
            &TTL_MS.to_string(),
            "--mqtt-url",
            MOSQUITTO,
            "--dispatch-tick-ms",
            "200",
            // Orders are ready within a couple of seconds, so riders ride through the kills.
            "--picking-minutes",
            "0.02",
            "--pickers",
            "50",
        ],
        &[("DARKSTORE_LOG", log.as_str())],
    )
}

/// What the riders saw over the kills.
#[derive(Default)]
struct Seen {
    tasks: AtomicU64,
    delivered: AtomicU64,
    /// A task (another task id) while the rider's last task was still open.
    second_task: AtomicU64,
    /// An order in the tasks of two riders.
    two_riders: AtomicU64,
}

/// Riders of `store` on Mosquitto: each reports its position every second, takes its tasks, and
/// a moment later picks up and delivers them (with their codes), counting what must never happen.
async fn fleet(
    n: usize,
    prefix: &str,
    store: (f64, f64),
    codes: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    seen: Arc<Seen>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let holder: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>> = Arc::default();
    let mut handles = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-r{i}");
        let (client, mut inbox, accepted) = rider_client(MOSQUITTO, &id, None).await;
        assert!(accepted, "Mosquitto on 127.0.0.1:1883 accepts the bench's riders");
        client.subscribe(format!("riders/{id}/tasks"), rumqttc::QoS::AtLeastOnce).await.unwrap();
        publish(&client, format!("riders/{id}/shift"), json!({"on_shift": true})).await;
        let positions = client.clone();
        let me = id.clone();
        handles.push(tokio::spawn(async move {
            loop {
                let at = json!({"lat": store.0, "lng": store.1, "ts": common::now_ms()});
                publish(&positions, format!("riders/{me}/location"), at).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
        let (codes, seen, holder) = (codes.clone(), seen.clone(), holder.clone());
        handles.push(tokio::spawn(async move {
            // The task the rider is riding (set on receipt, cleared as it hands the last order over).
            let open: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
            while let Some((_, task)) = inbox.recv().await {
                let task_id = task["task_id"].as_str().unwrap_or_default().to_owned();
                let orders: Vec<String> = task["orders"]
                    .as_array()
                    .map(|v| v.iter().filter_map(|o| o["id"].as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                {
                    let mut open = open.lock().unwrap();
                    if orders.is_empty() {
                        *open = None; // withdrawn
                        continue;
                    }
                    if open.as_deref() == Some(task_id.as_str()) {
                        continue; // the same task again (an order left it)
                    }
                    if let Some(t) = open.as_ref() {
                        seen.second_task.fetch_add(1, Ordering::Relaxed);
                        eprintln!("{id}: task {task_id} while {t} is open");
                    }
                    *open = Some(task_id.clone());
                }
                seen.tasks.fetch_add(1, Ordering::Relaxed);
                {
                    let mut holder = holder.lock().unwrap();
                    for o in &orders {
                        if let Some(other) = holder.insert(o.clone(), id.clone()).filter(|r| *r != id) {
                            seen.two_riders.fetch_add(1, Ordering::Relaxed);
                            eprintln!("order {o} in the tasks of {other} and {id}");
                        }
                    }
                }
                // The ride, while the inbox keeps being read.
                let (client, codes, seen, open, id) =
                    (client.clone(), codes.clone(), seen.clone(), open.clone(), id.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    for o in &orders {
                        publish(&client, format!("riders/{id}/events"), json!({"type": "picked_up", "order_id": o}))
                            .await;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    {
                        let mut open = open.lock().unwrap();
                        if open.as_deref() == Some(task_id.as_str()) {
                            *open = None;
                        }
                    }
                    for o in &orders {
                        let code = codes.lock().unwrap().get(o).cloned();
                        let event = json!({"type": "delivered", "order_id": o, "code": code});
                        publish(&client, format!("riders/{id}/events"), event).await;
                        seen.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        }));
    }
    handles
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
    place_coded(server, key, body).await.map(|(id, _)| id)
}

/// The same, with the order's delivery code.
async fn place_coded(server: &Server, key: &str, body: &Value) -> Option<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = server.order(&admin(), key, body.clone()).await;
        match s {
            201 => {
                return Some((
                    v["id"].as_str()?.to_owned(),
                    v["delivery_code"].as_str().unwrap_or_default().to_owned(),
                ));
            }
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
    nodes.insert("a".into(), node_on_mosquitto(db, nats, "a"));
    seed(&nodes["a"]).await;
    for id in ["b", "c"] {
        nodes.insert(id.into(), node_on_mosquitto(db, nats, id));
    }
    let mut view = cluster_view(&nodes["a"], 3).await;
    restock(&nodes["a"]).await;
    let (_, lat, lng) = stores()[0].clone();
    // Six riders of s0 (ids unique to this run: Mosquitto is shared).
    let prefix = format!("bench{}", std::process::id());
    for i in 0..6 {
        let body = json!({"name": format!("rider {i}"), "store_id": "s0"});
        let (s, v) = nodes["a"].call("PUT", &format!("/v1/riders/{prefix}-r{i}"), Some(&admin()), Some(body)).await;
        assert_eq!(s, 201, "{v}");
    }
    let codes: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>> = Arc::default();
    let seen = Arc::new(Seen::default());
    let riders = fleet(6, &prefix, (lat, lng), codes.clone(), seen.clone()).await;
    let mut times = Vec::new();
    let mut acknowledged: Vec<String> = Vec::new();
    let mut n = 0usize;
    for round in 0..kills {
        let victim = owner_of(&view, "s0");
        let survivor = nodes.keys().find(|k| **k != victim).unwrap().clone();
        // Busy: orders for the victim's region through a survivor, until the kill.
        for _ in 0..20 {
            n += 1;
            let (id, code) =
                place_coded(&nodes[&survivor], &format!("f{n}"), &order_body(lat, lng)).await.expect("placed");
            codes.lock().unwrap().insert(id.clone(), code);
            acknowledged.push(id);
        }
        let mut killed = nodes.remove(&victim).unwrap();
        let t0 = Instant::now();
        killed.kill();
        // The first order sent after the kill that is placed: the region is served again.
        n += 1;
        let placed = place_coded(&nodes[&survivor], &format!("f{n}"), &order_body(lat, lng)).await;
        times.push(t0.elapsed().as_secs_f64());
        let (id, code) = placed.unwrap_or_else(|| panic!("round {round}: not placed"));
        codes.lock().unwrap().insert(id.clone(), code);
        acknowledged.push(id);
        nodes.insert(victim.clone(), node_on_mosquitto(db, nats, &victim));
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
    // The riders' side: a few more seconds for the last tasks, then what they saw.
    tokio::time::sleep(Duration::from_secs(10)).await;
    riders.iter().for_each(|h| h.abort());
    let (mut delivered, mut picked) = (0i64, 0i64);
    for id in &acknowledged {
        let (_, o) = get_retried(any, &format!("/v1/orders/{id}")).await;
        delivered += i64::from(o["status"] == "delivered");
        picked += i64::from(o["status"] == "delivered" || o["status"] == "picked_up");
        if o["status"] != "delivered" && std::env::var("CLUSTER_DEBUG").is_ok() {
            eprintln!("not delivered: {id} {} {}", o["status"], o["rider_id"]);
        }
    }
    // Stock: what left the shelf is what riders picked up, what is held is the rest, and the
    // ledger says the same.
    let (_, stock) = get_retried(any, "/v1/stores/s0/stock").await;
    let line = &stock["lines"][0];
    let (on_hand, reserved) = (line["on_hand"].as_i64().unwrap_or(-1), line["reserved"].as_i64().unwrap_or(-1));
    let in_ledger = common::ledger(db).await.get("s0").copied().unwrap_or_default();
    println!(
        "failover stock: on hand {on_hand} (restocked 1000000, {picked} picked up: {}), reserved {reserved} \
         ({} acknowledged not picked up), ledger (on hand, reserved) {in_ledger:?}",
        if on_hand == 1_000_000 - picked { "agrees" } else { "DISAGREES" },
        acknowledged.len() as i64 - picked,
    );
    println!(
        "failover riders: 6 riders of s0, {} tasks received, {} deliveries sent, {delivered} orders delivered; \
         a second task while one was open: {}; an order in two riders' tasks: {}",
        seen.tasks.load(Ordering::Relaxed),
        seen.delivered.load(Ordering::Relaxed),
        seen.second_task.load(Ordering::Relaxed),
        seen.two_riders.load(Ordering::Relaxed),
    );
}

/// NATS's own cost on this machine, for the model of N machines: core publish → subscribe of
/// 300-byte messages (a relayed frame's size), and the claim of a rider (a key-value create and a
/// delete at its revision, one after the other, as each task costs).
async fn nats_costs(nats: &Nats) {
    use futures_util::StreamExt;
    let client = async_nats::connect(nats.url.as_str()).await.expect("NATS");
    let mut sub = client.subscribe("bench.cost").await.unwrap();
    client.flush().await.unwrap();
    let n = 200_000usize;
    let payload = bytes::Bytes::from(vec![b'x'; 300]);
    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut got = 0usize;
        while got < n {
            if tokio::time::timeout(Duration::from_secs(5), sub.next()).await.ok().flatten().is_none() {
                break;
            }
            got += 1;
        }
        got
    });
    for _ in 0..n {
        client.publish("bench.cost", payload.clone()).await.unwrap();
    }
    client.flush().await.unwrap();
    let got = receiver.await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "NATS core, one publisher and one subscriber in this process: {:.0} k msgs/s of 300 B ({got} of {n} received in {secs:.2} s)",
        got as f64 / secs / 1e3
    );
    let js = async_nats::jetstream::new(client.clone());
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "bench_claims".into(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut times = Vec::new();
    for i in 0..2_000 {
        let t = Instant::now();
        let rev = kv.create(format!("r{}", i % 100), "x".into()).await.unwrap();
        kv.delete_expect_revision(format!("r{}", i % 100), Some(rev)).await.unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "a rider's claim (key-value create + delete at its revision), 2,000 in a row: p50 {:.2} ms, p99 {:.2} ms",
        pct(&mut times, 0.5),
        pct(&mut times, 0.99)
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
    if kills > 0 {
        let scratch = ScratchDb::postgres("ds_bench_failover").await.unwrap();
        failover(&scratch.url, &nats, kills).await;
        scratch.drop_database().await;
    }
    nats_costs(&nats).await;
    if secs == 0 {
        return;
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
