//! Live feeds against the real server: WebSocket topics (snapshot, deltas, seq, roles, slow
//! clients, bad frames) and the MQTT publications.

mod common;

use std::time::{Duration, Instant};

use common::{STORE_LAT, STORE_LNG, Server, admin, order_body, token};
use darkstore::auth::Role;
use darkstore_db::scratch::ScratchDb;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(server: &Server, token: Option<&str>) -> Ws {
    let mut url = server.base.replace("http://", "ws://") + "/v1/ws";
    if let Some(t) = token {
        url = format!("{url}?token={t}");
    }
    tokio_tungstenite::connect_async(url).await.expect("websocket connects").0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON text frame (pings are answered by the library).
async fn next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// The next frame on `topic` of type `kind`, skipping others.
async fn next_of(ws: &mut Ws, topic: &str, kind: &str) -> Value {
    loop {
        let v = next(ws).await;
        if v["topic"] == topic && v["type"] == kind {
            return v;
        }
    }
}

async fn subscribe(ws: &mut Ws, topic: &str) -> Value {
    send(ws, json!({"op": "subscribe", "topic": topic})).await;
    next(ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_then_deltas_with_consecutive_seq() {
    let scratch = ScratchDb::sqlite("ds_ws");
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 10).await;
    let staff = token(Role::Staff, "sam", Some("s1"));
    let alice = token(Role::Customer, "alice", None);

    // store/s1
    let mut store_ws = connect(&server, Some(&staff)).await;
    let snap = subscribe(&mut store_ws, "store/s1").await;
    assert_eq!((snap["type"].as_str(), snap["seq"].as_u64()), (Some("snapshot"), Some(0)), "{snap}");
    assert_eq!(snap["data"]["stock"][0]["available"], 10);
    assert_eq!(snap["data"]["store"]["id"], "s1");

    // availability/{cell} (anonymous)
    let cell = darkstore_geoinv::area::cell_of(STORE_LAT + 0.001, STORE_LNG).unwrap().to_string();
    let mut avail_ws = connect(&server, None).await;
    let snap = subscribe(&mut avail_ws, &format!("availability/{cell}")).await;
    assert_eq!(snap["data"]["items"][0]["sku"], "milk", "{snap}");

    // An order: the store sees it and the stock move.
    let (_, order) = server.order(&alice, "k1", order_body("milk", 4)).await;
    let id = order["id"].as_str().unwrap().to_owned();
    let o = next_of(&mut store_ws, "store/s1", "order").await;
    assert_eq!(o["data"]["id"], id.as_str());
    let s = next_of(&mut store_ws, "store/s1", "stock").await;
    assert_eq!((s["data"]["available"].as_i64(), s["data"]["reserved"].as_i64()), (Some(6), Some(4)));

    // order/{id} for its customer: snapshot, then a status delta.
    let mut order_ws = connect(&server, Some(&alice)).await;
    let snap = subscribe(&mut order_ws, &format!("order/{id}")).await;
    assert_eq!(snap["data"]["order"]["status"], "confirmed");
    server.call("POST", &format!("/v1/orders/{id}/packed"), Some(&staff), None).await;
    let d = next_of(&mut order_ws, &format!("order/{id}"), "status").await;
    assert_eq!((d["data"]["status"].as_str(), d["seq"].as_u64()), (Some("packed"), Some(1)));

    // Milk disappears from the cell when the rest is written off, and comes back on restock.
    let (s, b) = server
        .call(
            "POST",
            "/v1/stores/s1/stock",
            Some(&admin()),
            Some(json!({"sku": "milk", "delta": -6, "reason": "damage"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let gone = next_of(&mut avail_ws, &format!("availability/{cell}"), "item_unavailable").await;
    assert_eq!(gone["data"]["sku"], "milk");
    server
        .call(
            "POST",
            "/v1/stores/s1/stock",
            Some(&admin()),
            Some(json!({"sku": "milk", "delta": 3, "reason": "restock"})),
        )
        .await;
    let back = next_of(&mut avail_ws, &format!("availability/{cell}"), "item_available").await;
    assert_eq!((back["data"]["sku"].as_str(), back["data"]["available"].as_i64()), (Some("milk"), Some(3)));

    // riders (admin): a position reported over HTTP arrives.
    let rider = "r-ws";
    server
        .call("PUT", &format!("/v1/riders/{rider}"), Some(&admin()), Some(json!({"name": "R", "store_id": "s1"})))
        .await;
    let mut riders_ws = connect(&server, Some(&admin())).await;
    subscribe(&mut riders_ws, "riders").await;
    let now = common::now_ms();
    let (s, _) = server
        .call(
            "POST",
            &format!("/v1/riders/{rider}/location"),
            Some(&token(Role::Rider, rider, None)),
            Some(json!({"lat": STORE_LAT, "lng": STORE_LNG, "ts": now})),
        )
        .await;
    assert_eq!(s, 204);
    let r = next_of(&mut riders_ws, "riders", "rider").await;
    assert_eq!((r["data"]["id"].as_str(), r["data"]["lat"].as_f64()), (Some(rider), Some(STORE_LAT)));
    // ... and the store's staff see their rider too.
    let r = next_of(&mut store_ws, "store/s1", "rider").await;
    assert_eq!(r["data"]["id"], rider);

    // Seq on the store subscription is consecutive from the snapshot on.
    let mut seqs = Vec::new();
    send(&mut store_ws, json!({"op": "unsubscribe", "topic": "store/s1"})).await;
    send(&mut store_ws, json!({"op": "subscribe", "topic": "store/s1"})).await;
    loop {
        let v = next(&mut store_ws).await;
        if v["type"] == "snapshot" {
            break;
        }
    }
    for i in 0..5 {
        server
            .call(
                "POST",
                "/v1/stores/s1/stock",
                Some(&admin()),
                Some(json!({"sku": "milk", "delta": 1 + i, "reason": "restock"})),
            )
            .await;
        let v = next_of(&mut store_ws, "store/s1", "stock").await;
        seqs.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_store_feed_gets_the_riders_that_moved_in_one_frame() {
    let scratch = ScratchDb::sqlite("ds_ws_batch");
    let server = Server::start(&scratch.url, &["--ws-batch-ms", "2000"]);
    server.seed("s1", "milk", 10).await;
    let staff = token(Role::Staff, "sam", Some("s1"));
    for r in ["r-b1", "r-b2"] {
        let (s, b) = server
            .call("PUT", &format!("/v1/riders/{r}"), Some(&admin()), Some(json!({"name": r, "store_id": "s1"})))
            .await;
        assert!(s == 200 || s == 201, "{s} {b}");
    }
    let mut batched = connect(&server, Some(&staff)).await;
    send(&mut batched, json!({"op": "subscribe", "topic": "store/s1", "batch": true})).await;
    assert_eq!(next(&mut batched).await["type"], "snapshot");
    let mut each = connect(&server, Some(&staff)).await;
    assert_eq!(subscribe(&mut each, "store/s1").await["type"], "snapshot");
    // An order's feed follows one rider: no batching there.
    send(&mut batched, json!({"op": "subscribe", "topic": "order/nope", "batch": true})).await;
    let refused = next_of(&mut batched, "order/nope", "error").await;
    assert_eq!(refused["data"]["error"], "invalid_request", "{refused}");

    // Four positions of r-b1 and one of r-b2, as fast as HTTP takes them.
    let t0 = common::now_ms();
    let last_lat = STORE_LAT + 0.0004;
    for (i, (r, lat)) in [
        ("r-b1", STORE_LAT + 0.0001),
        ("r-b1", STORE_LAT + 0.0002),
        ("r-b2", STORE_LAT),
        ("r-b1", STORE_LAT + 0.0003),
        ("r-b1", last_lat),
    ]
    .into_iter()
    .enumerate()
    {
        let (s, b) = server
            .call(
                "POST",
                &format!("/v1/riders/{r}/location"),
                Some(&token(Role::Rider, r, None)),
                Some(json!({"lat": lat, "lng": STORE_LNG, "ts": t0 + i as i64 * 1000})),
            )
            .await;
        assert_eq!(s, 204, "{b}");
    }
    // The batched client: `riders` frames only, each rider at most once a frame, the latest
    // position last, seq consecutive; never a `rider` frame.
    let (mut seen_b2, mut b1_lat, mut frames, mut seq) = (false, None, 0, 0);
    while !(seen_b2 && b1_lat == Some(last_lat)) {
        let v = next(&mut batched).await;
        assert_eq!(v["topic"], "store/s1", "{v}");
        assert_ne!(v["type"], "rider", "a batched subscription never gets single positions: {v}");
        assert_eq!(v["seq"].as_u64(), Some(seq + 1), "{v}");
        seq += 1;
        if v["type"] != "riders" {
            continue;
        }
        frames += 1;
        let riders = v["data"].as_array().expect("an array of riders");
        let mut ids: Vec<&str> = riders.iter().map(|r| r["id"].as_str().unwrap()).collect();
        ids.sort();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "a rider at most once a frame: {v}");
        for r in riders {
            match r["id"].as_str() {
                Some("r-b1") => b1_lat = r["lat"].as_f64(),
                Some("r-b2") => seen_b2 = true,
                other => panic!("a rider of another store? {other:?}"),
            }
        }
    }
    // Five quick positions fall within one period of two seconds, or straddle one boundary.
    assert!(frames <= 2, "five positions in at most two frames, got {frames}");
    // The other client got them one by one, as before.
    let r = next_of(&mut each, "store/s1", "rider").await;
    assert!(r["data"]["id"] == "r-b1" || r["data"]["id"] == "r-b2", "{r}");
    let batches = common::metric(&server, "darkstore_feed_batches_total").await;
    assert!(batches >= frames as f64, "{batches}");
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_checked_against_the_token() {
    let scratch = ScratchDb::sqlite("ds_ws_roles");
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 10).await;
    server.seed("s2", "milk", 0).await;
    let alice = token(Role::Customer, "alice", None);
    let (_, order) = server.order(&alice, "k1", order_body("milk", 1)).await;
    let order_topic = format!("order/{}", order["id"].as_str().unwrap());
    let cases: Vec<(Option<String>, &str, &str)> = vec![
        (None, "store/s1", "forbidden"),
        (Some(alice.clone()), "store/s1", "forbidden"),
        (Some(token(Role::Staff, "sue", Some("s2"))), "store/s1", "forbidden"),
        // Another customer's order, or one the rider does not hold: as if it did not exist.
        (Some(token(Role::Customer, "mallory", None)), &order_topic, "not_found"),
        (Some(token(Role::Rider, "r1", None)), &order_topic, "not_found"),
        (Some(token(Role::Staff, "sue", Some("s2"))), "riders", "forbidden"),
        (None, "riders", "forbidden"),
        (Some(admin()), "order/o999999", "not_found"),
        (Some(admin()), "store/nowhere", "not_found"),
        (None, "availability/not-a-cell", "invalid_request"),
        (None, "availability/85618927fffffff", "invalid_request"),
        (None, "weather", "invalid_request"),
        (Some(alice.clone()), &order_topic, "snapshot"),
        (Some(token(Role::Staff, "sam", Some("s1"))), &order_topic, "snapshot"),
        (Some(token(Role::Staff, "sam", Some("s1"))), "store/s1", "snapshot"),
        (Some(admin()), "riders", "snapshot"),
    ];
    for (tok, topic, expected) in cases {
        let mut ws = connect(&server, tok.as_deref()).await;
        let v = subscribe(&mut ws, topic).await;
        let got = if v["type"] == "error" {
            v["data"]["error"].as_str().unwrap().to_owned()
        } else {
            v["type"].as_str().unwrap().to_owned()
        };
        assert_eq!(got, expected, "{topic} with {:?}: {v}", tok.as_ref().map(|_| "token"));
        assert_eq!(v["topic"], topic);
    }
    // A bad token is refused before the upgrade.
    let url = server.base.replace("http://", "ws://") + "/v1/ws?token=garbage";
    let err = tokio_tungstenite::connect_async(url).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_errors_or_a_close() {
    let scratch = ScratchDb::sqlite("ds_ws_bad");
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 1).await;
    let mut ws = connect(&server, Some(&admin())).await;
    for (frame, error) in [
        (r#"{"op": "dance", "topic": "riders"}"#, "invalid_request"),
        ("not json", "invalid_request"),
        (r#"{"op": "subscribe"}"#, "invalid_request"),
        (r#"{"op": "unsubscribe", "topic": "riders"}"#, "not_subscribed"),
    ] {
        ws.send(Message::Text(frame.into())).await.unwrap();
        let v = next(&mut ws).await;
        assert_eq!((v["type"].as_str(), v["data"]["error"].as_str()), (Some("error"), Some(error)), "{frame}: {v}");
    }
    // At most 64 subscriptions.
    let cells: Vec<String> = {
        let c = darkstore_geoinv::area::cell_of(STORE_LAT, STORE_LNG).unwrap();
        c.grid_disk::<Vec<_>>(5).into_iter().map(|c| c.to_string()).collect()
    };
    let mut last = Value::Null;
    for cell in cells.iter().take(65) {
        last = subscribe(&mut ws, &format!("availability/{cell}")).await;
        tokio::time::sleep(Duration::from_millis(55)).await;
    }
    assert_eq!(last["data"]["error"], "too_many_subscriptions", "{last}");
    // A flood of ops is refused.
    for _ in 0..100 {
        ws.send(Message::Text(r#"{"op": "unsubscribe", "topic": "riders"}"#.into())).await.unwrap();
    }
    let mut limited = false;
    for _ in 0..100 {
        if next(&mut ws).await["data"]["error"] == "rate_limited" {
            limited = true;
            break;
        }
    }
    assert!(limited, "a flood of ops is rate limited");
    // An oversized frame closes the connection.
    let mut ws = connect(&server, None).await;
    ws.send(Message::Text("x".repeat(10_000).into())).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("closed in time");
    assert!(closed.is_none() || closed == Some(1009), "{closed:?}");
    // The server is still fine.
    assert_eq!(server.call("GET", "/healthz", None, None).await.0, 200);
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_client_is_closed_and_a_fast_one_keeps_up() {
    let scratch = ScratchDb::sqlite("ds_ws_slow");
    let server = Server::start(&scratch.url, &["--ws-queue", "256"]);
    server.seed("s1", "milk", 1).await;
    // Long names make big frames, so the kernel's socket buffers fill sooner.
    let long_name = "Milk, full cream, glass bottle, farm fresh ".repeat(4);
    let (s, _) = server
        .call(
            "PUT",
            "/v1/catalog/milk",
            Some(&admin()),
            Some(json!({"name": long_name.trim(), "category": "dairy", "price_minor": 4500})),
        )
        .await;
    assert_eq!(s, 200);
    let staff = token(Role::Staff, "sam", Some("s1"));
    // The slow client: a tiny receive buffer, and it never reads after subscribing.
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/v1/ws?token={staff}");
    let (mut slow, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.unwrap();
    assert_eq!(subscribe(&mut slow, "store/s1").await["type"], "snapshot");
    let mut fast = connect(&server, Some(&staff)).await;
    assert_eq!(subscribe(&mut fast, "store/s1").await["type"], "snapshot");

    // Many stock changes, from 16 concurrent writers.
    let n = 12_000;
    let started = Instant::now();
    let writers: Vec<_> = (0..32)
        .map(|_| {
            let client = server.client.clone();
            let url = server.url("/v1/stores/s1/stock");
            let token = admin();
            tokio::spawn(async move {
                for _ in 0..n / 32 {
                    client
                        .post(&url)
                        .bearer_auth(&token)
                        .body(r#"{"sku":"milk","delta":1,"reason":"restock"}"#)
                        .send()
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut last_seq = 0;
    let mut received = 0;
    while received < n {
        let v = next_of(&mut fast, "store/s1", "stock").await;
        let seq = v["seq"].as_u64().unwrap();
        assert_eq!(seq, last_seq + 1, "no gap on the fast client");
        last_seq = seq;
        received += 1;
    }
    for w in writers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed();
    let mut slow_closed = 0.0;
    for _ in 0..100 {
        let text =
            server.client.get(server.url("/metrics")).bearer_auth(admin()).send().await.unwrap().text().await.unwrap();
        slow_closed = text
            .lines()
            .find_map(|l| l.strip_prefix("darkstore_ws_closed_total{reason=\"slow\"} ").and_then(|v| v.parse().ok()))
            .unwrap_or(0.0);
        if slow_closed > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(slow_closed, 1.0, "the slow client was closed");
    // The slow client, reading now, finds the 1013 close after what was buffered.
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                None | Some(Err(_)) => return None,
                _ => {}
            }
        }
    })
    .await
    .expect("the slow client is closed");
    assert!(code == Some(1013) || code.is_none(), "{code:?}");
    eprintln!("fast client received {n} deltas in {elapsed:?} while the slow one was closed");
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_carries_stock_and_order_status() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let scratch = ScratchDb::sqlite("ds_mqtt_out");
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 5).await;
    let broker = server.mqtt.clone().unwrap();
    let (host, port) = broker
        .trim_start_matches("mqtt://")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_owned(), p.parse::<u16>().unwrap()))
        .unwrap();
    let mut opts = MqttOptions::new("admin:admin:feeds-test", host, port);
    opts.set_credentials("admin", admin());
    let (client, mut el) = AsyncClient::new(opts, 100);
    client.subscribe("stores/s1/stock", QoS::AtLeastOnce).await.unwrap();
    client.subscribe("orders/+/status", QoS::AtLeastOnce).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(100);
    tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            if let Event::Incoming(Packet::SubAck(_)) = ev {
                let _ = tx.send(("suback".to_owned(), Value::Null)).await;
            }
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let _ = tx.send((p.topic.clone(), serde_json::from_slice(&p.payload).unwrap_or(Value::Null))).await;
            }
        }
    });
    for _ in 0..2 {
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap().0, "suback");
    }
    let alice = token(Role::Customer, "alice", None);
    let (_, order) = server.order(&alice, "k", order_body("milk", 2)).await;
    let id = order["id"].as_str().unwrap().to_owned();
    let mut seen_status = false;
    let mut seen_stock = false;
    while !(seen_status && seen_stock) {
        let (topic, v) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("MQTT message").unwrap();
        if topic == format!("orders/{id}/status") {
            assert_eq!((v["status"].as_str(), v["store_id"].as_str()), (Some("confirmed"), Some("s1")));
            assert!(v["ts"].is_i64());
            seen_status = true;
        } else if topic == "stores/s1/stock" {
            assert_eq!((v["sku"].as_str(), v["available"].as_i64()), (Some("milk"), Some(3)));
            seen_stock = true;
        }
    }
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_and_exits() {
    let scratch = ScratchDb::sqlite("ds_ws_term");
    let mut server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 1).await;
    let mut ws = connect(&server, Some(&admin())).await;
    assert_eq!(subscribe(&mut ws, "store/s1").await["type"], "snapshot");
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (server, status)
    });
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                None | Some(Err(_)) => return None,
                _ => {}
            }
        }
    })
    .await
    .expect("the server closes the WebSocket");
    assert_eq!(code, Some(1001));
    let (_server, status) = status.await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "shut down promptly");
    scratch.drop_database().await;
}
