//! The edges of an order's life, black-box through the contract: a cancel after assignment frees
//! the rider and withdraws its task, a cancel racing a pickup has exactly one winner, a rider
//! registration survives a client that hangs up, payment webhooks in any order, and a database
//! that goes away under a running server.

mod common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use common::{
    STORE_LAT, STORE_LNG, Server, admin, database_away, eventually, metric, mqtt_of, now_ms, order_body, rider_client,
    token, unique,
};
use darkstore::auth::Role;
use darkstore_db::scratch::ScratchDb;
use futures_util::{SinkExt, StreamExt};
use rumqttc::QoS;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Registers a rider of store s1, on shift, next to the store (over HTTP).
async fn rider_on_shift(server: &Server, rider: &str) -> String {
    let (s, b) = server
        .call("PUT", &format!("/v1/riders/{rider}"), Some(&admin()), Some(json!({"name": "Ravi", "store_id": "s1"})))
        .await;
    assert!(s == 201 || s == 200, "{b}");
    let me = token(Role::Rider, rider, None);
    let (s, _) =
        server.call("POST", &format!("/v1/riders/{rider}/shift"), Some(&me), Some(json!({"on_shift": true}))).await;
    assert_eq!(s, 204);
    let at = json!({"lat": STORE_LAT + 0.001, "lng": STORE_LNG, "ts": now_ms()});
    let (s, b) = server.call("POST", &format!("/v1/riders/{rider}/location"), Some(&me), Some(at)).await;
    assert_eq!(s, 204, "{b}");
    me
}

/// Places an order as `customer` and has staff pack it; returns its id.
async fn packed_order(server: &Server, customer: &str, key: &str) -> String {
    let (s, order) = server.order(customer, key, order_body("milk", 1)).await;
    assert_eq!(s, 201, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    let staff = token(Role::Staff, "sam", Some("s1"));
    let (s, b) = server.call("POST", &format!("/v1/orders/{id}/packed"), Some(&staff), None).await;
    assert_eq!(s, 200, "{b}");
    id
}

async fn assigned_to(server: &Server, id: &str, rider: &str) {
    eventually("the order assigned", 10, || async {
        let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&admin()), None).await;
        (o["status"] == "assigned" && o["rider_id"] == rider).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_after_assignment_withdraws_the_task_and_frees_the_only_rider_on_sqlite() {
    a_cancel_after_assignment_withdraws_the_task_and_frees_the_only_rider(ScratchDb::sqlite("ds_cancel_assigned"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_after_assignment_withdraws_the_task_and_frees_the_only_rider_on_postgres() {
    match ScratchDb::postgres("ds_cancel_assigned").await {
        Some(scratch) => a_cancel_after_assignment_withdraws_the_task_and_frees_the_only_rider(scratch).await,
        None => eprintln!("DARKSTORE_TEST_POSTGRES is not set: skipped on PostgreSQL"),
    }
}

async fn a_cancel_after_assignment_withdraws_the_task_and_frees_the_only_rider(scratch: ScratchDb) {
    let server = Server::start(&scratch.url, &["--dispatch-tick-ms", "200"]);
    server.seed("s1", "milk", 10).await;
    let rider = unique("rider");
    let rider_token = token(Role::Rider, &rider, None);
    let (s, _) = server
        .call("PUT", &format!("/v1/riders/{rider}"), Some(&admin()), Some(json!({"name": "Ravi", "store_id": "s1"})))
        .await;
    assert_eq!(s, 201);
    let (client, mut inbox, accepted) = rider_client(&mqtt_of(&server), &rider, Some(rider_token.clone())).await;
    assert!(accepted);
    client.subscribe(format!("riders/{rider}/tasks"), QoS::AtLeastOnce).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    rider_on_shift(&server, &rider).await;
    let alice = token(Role::Customer, "alice", None);
    let first = packed_order(&server, &alice, "first").await;
    let (_, task) = tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await.expect("a task").unwrap();
    assert_eq!(task["orders"][0]["id"], first.as_str(), "{task}");

    // The customer cancels while the rider is on its way.
    let (s, cancelled) = server.call("POST", &format!("/v1/orders/{first}/cancel"), Some(&alice), None).await;
    assert_eq!((s, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
    assert!(cancelled["rider_id"].is_null());
    // The rider is told at once: the same task, without the order (empty: withdrawn).
    let (_, again) = tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await.expect("the task again").unwrap();
    assert_eq!(again["task_id"], task["task_id"], "{again}");
    assert_eq!(again["orders"], json!([]), "{again}");
    let (_, me) = server.call("GET", &format!("/v1/riders/{rider}"), Some(&rider_token), None).await;
    assert_eq!((me["status"].as_str(), &me["task"]), (Some("idle"), &Value::Null), "{me}");
    // Its events for the cancelled order are ignored and counted.
    let ignored = metric(&server, "darkstore_rider_events_ignored_total ").await;
    for kind in ["rejected", "picked_up"] {
        let body = json!({"type": kind, "order_id": first, "ts": now_ms()});
        let (s, _) = server.call("POST", &format!("/v1/riders/{rider}/events"), Some(&rider_token), Some(body)).await;
        assert_eq!(s, 202);
    }
    assert_eq!(metric(&server, "darkstore_rider_events_ignored_total ").await, ignored + 2.0);
    let (_, o) = server.call("GET", &format!("/v1/orders/{first}"), Some(&alice), None).await;
    assert_eq!(o["status"], "cancelled");

    // The only rider takes the next order.
    let second = packed_order(&server, &alice, "second").await;
    let (_, next) = tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await.expect("the next task").unwrap();
    assert_eq!(next["orders"][0]["id"], second.as_str(), "{next}");
    assert_ne!(next["task_id"], task["task_id"]);
    let line = server.stock_line("s1", "milk").await;
    assert_eq!((line["on_hand"].as_i64(), line["reserved"].as_i64()), (Some(10), Some(1)), "{line}");
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_a_pickup_has_exactly_one_winner_on_sqlite() {
    a_cancel_racing_a_pickup_has_exactly_one_winner(ScratchDb::sqlite("ds_cancel_race")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_a_pickup_has_exactly_one_winner_on_postgres() {
    match ScratchDb::postgres("ds_cancel_race").await {
        Some(scratch) => a_cancel_racing_a_pickup_has_exactly_one_winner(scratch).await,
        None => eprintln!("DARKSTORE_TEST_POSTGRES is not set: skipped on PostgreSQL"),
    }
}

async fn a_cancel_racing_a_pickup_has_exactly_one_winner(scratch: ScratchDb) {
    let server = Server::start(&scratch.url, &["--dispatch-tick-ms", "100", "--rider-silence-secs", "3600"]);
    server.seed("s1", "milk", 1000).await;
    let rider = unique("racer");
    let me = rider_on_shift(&server, &rider).await;
    let alice = token(Role::Customer, "alice", None);
    let (mut cancelled, mut picked) = (0, 0);
    for round in 0..100 {
        let id = packed_order(&server, &alice, &format!("race-{round}")).await;
        assigned_to(&server, &id, &rider).await;
        let event = json!({"type": "picked_up", "order_id": id, "ts": now_ms()});
        let (cancel_path, event_path) = (format!("/v1/orders/{id}/cancel"), format!("/v1/riders/{rider}/events"));
        let ((cancel, _), (ev, _)) = tokio::join!(
            server.call("POST", &cancel_path, Some(&alice), None),
            server.call("POST", &event_path, Some(&me), Some(event)),
        );
        assert_eq!(ev, 202);
        let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
        match (o["status"].as_str(), cancel) {
            (Some("cancelled"), 200) => cancelled += 1,
            (Some("picked_up"), 409) => {
                picked += 1;
                let done = json!({"type": "delivered", "order_id": id, "ts": now_ms()});
                server.call("POST", &format!("/v1/riders/{rider}/events"), Some(&me), Some(done)).await;
            }
            other => panic!("round {round}: both or neither won: {other:?} {o}"),
        }
        // Either way the rider is free again, holding nothing.
        let (_, r) = server.call("GET", &format!("/v1/riders/{rider}"), Some(&me), None).await;
        assert_eq!((r["status"].as_str(), &r["task"]), (Some("idle"), &Value::Null), "round {round}: {r}");
    }
    eprintln!("cancel won {cancelled} times, pickup {picked}");
    // Every pickup sold one unit; every cancel gave its unit back.
    let line = server.stock_line("s1", "milk").await;
    assert_eq!((line["on_hand"].as_i64(), line["reserved"].as_i64()), (Some(1000 - picked), Some(0)), "{line}");
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rider_registered_by_a_client_that_hung_up_is_known_to_ingest() {
    let scratch = ScratchDb::sqlite("ds_rider_hangup");
    let server = Server::start(&scratch.url, &[]);
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut processed = 0;
    for i in 0..20 {
        let rider = format!("hangup-{i}");
        let body = json!({"name": "Ravi"}).to_string();
        let request = format!(
            "PUT /v1/riders/{rider} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            admin(),
            body.len()
        );
        let mut socket = std::net::TcpStream::connect(&addr).unwrap();
        socket.write_all(request.as_bytes()).unwrap();
        // Hang up without reading the answer, after 0 to 19 ms: some while the commit is in
        // flight, some before the server read the request at all.
        tokio::time::sleep(Duration::from_millis(i)).await;
        drop(socket);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..20 {
        let rider = format!("hangup-{i}");
        let (s, _) = server.call("GET", &format!("/v1/riders/{rider}"), Some(&admin()), None).await;
        if s == 404 {
            continue; // the request never reached the server as a whole
        }
        processed += 1;
        // Stored means known: its position is taken, never dropped as an unknown rider.
        let at = json!({"lat": STORE_LAT, "lng": STORE_LNG, "ts": now_ms()});
        let (s, b) = server.call("POST", &format!("/v1/riders/{rider}/location"), Some(&admin()), Some(at)).await;
        assert_eq!(s, 204, "{rider}: {b}");
    }
    assert!(processed > 0, "no registration reached the server");
    // And after a restart the same riders are there.
    let db = darkstore_db::Db::connect(&scratch.url).await.unwrap();
    assert_eq!(db.load().await.unwrap().riders.len(), processed);
    db.close().await;
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_webhooks_in_any_order_over_http_and_on_the_feed_on_sqlite() {
    payment_webhooks_in_any_order_over_http_and_on_the_feed(ScratchDb::sqlite("ds_webhooks")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_webhooks_in_any_order_over_http_and_on_the_feed_on_postgres() {
    match ScratchDb::postgres("ds_webhooks").await {
        Some(scratch) => payment_webhooks_in_any_order_over_http_and_on_the_feed(scratch).await,
        None => eprintln!("DARKSTORE_TEST_POSTGRES is not set: skipped on PostgreSQL"),
    }
}

async fn payment_webhooks_in_any_order_over_http_and_on_the_feed(scratch: ScratchDb) {
    let server = Server::start(&scratch.url, &["--payment-webhook-secret", "whsec-test"]);
    server.seed("s1", "milk", 10).await;
    let alice = token(Role::Customer, "alice", None);
    let (_, order) = server.order(&alice, "pay", order_body("milk", 2)).await;
    let id = order["id"].as_str().unwrap().to_owned();
    // Two milk at 45.00 and the delivery fee quoted (the base fee, 25.00).
    assert_eq!(order["delivery_fee_minor"].as_i64(), Some(2500), "{order}");
    assert_eq!((order["payment_status"].as_str(), order["total_minor"].as_i64()), (Some("held"), Some(11500)));
    let hook = |body: Value, signed: bool| {
        let body = body.to_string();
        let sig = if signed { darkstore::auth::hmac_hex(b"whsec-test", body.as_bytes()) } else { "00".repeat(32) };
        let req = server.client.post(server.url("/v1/payments/webhook")).header("x-signature", format!("sha256={sig}"));
        async move {
            let r = req.body(body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Bad input: signature, status, order, and a refund of money never captured.
    assert_eq!(hook(json!({"order_id": id, "status": "succeeded"}), false).await.0, 401);
    assert_eq!(hook(json!({"order_id": id, "status": "chargeback"}), true).await.0, 422);
    assert_eq!(hook(json!({"order_id": "o999999", "status": "succeeded"}), true).await.0, 404);
    assert_eq!(hook(json!({"order_id": "../../x", "status": "succeeded"}), true).await.0, 404);
    let (s, b) = hook(json!({"order_id": id, "status": "refunded"}), true).await;
    assert_eq!((s, b["payment_status"].as_str()), (409, Some("held")), "{b}");

    // Follow the order's feed while the payment moves.
    let url = format!("{}/v1/ws?token={alice}", server.base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let topic = format!("order/{id}");
    ws.send(Message::Text(json!({"op": "subscribe", "topic": topic}).to_string().into())).await.unwrap();
    let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("no snapshot") };
    let snapshot: Value = serde_json::from_str(&t).unwrap();
    let mut feed = vec![snapshot["data"]["order"]["payment_status"].as_str().unwrap().to_owned()];
    let (s, b) = hook(json!({"order_id": id, "status": "succeeded"}), true).await;
    assert_eq!(
        (s, b["webhook"].as_str(), b["status"].as_str(), b["payment_status"].as_str()),
        (200, Some("applied"), Some("confirmed"), Some("paid"))
    );
    let (s, b) = hook(json!({"order_id": id, "status": "succeeded"}), true).await;
    assert_eq!((s, b["webhook"].as_str()), (200, Some("duplicate")));
    let (s, b) = hook(json!({"order_id": id, "status": "failed"}), true).await;
    assert_eq!((s, b["webhook"].as_str(), b["status"].as_str()), (200, Some("ignored"), Some("confirmed")));
    assert_eq!(metric(&server, "darkstore_payment_webhooks_total{outcome=\"ignored\"} ").await, 1.0);
    // The customer cancels the paid order: the total is owed back; a refund closes it.
    let (s, c) = server.call("POST", &format!("/v1/orders/{id}/cancel"), Some(&alice), None).await;
    assert_eq!((s, c["payment_status"].as_str(), c["refund_minor"].as_i64()), (200, Some("refund_due"), Some(11500)));
    let (s, b) = hook(json!({"order_id": id, "status": "refunded"}), true).await;
    assert_eq!((s, b["payment_status"].as_str(), b["refund_minor"].as_i64()), (200, Some("refunded"), Some(11500)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && feed.last().map(String::as_str) != Some("refunded") {
        let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_secs(1), ws.next()).await else {
            continue;
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        let data = if v["type"] == "snapshot" { &v["data"]["order"] } else { &v["data"] };
        if let Some(p) = data["payment_status"].as_str()
            && feed.last().map(String::as_str) != Some(p)
        {
            feed.push(p.to_owned());
        }
    }
    assert_eq!(feed, ["held", "paid", "refund_due", "refunded"]);
    // Durable: a restart reads the same.
    let mut server = server;
    server.kill();
    let server = Server::start(&scratch.url, &["--payment-webhook-secret", "whsec-test"]);
    let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
    assert_eq!((o["status"].as_str(), o["payment_status"].as_str()), (Some("cancelled"), Some("refunded")));
    let line = server.stock_line("s1", "milk").await;
    assert_eq!((line["on_hand"].as_i64(), line["reserved"].as_i64()), (Some(10), Some(0)));
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_is_a_quick_503_and_writes_come_back_by_themselves() {
    sqlx::any::install_default_drivers();
    let Some(scratch) = ScratchDb::postgres("ds_db_away").await else {
        eprintln!("DARKSTORE_TEST_POSTGRES is not set: the database-away test needs PostgreSQL");
        return;
    };
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 10).await;
    let alice = token(Role::Customer, "alice", None);
    let (s, before) = server.order(&alice, "before", order_body("milk", 1)).await;
    assert_eq!(s, 201);
    // The database refuses every connection, and the open ones are cut.
    database_away(&scratch.url, true).await;
    let started = Instant::now();
    let (s, b) = server.order(&alice, "while-away", order_body("milk", 1)).await;
    let took = started.elapsed();
    assert_eq!((s, b["error"].as_str()), (503, Some("unavailable")), "{b}");
    assert!(took < Duration::from_secs(2), "503 after {took:?}");
    // Nothing was taken by the failed order; reads from memory still answer.
    let (s, a) = server.call("GET", &format!("/v1/availability?lat={STORE_LAT}&lng={STORE_LNG}"), None, None).await;
    assert_eq!((s, a["items"][0]["available"].as_i64()), (200, Some(9)), "{a}");
    let (s, _) =
        server.call("GET", &format!("/v1/orders/{}", before["id"].as_str().unwrap()), Some(&alice), None).await;
    assert_eq!(s, 200);
    // An order feed that needs the database says so, as HTTP does.
    let url = format!("{}/v1/ws?token={}", server.base.replace("http://", "ws://"), admin());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::Text(json!({"op": "subscribe", "topic": "order/o999999"}).to_string().into())).await.unwrap();
    let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("no answer") };
    let v: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["data"]["error"], "unavailable", "{v}");
    // It comes back: writes recover without a restart.
    database_away(&scratch.url, false).await;
    let n = std::sync::atomic::AtomicU32::new(0);
    eventually("orders placed again", 15, || {
        let key = format!("after-{}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let (server, alice) = (&server, &alice);
        async move {
            let (s, _) = server.order(alice, &key, order_body("milk", 1)).await;
            (s == 201).then_some(())
        }
    })
    .await;
    drop(server);
    scratch.drop_database().await;
}
