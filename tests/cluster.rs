//! Cluster mode (issue #11), black-box: a `nats-server` with JetStream of the test's own (a
//! temporary directory, a free port), PostgreSQL, three `darkstore serve` nodes. Runs when
//! `DARKSTORE_TEST_POSTGRES` is set and `nats-server` is installed (`scripts/test` sees to both).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Nats, STORE_LAT, STORE_LNG, Server, admin, database_away, eventually, get_retried, ledger, libfaketime, mqtt_of,
    publish, rider_client, token,
};
use darkstore::auth::Role;
use darkstore_db::scratch::ScratchDb;
use futures_util::{SinkExt, StreamExt};
use rumqttc::QoS;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The lease TTL the tests run with (ms).
const TTL_MS: u64 = 2_000;

async fn setup(prefix: &str) -> Option<(Nats, ScratchDb)> {
    let Some(scratch) = ScratchDb::postgres(prefix).await else {
        eprintln!("DARKSTORE_TEST_POSTGRES not set: skipped");
        return None;
    };
    let Some(nats) = Nats::start() else {
        eprintln!("nats-server not installed: skipped");
        scratch.drop_database().await;
        return None;
    };
    Some((nats, scratch))
}

fn node(db: &str, nats: &Nats, id: &str) -> Server {
    Server::start(db, &["--cluster-url", &nats.url, "--node-id", id, "--lease-ttl-ms", &TTL_MS.to_string()])
}

fn signal(server: &Server, sig: &str) {
    let ok = Command::new("kill").args([sig, &server.child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig}");
}

/// Six stores far enough apart to fall in different regions (H3 resolution-5 cells).
fn stores() -> Vec<(String, f64, f64)> {
    (0..6).map(|i| (format!("s{i}"), 12.9 + 0.3 * i as f64, 77.6)).collect()
}

fn order_body(lat: f64, lng: f64) -> Value {
    json!({"lat": lat, "lng": lng, "lines": [{"sku": "milk", "qty": 1}]})
}

/// `/v1/cluster` as `server` sees it once every store's region has an owner among `nodes` live nodes.
async fn settled(server: &Server, nodes: usize) -> Value {
    settled_with(server, nodes, 6).await
}

async fn settled_with(server: &Server, nodes: usize, n_stores: usize) -> Value {
    eventually("every region owned", 30, || async {
        let (s, v) = server.call("GET", "/v1/cluster", Some(&admin()), None).await;
        let regions = v["regions"].as_array()?;
        let stores: usize = regions.iter().map(|r| r["stores"].as_array().map_or(0, Vec::len)).sum();
        let owned = regions.iter().all(|r| r["owner"].is_string());
        (s == 200 && v["nodes"].as_array()?.len() == nodes && stores == n_stores && owned).then_some(v)
    })
    .await
}

fn owner_of(cluster: &Value, store: &str) -> String {
    let region = cluster["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["stores"].as_array().unwrap().iter().any(|s| s == store));
    region.unwrap()["owner"].as_str().unwrap().to_owned()
}

/// Places an order through `server`, retrying a 503 with the same key (what a client may do
/// safely) for up to `secs`; the order's id on a 201.
async fn place(server: &Server, key: &str, body: &Value, secs: u64) -> Result<String, (u16, Value)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (s, v) = server.order(&admin(), key, body.clone()).await;
        match s {
            201 => return Ok(v["id"].as_str().unwrap().to_owned()),
            503 if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => return Err((s, v)),
        }
    }
}

/// The reserved units of every store, as `server` answers them (forwarded to each owner).
async fn reserved(server: &Server) -> BTreeMap<String, (i64, i64)> {
    let mut out = BTreeMap::new();
    for (store, _, _) in stores() {
        let (s, v) = get_retried(server, &format!("/v1/stores/{store}/stock")).await;
        assert_eq!(s, 200, "{store}: {v}");
        let line = &v["lines"][0];
        out.insert(store, (line["on_hand"].as_i64().unwrap(), line["reserved"].as_i64().unwrap()));
    }
    out
}

/// Creates the six stores and the product through `via`.
async fn seed(via: &Server) {
    for (id, lat, lng) in stores() {
        let body = json!({"name": id, "lat": lat, "lng": lng});
        let (s, v) = via.call("PUT", &format!("/v1/stores/{id}"), Some(&admin()), Some(body)).await;
        assert_eq!(s, 201, "{v}");
    }
    let product = json!({"name": "Milk", "category": "dairy", "price_minor": 4500});
    assert_eq!(via.call("PUT", "/v1/catalog/milk", Some(&admin()), Some(product)).await.0, 201);
}

/// What `server` holds reserved is one unit for each of the `placed` orders, and the ledger
/// agrees.
async fn audit(server: &Server, db_url: &str, placed: i64) {
    let now = reserved(server).await;
    assert_eq!(now.values().map(|(_, r)| r).sum::<i64>(), placed, "{now:?}");
    assert_eq!(now, ledger(db_url).await, "memory and the ledger agree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_regions_forward_requests_and_fail_over() {
    let Some((nats, scratch)) = setup("ds_cluster").await else { return };
    let a = node(&scratch.url, &nats, "a");
    let admin = admin();
    seed(&a).await;
    let b = node(&scratch.url, &nats, "b");
    let c = node(&scratch.url, &nats, "c");
    let nodes: HashMap<&str, &Server> = [("a", &a), ("b", &b), ("c", &c)].into();
    settled(&a, 3).await;
    settled(&b, 3).await;
    let cluster = settled(&c, 3).await;
    let owners: std::collections::HashSet<String> = stores().iter().map(|(s, _, _)| owner_of(&cluster, s)).collect();
    assert!(owners.len() >= 2, "regions spread over the nodes: {cluster}");
    // Stock through any node (each write runs on its region's owner).
    for (i, (id, _, _)) in stores().iter().enumerate() {
        let via = [&a, &b, &c][i % 3];
        let (s, v) = via
            .call(
                "POST",
                &format!("/v1/stores/{id}/stock"),
                Some(&admin),
                Some(json!({"sku": "milk", "delta": 100, "reason": "restock"})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    // Every node takes orders for every region.
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    for (via_name, via) in &nodes {
        for (store, lat, lng) in stores() {
            let id = place(via, &format!("k-{via_name}-{store}"), &order_body(lat, lng), 10).await.expect("placed");
            acknowledged.push((id, store));
        }
    }
    // The order's node answers for it whichever node is asked.
    let (id, store) = &acknowledged[0];
    for via in [&a, &b, &c] {
        let (s, v) = via.call("GET", &format!("/v1/orders/{id}"), Some(&admin), None).await;
        assert_eq!((s, v["store_id"].as_str()), (200, Some(store.as_str())), "{v}");
    }

    // A burst through the two survivors while the owner of s0's region is killed.
    let victim = owner_of(&cluster, "s0");
    let survivors: Vec<&Server> = nodes.iter().filter(|(n, _)| **n != victim).map(|(_, s)| *s).collect();
    let victim_stores: Vec<String> =
        stores().iter().map(|(s, _, _)| s.clone()).filter(|s| owner_of(&cluster, s) == victim).collect();
    let kill_at = Duration::from_millis(300);
    let started = Instant::now();
    let burst = async {
        let mut out = Vec::new();
        // From the kill to the answer of the first order for the victim's regions sent after it.
        let mut served_again: Option<Duration> = None;
        for n in 0..60 {
            let (store, lat, lng) = &stores()[n % 6];
            let via = survivors[n % 2];
            let sent = started.elapsed();
            let id = place(via, &format!("burst-{n}"), &order_body(*lat, *lng), 30).await.expect("burst order");
            if victim_stores.contains(store) && sent >= kill_at && served_again.is_none() {
                served_again = Some(started.elapsed() - kill_at);
            }
            out.push((id, store.clone()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (out, served_again)
    };
    let kill = async {
        tokio::time::sleep(kill_at.saturating_sub(started.elapsed())).await;
        signal(nodes[victim.as_str()], "-KILL");
    };
    let ((burst, served_again), ()) = tokio::join!(burst, kill);
    acknowledged.extend(burst);
    let served_again = served_again.expect("the victim's regions took orders again");
    eprintln!("victim {victim}: its regions served again {served_again:?} after the kill (TTL {TTL_MS} ms)");
    // The target is TTL + 3 s (p99 over many kills, in BENCHMARKS.md); a loaded CI machine gets slack.
    assert!(served_again < Duration::from_millis(TTL_MS + 8_000), "{served_again:?}");

    // Nothing acknowledged is lost, nothing is reserved twice, and memory agrees with the ledger.
    let survivor = survivors[0];
    settled(survivor, 2).await;
    for (id, store) in &acknowledged {
        let (s, v) = get_retried(survivor, &format!("/v1/orders/{id}")).await;
        assert_eq!((s, v["store_id"].as_str()), (200, Some(store.as_str())), "{id}: {v}");
    }
    let mut per_store: BTreeMap<String, i64> = BTreeMap::new();
    for (_, store) in &acknowledged {
        *per_store.entry(store.clone()).or_default() += 1;
    }
    let stock = reserved(survivor).await;
    for (store, (on_hand, held)) in &stock {
        assert_eq!((*on_hand, *held), (100, per_store[store]), "{store}: every acknowledged order holds one unit");
    }
    assert_eq!(ledger(&scratch.url).await, stock, "memory agrees with the ledger");

    // A node paused past its lease (SIGSTOP) loses its regions and, woken, commits nothing.
    let cluster = settled(survivor, 2).await;
    let paused_name = owner_of(&cluster, "s1");
    let paused = nodes[paused_name.as_str()];
    let other = survivors.iter().find(|s| s.base != paused.base).copied().unwrap();
    signal(paused, "-STOP");
    let stopped_at = Instant::now();
    // A stock change forwarded to the paused owner gets no answer: it may have been received, and
    // it carries no Idempotency-Key, so the client is told 504 (read back first), not "try again".
    let restock = json!({"sku": "milk", "delta": 1, "reason": "restock"});
    let (s, v) = other.call("POST", "/v1/stores/s1/stock", Some(&admin), Some(restock)).await;
    assert_eq!((s, v["error"].as_str()), (504, Some("owner_timeout")), "{v}");
    tokio::time::sleep((stopped_at + Duration::from_millis(TTL_MS + 1_500)).saturating_duration_since(Instant::now()))
        .await;
    let (_, lat, lng) = stores()[1].clone();
    let id = place(other, "after-pause", &order_body(lat, lng), 30).await.expect("served by the other node");
    acknowledged.push((id, "s1".into()));
    signal(paused, "-CONT");
    // Woken, it hears it lost the lease, and asks the owner for what it no longer holds.
    let id =
        place(paused, "through-the-woken-node", &order_body(lat, lng), 30).await.expect("placed via the woken node");
    acknowledged.push((id, "s1".into()));
    let cluster = settled(other, 2).await;
    eprintln!("after the pause: {cluster}");
    let stock = reserved(other).await;
    let s1 = acknowledged.iter().filter(|(_, s)| s == "s1").count() as i64;
    assert_eq!(stock["s1"], (100, s1));
    assert_eq!(ledger(&scratch.url).await, stock, "memory agrees with the ledger after the pause");
    drop((a, b, c));
    scratch.drop_database().await;
}

#[tokio::test]
async fn cluster_mode_refuses_what_it_cannot_do() {
    let Some((nats, scratch)) = setup("ds_cluster_refuse").await else { return };
    let run = |db: &str, extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_darkstore"))
            .args(["serve", "--http", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0", "--database-url", db])
            .args(["--jwt-secret", common::SECRET])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // SQLite: the nodes need one shared database.
    let sqlite = ScratchDb::sqlite("ds_cluster_sqlite");
    let err = run(&sqlite.url, &["--cluster-url", &nats.url, "--node-id", "x"]);
    assert!(err.contains("PostgreSQL"), "{err}");
    // NATS not there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = run(&scratch.url, &["--cluster-url", &format!("nats://127.0.0.1:{dead}"), "--node-id", "x"]);
    assert!(err.contains("--cluster-url") && err.contains("NATS"), "{err}");
    // A node id that a live node has.
    let first = node(&scratch.url, &nats, "twin");
    let err = run(&scratch.url, &["--cluster-url", &nats.url, "--node-id", "twin"]);
    assert!(err.contains("--node-id twin is in use"), "{err}");
    // A bad id.
    let err = run(&scratch.url, &["--cluster-url", &nats.url, "--node-id", "a.b"]);
    assert!(err.contains("--node-id"), "{err}");
    // A store moves within its region, never to another (its stock and orders live on the
    // region's owner).
    let put = |lat: f64, lng: f64| {
        let first = &first;
        async move {
            let body = json!({"name": "Moving", "lat": lat, "lng": lng});
            first.call("PUT", "/v1/stores/moving", Some(&admin()), Some(body)).await
        }
    };
    let (s, v) = put(common::STORE_LAT, common::STORE_LNG).await;
    assert_eq!(s, 201, "{v}");
    settled_with(&first, 1, 1).await;
    let (s, v) = put(common::STORE_LAT + 0.001, common::STORE_LNG).await;
    assert_eq!(s, 200, "a move within the region: {v}");
    let (s, v) = put(common::STORE_LAT + 1.0, common::STORE_LNG).await;
    assert_eq!((s, v["error"].as_str()), (409, Some("conflict")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("create a new store"), "{v}");
    let (_, v) = first.call("GET", "/v1/stores/moving", Some(&admin()), None).await;
    assert_eq!(v["lat"].as_f64(), Some(common::STORE_LAT + 0.001), "the refused move changed nothing: {v}");
    // One node: /v1/cluster is not there.
    drop(first);
    let single = Server::start(&scratch.url, &[]);
    assert_eq!(single.call("GET", "/v1/cluster", Some(&admin()), None).await.0, 404);
    drop(single);
    sqlite.drop_database().await;
    scratch.drop_database().await;
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The first frame on `topic` of type `kind` that `want` accepts, within 20 s (others skipped).
async fn frame_where(ws: &mut Ws, topic: &str, kind: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match tokio::time::timeout(left, ws.next()).await {
            Ok(m) => m.unwrap().unwrap(),
            Err(_) => panic!("no {kind} frame on {topic} as wanted; saw {seen:?}"),
        };
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["topic"] == topic && v["type"] == kind && want(&v) {
                return v;
            }
            if v["type"] != "rider" {
                seen.push(v);
            }
        }
    }
}

/// A rider connected to one node's broker, and a dashboard on that node, while the store's region
/// is owned by the other: the rider is dispatched by the owner, gets its task, delivers, and the
/// dashboard follows it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn riders_and_feeds_reach_every_node() {
    let Some((nats, scratch)) = setup("ds_cluster_feeds").await else { return };
    let flags = |id: &'static str| {
        vec!["--cluster-url", nats.url.as_str(), "--node-id", id, "--lease-ttl-ms", "2000", "--dispatch-tick-ms", "200"]
    };
    let a = Server::start(&scratch.url, &flags("a"));
    let b = Server::start(&scratch.url, &flags("b"));
    let admin = admin();
    let store = json!({"name": "Indiranagar", "lat": STORE_LAT, "lng": STORE_LNG});
    assert_eq!(a.call("PUT", "/v1/stores/s1", Some(&admin), Some(store)).await.0, 201);
    let product = json!({"name": "Milk", "category": "dairy", "price_minor": 4500});
    assert_eq!(a.call("PUT", "/v1/catalog/milk", Some(&admin), Some(product)).await.0, 201);
    let cluster = settled_with(&b, 2, 1).await;
    settled_with(&a, 2, 1).await;
    let restock = json!({"sku": "milk", "delta": 10, "reason": "restock"});
    assert_eq!(b.call("POST", "/v1/stores/s1/stock", Some(&admin), Some(restock)).await.0, 200);
    let owner_name = owner_of(&cluster, "s1");
    let (owner, other) = if owner_name == "a" { (&a, &b) } else { (&b, &a) };

    // The dashboard on the node that does not own the store: its snapshot comes from the owner.
    let url = format!("{}/v1/ws?token={admin}", other.base.replace("http://", "ws://"));
    let mut ws: Ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
    ws.send(Message::Text(json!({"op": "subscribe", "topic": "store/s1"}).to_string().into())).await.unwrap();
    let snap = frame_where(&mut ws, "store/s1", "snapshot", |_| true).await;
    assert_eq!(snap["data"]["stock"][0]["on_hand"], 10, "{snap}");

    // A rider registered on, and connected to, the other node.
    let (s, v) =
        other.call("PUT", "/v1/riders/r1", Some(&admin), Some(json!({"name": "Ravi", "store_id": "s1"}))).await;
    assert_eq!(s, 201, "{v}");
    let rider_token = token(Role::Rider, "r1", None);
    let (client, mut inbox, accepted) = rider_client(&mqtt_of(other), "r1", Some(rider_token.clone())).await;
    assert!(accepted);
    client.subscribe("riders/r1/tasks", QoS::AtLeastOnce).await.unwrap();
    // The owner hears of the rider (catalog) and of its shift and position (relayed).
    eventually("the owner knows the rider", 15, || async {
        let (s, _) = owner.call("GET", "/v1/riders/r1", Some(&admin), None).await;
        (s == 200).then_some(())
    })
    .await;
    publish(&client, "riders/r1/shift".into(), json!({"on_shift": true})).await;
    let now = common::now_ms();
    publish(&client, "riders/r1/location".into(), json!({"lat": STORE_LAT + 0.002, "lng": STORE_LNG, "ts": now})).await;
    eventually("the owner sees the rider on shift, near the store", 15, || async {
        let (_, v) = owner.call("GET", "/v1/riders/r1", Some(&admin), None).await;
        (v["on_shift"] == true && v["lat"].is_number()).then_some(())
    })
    .await;

    // A customer orders through the other node; staff pack it there too.
    let alice = token(Role::Customer, "alice", None);
    let body = json!({"lat": STORE_LAT + 0.001, "lng": STORE_LNG, "lines": [{"sku": "milk", "qty": 2}]});
    let (s, order) = other.order(&alice, "cross-1", body).await;
    assert_eq!(s, 201, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    let code = order["delivery_code"].as_str().unwrap().to_owned();
    let staff = token(Role::Staff, "sam", Some("s1"));
    assert_eq!(other.call("POST", &format!("/v1/orders/{id}/packed"), Some(&staff), None).await.0, 200);

    // The owner dispatches it; the task reaches the rider on the other node's broker.
    let (topic, task) = tokio::time::timeout(Duration::from_secs(15), inbox.recv()).await.expect("a task").unwrap();
    assert_eq!((topic.as_str(), task["orders"][0]["id"].as_str()), ("riders/r1/tasks", Some(id.as_str())), "{task}");
    frame_where(&mut ws, "store/s1", "order", |f| f["data"]["id"] == id.as_str() && f["data"]["status"] == "assigned")
        .await;
    // Its events go in on the other node and change the order on the owner.
    for kind in ["picked_up", "delivered"] {
        publish(&client, "riders/r1/events".into(), json!({"type": kind, "order_id": id, "code": code})).await;
    }
    frame_where(&mut ws, "store/s1", "order", |f| f["data"]["id"] == id.as_str() && f["data"]["status"] == "delivered")
        .await;
    let (_, o) = other.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
    assert_eq!(o["status"], "delivered", "{o}");
    let line = other.stock_line("s1", "milk").await;
    assert_eq!((line["on_hand"].as_i64(), line["reserved"].as_i64()), (Some(8), Some(0)), "{line}");
    drop((a, b));
    scratch.drop_database().await;
}

/// Two points about 900 m apart on either side of a region border (H3 resolution-5 cells), east
/// of the usual store: (west, east, west's region, east's region).
fn across_a_border() -> ((f64, f64), (f64, f64), String, String) {
    let region = |lng: f64| darkstore::cluster::region_of(STORE_LAT, lng).unwrap();
    let start = region(STORE_LNG);
    let mut lng = STORE_LNG;
    while region(lng) == start {
        lng += 0.0005;
        assert!(lng < STORE_LNG + 1.0, "no border found");
    }
    let (west, east) = ((STORE_LAT, lng - 0.0045), (STORE_LAT, lng + 0.0045));
    let (rw, re) = (region(west.1), region(east.1));
    assert_ne!(rw, re);
    (west, east, rw, re)
}

/// The border rule: an idle rider of one region standing by a store of the neighbouring region,
/// whose owner is another node, is lent to that owner and given its order; while it has that task
/// its home region's owner cannot give it another (the claim in the `darkstore_riders` bucket);
/// once it has delivered, it works for its home region again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rider_near_a_border_is_lent_and_never_has_two_tasks() {
    border_case(false).await;
}

/// The same, with the node the rider was lent to killed while the rider holds its task: the
/// survivor takes the region, rebuilds the task and holds the rider's claim; the rider delivers
/// through it, and only then gets its home store's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lent_riders_task_survives_its_lenders_death() {
    border_case(true).await;
}

async fn border_case(kill_lender: bool) {
    let Some((nats, scratch)) = setup(if kill_lender { "ds_cluster_border_kill" } else { "ds_cluster_border" }).await
    else {
        return;
    };
    let (west, east, r_west, r_east) = across_a_border();
    // Two node ids whose owners of the two regions differ.
    let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let (n1, n2) = names
        .iter()
        .flat_map(|x| names.iter().map(move |y| (*x, *y)))
        .find(|(x, y)| {
            let owner = |r: &str| darkstore::cluster::hash::owner(r, [*x, *y]).unwrap();
            x != y && owner(&r_west) == *x && owner(&r_east) == *y
        })
        .expect("two node ids that split the regions");
    let flags = |id: &'static str| {
        vec!["--cluster-url", nats.url.as_str(), "--node-id", id, "--lease-ttl-ms", "2000", "--dispatch-tick-ms", "200"]
    };
    let (home, neighbour) = (Server::start(&scratch.url, &flags(n1)), Server::start(&scratch.url, &flags(n2)));
    let admin = admin();
    for (id, (lat, lng)) in [("west", west), ("east", east)] {
        let body = json!({"name": id, "lat": lat, "lng": lng});
        assert_eq!(home.call("PUT", &format!("/v1/stores/{id}"), Some(&admin), Some(body)).await.0, 201);
    }
    let product = json!({"name": "Milk", "category": "dairy", "price_minor": 4500});
    assert_eq!(home.call("PUT", "/v1/catalog/milk", Some(&admin), Some(product)).await.0, 201);
    let cluster = settled_with(&neighbour, 2, 2).await;
    settled_with(&home, 2, 2).await;
    assert_eq!((owner_of(&cluster, "west"), owner_of(&cluster, "east")), (n1.to_owned(), n2.to_owned()));
    for store in ["west", "east"] {
        let restock = json!({"sku": "milk", "delta": 10, "reason": "restock"});
        let (s, v) = home.call("POST", &format!("/v1/stores/{store}/stock"), Some(&admin), Some(restock)).await;
        assert_eq!(s, 200, "{v}");
    }

    // A rider of the west store, connected to its home owner's broker, idle at the east store.
    let (s, v) =
        home.call("PUT", "/v1/riders/r1", Some(&admin), Some(json!({"name": "Ravi", "store_id": "west"}))).await;
    assert_eq!(s, 201, "{v}");
    let (client, mut inbox, accepted) = rider_client(&mqtt_of(&home), "r1", Some(token(Role::Rider, "r1", None))).await;
    assert!(accepted);
    client.subscribe("riders/r1/tasks", QoS::AtLeastOnce).await.unwrap();
    eventually("the neighbour knows the rider", 15, || async {
        (neighbour.call("GET", "/v1/riders/r1", Some(&admin), None).await.0 == 200).then_some(())
    })
    .await;
    publish(&client, "riders/r1/shift".into(), json!({"on_shift": true})).await;
    let at_east = json!({"lat": east.0, "lng": east.1, "ts": common::now_ms()});
    publish(&client, "riders/r1/location".into(), at_east).await;
    for server in [&home, &neighbour] {
        eventually("the rider on shift at the east store", 15, || async {
            let (_, v) = server.call("GET", "/v1/riders/r1", Some(&admin), None).await;
            (v["on_shift"] == true && v["lat"].is_number()).then_some(())
        })
        .await;
    }

    let alice = token(Role::Customer, "alice", None);
    let order_at = |(lat, lng): (f64, f64), dlng: f64| json!({"lat": lat + 0.001, "lng": lng + dlng, "lines": [{"sku": "milk", "qty": 1}]});
    // An order at the east store, which has no rider of its own: the neighbour borrows r1.
    let (s, east_order) = neighbour.order(&alice, "east-1", order_at(east, 0.002)).await;
    assert_eq!(s, 201, "{east_order}");
    let east_id = east_order["id"].as_str().unwrap().to_owned();
    let code = east_order["delivery_code"].as_str().unwrap().to_owned();
    let east_staff = token(Role::Staff, "sue", Some("east"));
    assert_eq!(neighbour.call("POST", &format!("/v1/orders/{east_id}/packed"), Some(&east_staff), None).await.0, 200);
    let (_, task) = tokio::time::timeout(Duration::from_secs(20), inbox.recv()).await.expect("a task").unwrap();
    assert_eq!(task["orders"][0]["id"], east_id.as_str(), "{task}");
    let (_, v) = home.call("GET", "/v1/cluster", Some(&admin), None).await;
    let claim = json!({"id": "r1", "node": n2, "region": r_east});
    assert!(v["riders"].as_array().unwrap().contains(&claim), "{v}");

    let mut neighbour = Some(neighbour);
    if kill_lender {
        // The lender dies with the task open; the home node takes its region and the claim.
        signal(neighbour.as_ref().unwrap(), "-KILL");
        neighbour = None;
        // The rider picks the order up while its region has no owner: the survivor, which heard
        // the event and let it be, applies it once it holds the order.
        publish(&client, "riders/r1/events".into(), json!({"type": "picked_up", "order_id": east_id})).await;
        eventually("the survivor holds the lent rider's claim", 30, || async {
            let (_, v) = home.call("GET", "/v1/cluster", Some(&admin), None).await;
            let claim = json!({"id": "r1", "node": n1, "region": r_east});
            v["riders"].as_array()?.contains(&claim).then_some(())
        })
        .await;
        eventually("the pickup heard before the takeover is applied", 10, || async {
            let (_, o) = home.call("GET", &format!("/v1/orders/{east_id}"), Some(&admin), None).await;
            (o["status"] == "picked_up" && o["rider_id"] == "r1").then_some(())
        })
        .await;
    }
    let survivor = neighbour.as_ref().unwrap_or(&home);

    // While it rides for the neighbour, an order at its home store is not given to it: it waits.
    let (s, west_order) = home.order(&alice, "west-1", order_at(west, -0.002)).await;
    assert_eq!(s, 201, "{west_order}");
    let west_id = west_order["id"].as_str().unwrap().to_owned();
    let staff = token(Role::Staff, "sam", Some("west"));
    assert_eq!(home.call("POST", &format!("/v1/orders/{west_id}/packed"), Some(&staff), None).await.0, 200);
    let second = tokio::time::timeout(Duration::from_secs(4), inbox.recv()).await;
    assert!(second.is_err(), "a second task while the first is open: {second:?}");
    let (_, o) = home.call("GET", &format!("/v1/orders/{west_id}"), Some(&admin), None).await;
    assert_eq!(o["status"], "packed", "{o}");

    // It delivers the east order; its claim goes, and its home owner gives it the west order.
    for kind in ["picked_up", "delivered"] {
        publish(&client, "riders/r1/events".into(), json!({"type": kind, "order_id": east_id, "code": code})).await;
    }
    let (_, task) = tokio::time::timeout(Duration::from_secs(20), inbox.recv()).await.expect("the next task").unwrap();
    assert_eq!(task["orders"][0]["id"], west_id.as_str(), "{task}");
    let (_, o) = survivor.call("GET", &format!("/v1/orders/{east_id}"), Some(&admin), None).await;
    assert_eq!(o["status"], "delivered", "{o}");
    eventually("the claim is the home owner's", 10, || async {
        let (_, v) = survivor.call("GET", "/v1/cluster", Some(&admin), None).await;
        let claim = json!({"id": "r1", "node": n1, "region": r_west});
        v["riders"].as_array()?.contains(&claim).then_some(())
    })
    .await;
    drop((home, neighbour));
    scratch.drop_database().await;
}

/// A rolling restart of all three nodes (SIGTERM: each hands its regions off first) while a client
/// keeps ordering through whichever node answers, retrying with the same key: every order is
/// placed once, and stock agrees with the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_fails_no_request_beyond_safe_retries() {
    let Some((nats, scratch)) = setup("ds_cluster_rolling").await else { return };
    let admin = admin();
    let mut nodes: Vec<Server> = vec![node(&scratch.url, &nats, "a")];
    for (id, lat, lng) in stores() {
        let (s, _) = nodes[0]
            .call("PUT", &format!("/v1/stores/{id}"), Some(&admin), Some(json!({"name": id, "lat": lat, "lng": lng})))
            .await;
        assert_eq!(s, 201);
    }
    let product = json!({"name": "Milk", "category": "dairy", "price_minor": 4500});
    assert_eq!(nodes[0].call("PUT", "/v1/catalog/milk", Some(&admin), Some(product)).await.0, 201);
    nodes.push(node(&scratch.url, &nats, "b"));
    nodes.push(node(&scratch.url, &nats, "c"));
    for n in &nodes {
        settled(n, 3).await;
    }
    // Settled as each node sees it; the hand-offs of the last joins may still be under way.
    tokio::time::sleep(Duration::from_millis(TTL_MS)).await;
    for (id, _, _) in stores() {
        let body = json!({"sku": "milk", "delta": 1000, "reason": "restock"});
        assert_eq!(nodes[0].call("POST", &format!("/v1/stores/{id}/stock"), Some(&admin), Some(body)).await.0, 200);
    }
    let mut placed: Vec<(String, String)> = Vec::new();
    let mut n = 0;
    for restarting in 0..3 {
        let id = ["a", "b", "c"][restarting];
        // Stop it gracefully, order through the others meanwhile, start it again.
        let status = nodes[restarting].terminate();
        assert!(status.success(), "{id} stopped cleanly: {status:?}");
        for _ in 0..12 {
            let (store, lat, lng) = &stores()[n % 6];
            let via = &nodes[(restarting + 1 + n % 2) % 3];
            let order = place(via, &format!("roll-{n}"), &order_body(*lat, *lng), 30).await.expect("placed");
            placed.push((order, store.clone()));
            n += 1;
        }
        nodes[restarting] = node(&scratch.url, &nats, id);
        settled(&nodes[restarting], 3).await;
    }
    let cluster = settled(&nodes[0], 3).await;
    for (id, store) in &placed {
        let (s, v) = get_retried(&nodes[0], &format!("/v1/orders/{id}")).await;
        assert_eq!((s, v["store_id"].as_str()), (200, Some(store.as_str())), "{id}: {v}");
    }
    let stock = reserved(&nodes[1]).await;
    for (store, (on_hand, held)) in &stock {
        let expected = placed.iter().filter(|(_, s)| s == store).count() as i64;
        assert_eq!((*on_hand, *held), (1000, expected), "{store} ({cluster})");
    }
    assert_eq!(ledger(&scratch.url).await, stock);
    drop(nodes);
    scratch.drop_database().await;
}

/// NATS goes away mid-run: the node stops taking writes it can no longer prove it owns (503) and
/// says it is not ready; NATS comes back: the node serves again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_down_stops_writes_and_its_return_resumes_them() {
    let Some((mut nats, scratch)) = setup("ds_cluster_nats_down").await else { return };
    let admin = admin();
    let a = node(&scratch.url, &nats, "a");
    let store = json!({"name": "Indiranagar", "lat": STORE_LAT, "lng": STORE_LNG});
    assert_eq!(a.call("PUT", "/v1/stores/s1", Some(&admin), Some(store)).await.0, 201);
    let product = json!({"name": "Milk", "category": "dairy", "price_minor": 4500});
    assert_eq!(a.call("PUT", "/v1/catalog/milk", Some(&admin), Some(product)).await.0, 201);
    settled_with(&a, 1, 1).await;
    let restock = json!({"sku": "milk", "delta": 100, "reason": "restock"});
    assert_eq!(a.call("POST", "/v1/stores/s1/stock", Some(&admin), Some(restock)).await.0, 200);
    let body = json!({"lat": STORE_LAT, "lng": STORE_LNG, "lines": [{"sku": "milk", "qty": 1}]});
    assert!(place(&a, "before", &body, 10).await.is_ok());

    nats.stop();
    // Within the lease's trust (¾ TTL) plus a round, writes are refused and readiness drops.
    tokio::time::sleep(Duration::from_millis(TTL_MS * 3 / 2)).await;
    let (s, v) = a.order(&admin, "while-down", body.clone()).await;
    assert_eq!(s, 503, "{v}");
    let ready = a.client.get(a.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    nats.restart();
    // The same key, retried: placed once NATS is back.
    let id = place(&a, "while-down", &body, 30).await.expect("placed after NATS came back");
    let (s, again) = a.order(&admin, "while-down", body.clone()).await;
    assert_eq!((s, again["id"].as_str()), (201, Some(id.as_str())), "a replay, not a second order");
    let stock = get_retried(&a, "/v1/stores/s1/stock").await.1;
    assert_eq!(stock["lines"][0]["reserved"], 2, "{stock}");
    drop(a);
    scratch.drop_database().await;
}

/// PostgreSQL away in cluster mode: writes are a quick 503 through every node (run on the owner or
/// forwarded to it) and reads from memory still answer; a node killed meanwhile leaves its regions
/// without an owner (taking one needs the database: the fence, then the load); when the database
/// returns, the survivor takes them and writes resume through it, with nothing lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_away_is_503_on_every_node_and_its_return_resumes_writes() {
    let Some((nats, scratch)) = setup("ds_cluster_pg_away").await else { return };
    let admin = admin();
    let a = node(&scratch.url, &nats, "a");
    seed(&a).await;
    let mut b = node(&scratch.url, &nats, "b");
    settled(&a, 2).await;
    settled(&b, 2).await;
    let restock = json!({"sku": "milk", "delta": 100, "reason": "restock"});
    for (id, _, _) in stores() {
        let (s, v) = a.call("POST", &format!("/v1/stores/{id}/stock"), Some(&admin), Some(restock.clone())).await;
        assert_eq!(s, 200, "{v}");
    }
    let mut placed = 0;
    for (store, lat, lng) in stores() {
        place(&a, &format!("before-{store}"), &order_body(lat, lng), 10).await.expect("placed");
        placed += 1;
    }

    database_away(&scratch.url, true).await;
    for (via_name, via) in [("a", &a), ("b", &b)] {
        for (store, lat, lng) in stores() {
            let started = Instant::now();
            let (s, v) = via.order(&admin, &format!("away-{via_name}-{store}"), order_body(lat, lng)).await;
            assert_eq!(s, 503, "{store} through {via_name}: {v}");
            assert!(started.elapsed() < Duration::from_secs(4), "{store} through {via_name}: {:?}", started.elapsed());
        }
    }
    let (store, lat, lng) = stores()[0].clone();
    let point = format!("/v1/availability?lat={lat}&lng={lng}");
    for via in [&a, &b] {
        let (s, v) = via.call("GET", &point, None, None).await;
        assert_eq!((s, v["store_id"].as_str()), (200, Some(store.as_str())), "reads answer from memory: {v}");
    }
    // A node dies while the database is away: its regions cannot be taken yet.
    b.kill();
    tokio::time::sleep(Duration::from_millis(TTL_MS * 2)).await;
    for (store, lat, lng) in stores() {
        let (s, v) = a.order(&admin, &format!("away-a-{store}"), order_body(lat, lng)).await;
        assert_eq!(s, 503, "{store}: {v}");
    }

    database_away(&scratch.url, false).await;
    // The survivor owns every region and takes orders for each; a key retried from the outage
    // places its order once.
    let cluster = settled(&a, 1).await;
    assert!(stores().iter().all(|(s, _, _)| owner_of(&cluster, s) == "a"), "{cluster}");
    for (store, lat, lng) in stores() {
        let key = format!("away-a-{store}");
        let id = place(&a, &key, &order_body(lat, lng), 30).await.expect("placed after the database came back");
        let (s, again) = a.order(&admin, &key, order_body(lat, lng)).await;
        assert_eq!((s, again["id"].as_str()), (201, Some(id.as_str())), "a replay, not a second order");
        placed += 1;
    }
    audit(&a, &scratch.url, placed).await;
    drop(a);
    scratch.drop_database().await;
}

/// Clocks skewed between nodes: ownership depends on no wall clock (the buckets' TTLs are the
/// NATS server's, and a node trusts its own lease by its monotonic clock), so a node whose wall
/// clock runs 20 s behind another's (libfaketime) shares the regions, answers for any of them,
/// and takes a killed node's regions as soon as any node would (a lease read off a wall clock 20 s
/// behind would keep them 20 s longer), with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clocks_skewed_between_nodes_change_nothing_in_ownership() {
    let Some(faketime) = libfaketime() else {
        eprintln!("libfaketime not installed (Debian package faketime): skipped");
        return;
    };
    let Some((nats, scratch)) = setup("ds_cluster_skew").await else { return };
    let admin = admin();
    let mut a = node(&scratch.url, &nats, "a");
    seed(&a).await;
    let flags = ["--cluster-url", nats.url.as_str(), "--node-id", "b", "--lease-ttl-ms", "2000"];
    // The wall clock only: its monotonic clock is the machine's.
    let skew = [("LD_PRELOAD", faketime.as_str()), ("FAKETIME", "-20s"), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")];
    let b = Server::start_with_env(&scratch.url, &flags, &skew);
    settled(&a, 2).await;
    let cluster = settled(&b, 2).await;
    let owners: std::collections::HashSet<String> = stores().iter().map(|(s, _, _)| owner_of(&cluster, s)).collect();
    assert_eq!(owners.len(), 2, "both nodes own regions: {cluster}");
    let restock = json!({"sku": "milk", "delta": 100, "reason": "restock"});
    for (id, _, _) in stores() {
        let (s, v) = b.call("POST", &format!("/v1/stores/{id}/stock"), Some(&admin), Some(restock.clone())).await;
        assert_eq!(s, 200, "{v}");
    }
    let mut placed = 0;
    for (via_name, via) in [("a", &a), ("b", &b)] {
        for (store, lat, lng) in stores() {
            let id = place(via, &format!("{via_name}-{store}"), &order_body(lat, lng), 10).await.expect("placed");
            placed += 1;
            // The skewed node stamps what it commits with its own clock.
            let (_, o) = get_retried(&a, &format!("/v1/orders/{id}")).await;
            let created = humantime::parse_rfc3339(o["created_at"].as_str().unwrap()).unwrap();
            let behind =
                std::time::SystemTime::now().duration_since(created).is_ok_and(|d| d > Duration::from_secs(10));
            assert_eq!(behind, owner_of(&cluster, &store) == "b", "{o}");
        }
    }
    // The node on the right clock dies: the skewed one takes its regions in about a TTL (the
    // bound is loose: a timing, not a benchmark).
    let killed = Instant::now();
    a.kill();
    for (store, lat, lng) in stores() {
        place(&b, &format!("after-{store}"), &order_body(lat, lng), 30).await.expect("placed after the kill");
        placed += 1;
    }
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(15), "every region served again after {took:?}");
    audit(&b, &scratch.url, placed).await;
    drop(b);
    scratch.drop_database().await;
}

/// Rate limits count a client once, on the node it reached: a forwarded request is not limited
/// again by the owner (where every anonymous client would share one budget, having no address).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_request_is_rate_limited_once() {
    let Some((nats, scratch)) = setup("ds_cluster_limits").await else { return };
    let flags = |id: &'static str| {
        vec!["--cluster-url", nats.url.as_str(), "--node-id", id, "--lease-ttl-ms", "2000"]
            .into_iter()
            .chain(["--rate-limit-per-sec", "1", "--rate-limit-burst", "5"])
            .collect::<Vec<_>>()
    };
    let a = Server::start(&scratch.url, &flags("a"));
    let b = Server::start(&scratch.url, &flags("b"));
    let admin = admin();
    let store = json!({"name": "Indiranagar", "lat": STORE_LAT, "lng": STORE_LNG});
    assert_eq!(a.call("PUT", "/v1/stores/s1", Some(&admin), Some(store)).await.0, 201);
    let cluster = settled_with(&a, 2, 1).await;
    settled_with(&b, 2, 1).await;
    let other = if owner_of(&cluster, "s1") == "a" { &b } else { &a };
    let url = other.url(&format!("/v1/availability?lat={STORE_LAT}&lng={STORE_LNG}"));
    // Three anonymous clients on three addresses, each within its own burst of 5.
    for last in 2..=4u8 {
        let client =
            reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, last])).build().unwrap();
        for i in 0..5 {
            let s = client.get(&url).send().await.unwrap().status().as_u16();
            assert_eq!(s, 200, "client 127.0.0.{last}, request {i}");
        }
        // Its sixth is over its own budget, on the node it reached.
        assert_eq!(client.get(&url).send().await.unwrap().status().as_u16(), 429);
    }
    drop((a, b));
    scratch.drop_database().await;
}
