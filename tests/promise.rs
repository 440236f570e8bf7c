//! The quote comes from the state of the store: its queue and its riders, not the map alone;
//! the fee follows supply and demand; the live ETA follows the rider.

mod common;

use std::time::Duration;

use common::{STORE_LAT, STORE_LNG, Server, admin, metric, mqtt_of, now_ms, order_body, publish, rider_client, token};
use darkstore::auth::Role;
use darkstore_db::scratch::ScratchDb;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Every frame on `topic` that arrives within `secs` (0: only those already here).
async fn drain(ws: &mut Ws, topic: &str, secs: u64) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut out = Vec::new();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["topic"] == topic {
                out.push(v);
            }
        }
    }
    out
}

/// The next frame on `topic` of type `kind` within `secs`, skipping others; None when none came.
async fn next_of(ws: &mut Ws, topic: &str, kind: &str, secs: u64) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()?.expect("open").unwrap();
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["topic"] == topic && v["type"] == kind {
                return Some(v);
            }
        }
    }
}

fn ms(rfc3339: &Value) -> i64 {
    let t = humantime::parse_rfc3339(rfc3339.as_str().expect("a time")).expect("RFC 3339");
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

async fn availability(server: &Server) -> Value {
    let point = format!("/v1/availability?lat={}&lng={STORE_LNG}&limit=1", STORE_LAT + 0.001);
    let (s, v) = server.call("GET", &point, None, None).await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quote_follows_the_queue_and_the_riders() {
    let scratch = ScratchDb::sqlite("ds_promise");
    let server = Server::start(&scratch.url, &["--dispatch-tick-ms", "200", "--max-eta-minutes", "60"]);
    server.seed("s1", "milk", 100).await;
    // No rider serves the store: a number, but never within the promise.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let empty = availability(&server).await;
    assert_eq!(
        (empty["within_promise"].as_bool(), empty["accepting"].as_bool()),
        (Some(false), Some(false)),
        "{empty}"
    );
    assert_eq!(empty["reason"], "busy");
    // One rider on shift at the store: the quote is picking, the ride and the hand-over.
    server.call("PUT", "/v1/riders/r1", Some(&admin()), Some(json!({"name": "R", "store_id": "s1"}))).await;
    let me = token(Role::Rider, "r1", None);
    server.call("POST", "/v1/riders/r1/shift", Some(&me), Some(json!({"on_shift": true}))).await;
    let at = json!({"lat": STORE_LAT, "lng": STORE_LNG, "ts": now_ms()});
    server.call("POST", "/v1/riders/r1/location", Some(&me), Some(at)).await;
    let idle = common::eventually("a rider in the quote", 5, || async {
        let v = availability(&server).await;
        (v["within_promise"] == true).then_some(v)
    })
    .await;
    let first = idle["eta_minutes"].as_i64().unwrap();
    assert!((2..=10).contains(&first), "{idle}");
    assert_eq!(idle["accepting"], true);
    let base_fee = idle["delivery_fee_minor"].as_i64().expect("a delivery fee");
    assert_eq!(base_fee, 2_500, "the default base fee: {idle}");
    // Up to twelve packed orders for one rider, a tick apart, until the store says it is busy.
    let alice = token(Role::Customer, "alice", None);
    let staff = token(Role::Staff, "sam", Some("s1"));
    let mut placed = 0;
    for i in 0..12 {
        let (s, o) = server.order(&alice, &format!("k{i}"), order_body("milk", 1)).await;
        if s == 422 {
            assert_eq!(o["reason"], "busy", "{o}");
            break;
        }
        assert_eq!(s, 201, "{o}");
        placed += 1;
        server.call("POST", &format!("/v1/orders/{}/packed", o["id"].as_str().unwrap()), Some(&staff), None).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Each order waits a round of trips of the one rider (a 16-minute cycle, plus the margin):
    // past 60 minutes after a few.
    assert!(placed >= 3, "only {placed} orders before the store was busy");
    let busy = common::eventually("the queue in the quote", 5, || async {
        let v = availability(&server).await;
        (v["eta_minutes"].as_i64().unwrap() > first + 10).then_some(v)
    })
    .await;
    assert_eq!(busy["within_promise"], false, "{busy}");
    // A dozen orders waiting for one rider: the area surges.
    let surged = common::eventually("the fee to rise", 5, || async {
        let v = availability(&server).await;
        (v["delivery_fee_minor"].as_i64().unwrap() > base_fee).then_some(v)
    })
    .await;
    assert!(surged["delivery_fee_minor"].as_i64().unwrap() <= 2 * base_fee, "at most --surge-max: {surged}");
    assert!(metric(&server, "darkstore_surge_level{store=\"s1\"}").await >= 1.0);
    // Orders wait for the one rider in rounds of trips of about 16 minutes each: once past
    // --max-eta-minutes the store takes no more orders, and says why.
    let busy = common::eventually("past the most a store may quote", 5, || async {
        let v = availability(&server).await;
        (v["eta_minutes"].as_i64().unwrap() > 60).then_some(v)
    })
    .await;
    assert_eq!((busy["accepting"].as_bool(), busy["reason"].as_str()), (Some(false), Some("busy")));
    let (s, e) = server.order(&alice, "one-more", order_body("milk", 1)).await;
    assert_eq!((s, e["error"].as_str(), e["reason"].as_str()), (422, Some("not_serviceable"), Some("busy")), "{e}");
    // An order is promised what it was quoted (eta_minutes is the quote rounded up), and pays the
    // fee it was quoted on top of its lines.
    let (_, placed) = server.order(&alice, "k0", order_body("milk", 1)).await;
    let quoted_ms = ms(&placed["promised_by"]) - ms(&placed["created_at"]);
    let minutes = placed["eta_minutes"].as_i64().unwrap();
    assert!(quoted_ms > (minutes - 1) * 60_000 && quoted_ms <= minutes * 60_000, "{placed}");
    let lines: i64 = placed["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["qty"].as_i64().unwrap() * l["price_minor"].as_i64().unwrap())
        .sum();
    assert_eq!(
        placed["total_minor"].as_i64().unwrap(),
        lines + placed["delivery_fee_minor"].as_i64().unwrap(),
        "{placed}"
    );
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_eta_follows_the_rider() {
    let scratch = ScratchDb::sqlite("ds_live_eta");
    let server = Server::start(&scratch.url, &["--dispatch-tick-ms", "200"]);
    server.seed("s1", "milk", 100).await;
    server.call("PUT", "/v1/riders/r1", Some(&admin()), Some(json!({"name": "R", "store_id": "s1"}))).await;
    let rider_token = token(Role::Rider, "r1", None);
    let (client, _inbox, accepted) = rider_client(&mqtt_of(&server), "r1", Some(rider_token.clone())).await;
    assert!(accepted);
    publish(&client, "riders/r1/shift".into(), json!({"on_shift": true})).await;
    publish(&client, "riders/r1/location".into(), json!({"lat": STORE_LAT, "lng": STORE_LNG, "ts": now_ms()})).await;
    common::eventually("the rider on shift", 10, || async {
        let v = availability(&server).await;
        (v["within_promise"] == true).then_some(())
    })
    .await;

    let alice = token(Role::Customer, "alice", None);
    // About 1.1 km north of the store.
    let body = json!({"lat": STORE_LAT + 0.01, "lng": STORE_LNG, "lines": [{"sku": "milk", "qty": 1}]});
    let (s, order) = server.order(&alice, "eta", body).await;
    assert_eq!(s, 201, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    let promised_by = ms(&order["promised_by"]);
    // Before a rider: the estimate at placement, no later than the promise.
    let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
    assert!(ms(&o["eta_at"]) <= promised_by, "{o}");

    let url = format!("{}/v1/ws?token={alice}", server.base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let topic = format!("order/{id}");
    ws.send(Message::Text(json!({"op": "subscribe", "topic": topic}).to_string().into())).await.unwrap();
    let staff = token(Role::Staff, "sam", Some("s1"));
    server.call("POST", &format!("/v1/orders/{id}/packed"), Some(&staff), None).await;
    // Assigned to the rider, who is at the store already: an estimate, and the rider inside the
    // store's fence (in either order).
    let mut frames = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline
        && frames.iter().filter(|f: &&Value| f["type"] == "eta" || f["type"] == "arrival").count() < 2
    {
        frames.extend(drain(&mut ws, &topic, 1).await);
    }
    let assigned = frames.iter().find(|f| f["type"] == "eta").expect("an eta at assignment").clone();
    assert_eq!(assigned["data"]["reason"], "assigned", "{assigned}");
    let eta_assigned = ms(&assigned["data"]["eta_at"]);
    assert!(eta_assigned > now_ms(), "{assigned}");
    let arrived = frames.iter().find(|f| f["type"] == "arrival").expect("an arrival at the store");
    assert_eq!(
        (arrived["data"]["place"].as_str(), arrived["data"]["event"].as_str()),
        (Some("store"), Some("entered")),
        "{arrived}"
    );
    assert_eq!(arrived["data"]["orders"], json!([id]), "the customer's feed names its own order only");
    // The rider waits two seconds at the store, then picks up: the estimate moves.
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish(&client, "riders/r1/events".into(), json!({"type": "picked_up", "order_id": id, "ts": now_ms()})).await;
    let picked = next_of(&mut ws, &topic, "eta", 10).await.expect("an eta at pickup");
    assert_eq!(picked["data"]["reason"], "picked_up", "{picked}");
    let eta_picked = ms(&picked["data"]["eta_at"]);
    assert_ne!(eta_picked, eta_assigned, "pickup moved the estimate");
    let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
    assert_eq!(ms(&o["eta_at"]), eta_picked, "GET gives the current estimate: {o}");

    // Riding to the door, a position every 200 ms for 7 s: estimates come at most every 5 s; the
    // rider leaves the store's fence and enters the door's.
    let started = std::time::Instant::now();
    let mut moving = 0;
    let mut all = Vec::new();
    for i in 1..=34 {
        let lat = STORE_LAT + 0.0003 * f64::from(i);
        publish(&client, "riders/r1/location".into(), json!({"lat": lat, "lng": STORE_LNG, "ts": now_ms()})).await;
        all.extend(drain(&mut ws, &topic, 0).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    all.extend(drain(&mut ws, &topic, 1).await);
    let frames: Vec<&Value> = all.iter().filter(|f| f["type"] == "eta").collect();
    for f in &frames {
        assert_eq!(f["data"]["reason"], "moving", "{f}");
        moving += 1;
    }
    let fences: Vec<(String, String)> = all
        .iter()
        .filter(|f| f["type"] == "arrival")
        .map(|f| (f["data"]["place"].as_str().unwrap().to_owned(), f["data"]["event"].as_str().unwrap().to_owned()))
        .collect();
    let fence = |p: &str, e: &str| (p.to_owned(), e.to_owned());
    assert_eq!(fences, [fence("store", "left"), fence("door", "entered")], "{all:?}");
    let secs = started.elapsed().as_secs_f64();
    assert!(moving >= 1, "the estimate follows the rider");
    assert!(f64::from(moving) <= (secs / 5.0).ceil(), "{moving} estimates in {secs:.1} s");
    assert!(metric(&server, "darkstore_eta_messages_total").await >= 3.0);
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_picks_follow_orders_and_skip_what_is_out_of_stock() {
    let scratch = ScratchDb::sqlite("ds_top_picks");
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 100).await;
    server.seed("s1", "bread", 100).await;
    server.seed("s1", "eggs", 3).await;
    server.seed("s1", "tea", 100).await;
    let picks = || async {
        let path = format!("/v1/top-picks?lat={}&lng={STORE_LNG}&limit=3", STORE_LAT + 0.001);
        let (s, v) = server.call("GET", &path, None, None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["store_id"], "s1");
        v["items"].as_array().unwrap().iter().map(|i| i["sku"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert!(picks().await.is_empty(), "nothing ordered yet");
    let alice = token(Role::Customer, "alice", None);
    // bread twice, eggs (all 3), milk once; a bulk order of tea counts 5 units at most.
    let orders = [("bread", 2), ("bread", 1), ("eggs", 3), ("milk", 1), ("tea", 1)];
    for (i, (sku, qty)) in orders.iter().enumerate() {
        let (s, o) = server.order(&alice, &format!("p{i}"), order_body(sku, *qty)).await;
        assert_eq!(s, 201, "{o}");
    }
    // bread 3, eggs 3 (sold out), tea 1, milk 1: eggs are skipped, ties by SKU.
    assert_eq!(picks().await, ["bread", "milk", "tea"]);
    let (s, o) = server.order(&alice, "bulk", order_body("tea", 50)).await;
    assert_eq!(s, 201, "{o}");
    assert_eq!(picks().await, ["tea", "bread", "milk"], "a bulk line counts 5");
    // Restocked eggs come back in their place; and the ranking survives a restart.
    server
        .call(
            "POST",
            "/v1/stores/s1/stock",
            Some(&admin()),
            Some(json!({"sku": "eggs", "delta": 5, "reason": "restock"})),
        )
        .await;
    assert_eq!(picks().await, ["tea", "bread", "eggs"]);
    drop(server);
    let server = Server::start(&scratch.url, &[]);
    let path = format!("/v1/top-picks?lat={}&lng={STORE_LNG}&limit=3", STORE_LAT + 0.001);
    let (_, v) = server.call("GET", &path, None, None).await;
    let skus: Vec<&str> = v["items"].as_array().unwrap().iter().map(|i| i["sku"].as_str().unwrap()).collect();
    assert_eq!(skus, ["tea", "bread", "eggs"], "rebuilt from the database");
    for bad in ["limit=0", "limit=101", "limit=x"] {
        let (s, _) = server.call("GET", &format!("{path}&{bad}").replace("limit=3&", ""), None, None).await;
        assert_eq!(s, 422, "{bad}");
    }
    let (s, _) = server.call("GET", "/v1/top-picks?lat=91&lng=0", None, None).await;
    assert_eq!(s, 422);
    let (s, v) = server.call("GET", "/v1/top-picks?lat=0&lng=0", None, None).await;
    assert_eq!((s, v["serviceable"].as_bool()), (200, Some(false)));
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forecast_reads_the_history() {
    let scratch = ScratchDb::sqlite("ds_forecast");
    // Not across the turn of an hour: the history is written for the hour now running.
    let into_hour = now_ms().rem_euclid(3_600_000);
    if into_hour > 3_600_000 - 20_000 {
        tokio::time::sleep(Duration::from_millis((3_600_000 - into_hour + 100) as u64)).await;
    }
    // History: ten orders in this hour of the day one and two weeks ago, none at other hours.
    {
        use darkstore_db::{Committer, Db, NewOrder, Write};
        let db = Db::connect(&scratch.url).await.unwrap();
        let (committer, task) = Committer::spawn(db.clone(), 64, 1024);
        let now = now_ms();
        let mut writes = Vec::new();
        for week in 1..=2i64 {
            for i in 0..10 {
                let at = now - week * 7 * 86_400_000;
                writes.push(Write::Order(NewOrder {
                    id: format!("past-{week}-{i}"),
                    customer_id: "old".into(),
                    idempotency_key: format!("past-{week}-{i}"),
                    request_hash: "h".into(),
                    store_id: "s1".into(),
                    lat: STORE_LAT,
                    lng: STORE_LNG,
                    status: "delivered",
                    payment_status: "none",
                    total_minor: 0,
                    delivery_code: None,
                    eta_minutes: 10,
                    promised_by: at + 600_000,
                    delivery_fee_minor: 0,
                    created_at: at,
                    hold_expires_at: None,
                    lines: vec![],
                }));
            }
        }
        committer.commit(writes).await.unwrap();
        drop(committer);
        let _ = task.await;
        db.close().await;
    }
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 100).await;
    let staff = token(Role::Staff, "sam", Some("s1"));
    let (s, v) = server.call("GET", "/v1/stores/s1/forecast?hours=3", Some(&staff), None).await;
    assert_eq!(s, 200, "{v}");
    let hours = v["hours"].as_array().unwrap();
    assert_eq!(hours.len(), 3);
    for h in hours {
        assert!(h["start"].is_string() && h["orders"].as_f64().unwrap() >= 0.0 && h["riders_needed"].is_u64(), "{h}");
    }
    // This hour: the weeks with ten orders, weighted with the empty ones and smoothed toward the
    // hour of day; the next hours had none.
    let now_hour = hours[0]["orders"].as_f64().unwrap();
    assert!((3.0..=10.0).contains(&now_hour), "{v}");
    assert!(hours[0]["riders_needed"].as_u64().unwrap() >= 1, "{v}");
    assert!(hours[1]["orders"].as_f64().unwrap() < 1.0, "{v}");
    assert_eq!(v["riders_on_shift"], 0);
    for bad in ["hours=0", "hours=169", "hours=x"] {
        let (s, _) = server.call("GET", &format!("/v1/stores/s1/forecast?{bad}"), Some(&staff), None).await;
        assert_eq!(s, 422, "{bad}");
    }
    let other = token(Role::Staff, "olga", Some("s2"));
    let (s, _) = server.call("GET", "/v1/stores/s1/forecast", Some(&other), None).await;
    assert_eq!(s, 403);
    let alice = token(Role::Customer, "alice", None);
    let (s, _) = server.call("GET", "/v1/stores/s1/forecast", Some(&alice), None).await;
    assert_eq!(s, 403);
    let (s, _) = server.call("GET", "/v1/stores/nope/forecast", Some(&admin()), None).await;
    assert_eq!(s, 404);
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rider_running_late_comes_back_late_in_the_quote() {
    let scratch = ScratchDb::sqlite("ds_promise_late_rider");
    let server = Server::start(&scratch.url, &["--dispatch-tick-ms", "200"]);
    server.seed("s1", "milk", 100).await;
    server.call("PUT", "/v1/riders/r1", Some(&admin()), Some(json!({"name": "R", "store_id": "s1"}))).await;
    let me = token(Role::Rider, "r1", None);
    server.call("POST", "/v1/riders/r1/shift", Some(&me), Some(json!({"on_shift": true}))).await;
    // Its device clock ten minutes behind until the jump below, so that a 10 km move is one a
    // rider could have made.
    let at = |lat: f64, behind_ms: i64| json!({"lat": lat, "lng": STORE_LNG, "ts": now_ms() - behind_ms});
    server.call("POST", "/v1/riders/r1/location", Some(&me), Some(at(STORE_LAT, 600_000))).await;
    common::eventually("the rider in the quote", 5, || async {
        (availability(&server).await["within_promise"] == true).then_some(())
    })
    .await;
    // One order about 1.1 km north, packed, assigned to the one rider and picked up.
    let alice = token(Role::Customer, "alice", None);
    let body = json!({"lat": STORE_LAT + 0.01, "lng": STORE_LNG, "lines": [{"sku": "milk", "qty": 1}]});
    let (s, order) = server.order(&alice, "a", body).await;
    assert_eq!(s, 201, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    let staff = token(Role::Staff, "sam", Some("s1"));
    server.call("POST", &format!("/v1/orders/{id}/packed"), Some(&staff), None).await;
    let status = || async {
        let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
        o["status"].as_str().unwrap_or_default().to_owned()
    };
    common::eventually("assigned", 10, || async { (status().await == "assigned").then_some(()) }).await;
    let picked = json!({"type": "picked_up", "order_id": id, "ts": now_ms()});
    server.call("POST", "/v1/riders/r1/events", Some(&me), Some(picked)).await;
    common::eventually("picked up", 10, || async { (status().await == "picked_up").then_some(()) }).await;
    // Still at the store (a position that moved would give the server a riding speed measured by
    // this test's shifted clock).
    server.call("POST", "/v1/riders/r1/location", Some(&me), Some(at(STORE_LAT, 599_000))).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let on_plan = availability(&server).await["eta_minutes"].as_i64().unwrap();
    // The rider turns up 10 km south of the store: its task ends an hour later than planned, and
    // the next order at the store (which waits for it) is quoted that much later.
    let (s, b) = server.call("POST", "/v1/riders/r1/location", Some(&me), Some(at(STORE_LAT - 0.09, 0))).await;
    assert!(s < 300, "{s} {b}");

    let late = common::eventually("the late rider in the quote", 5, || async {
        let v = availability(&server).await;
        (v["eta_minutes"].as_i64().unwrap() >= on_plan + 30).then_some(v)
    })
    .await;
    assert_eq!(late["within_promise"], false, "{late}");
    drop(server);
    scratch.drop_database().await;
}
