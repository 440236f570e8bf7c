//! What an outside probe found (issue #14), checked black-box: bounded metrics, access re-checked
//! while connections live, one answer for orders a client may not see, and the smaller hardening.

mod common;

use std::time::{Duration, Instant};

use common::{STORE_LAT, STORE_LNG, Server, admin, now_ms, order_body, token};
use darkstore::auth::{Claims, Role};
use darkstore_db::scratch::ScratchDb;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(server: &Server, token: &str) -> Ws {
    let url = format!("{}/v1/ws?token={token}", server.base.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url).await.expect("websocket").0
}

/// The next text frame as JSON, or None when the connection closed (with its code).
async fn next(ws: &mut Ws) -> Result<Value, Option<CloseCode>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.code)),
            Some(Ok(_)) => continue,
            _ => return Err(None),
        }
    }
}

async fn subscribe(ws: &mut Ws, topic: &str) -> Value {
    ws.send(Message::Text(json!({"op": "subscribe", "topic": topic}).to_string().into())).await.unwrap();
    next(ws).await.expect("an answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_stay_bounded_under_made_up_methods_and_paths_and_need_an_admin() {
    let scratch = ScratchDb::sqlite("ds_sec_metrics");
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let server = Server::start(&scratch.url, &["--metrics-listen", &free.to_string()]);
    let size = || async {
        let r = server.client.get(server.url("/metrics")).bearer_auth(admin()).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap().len()
    };
    let srv = &server;
    let hostile = |round: usize| async move {
        let server = srv;
        for i in 0..300 {
            let method = reqwest::Method::from_bytes(format!("Z{round}{i}{}", "A".repeat(1000)).as_bytes()).unwrap();
            let _ = server.client.request(method, server.url("/healthz")).send().await;
            let _ =
                server.client.get(server.url(&format!("/no/such/path/{round}/{i}/{}", "x".repeat(200)))).send().await;
        }
    };
    // The first made-up method and path open their (fixed) series: `other` and `unmatched`; the
    // first read of /metrics opens its own.
    hostile(0).await;
    size().await;
    let before = size().await;
    hostile(1).await;
    hostile(2).await;
    let after = size().await;
    if after >= before + 64 {
        let text = server.client.get(server.url("/metrics")).bearer_auth(admin()).send().await.unwrap().text().await;
        panic!("600 more made-up methods and paths grew metrics from {before} to {after} bytes:\n{}", text.unwrap());
    }
    let (s, b) = server.call("GET", "/metrics", None, None).await;
    assert_eq!((s, b["error"].as_str()), (401, Some("unauthorized")));
    let (s, _) = server.call("GET", "/metrics", Some(&token(Role::Staff, "sam", Some("s1"))), None).await;
    assert_eq!(s, 403);
    // The separate metrics address serves Prometheus without a token, and nothing else.
    let text = reqwest::get(format!("http://{free}/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains("darkstore_http_requests_total"), "{}", &text[..200.min(text.len())]);
    assert_eq!(reqwest::get(format!("http://{free}/v1/stores")).await.unwrap().status(), 404);
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_closes_when_its_token_expires() {
    let scratch = ScratchDb::sqlite("ds_sec_expiry");
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 1).await;
    let exp = now_ms() / 1000 + 3;
    let short = darkstore::auth::sign(
        common::SECRET.as_bytes(),
        &Claims { sub: "sam".into(), role: Role::Staff, store: Some("s1".into()), exp },
    );
    let mut socket = ws(&server, &short).await;
    assert_eq!(subscribe(&mut socket, "store/s1").await["type"], "snapshot");
    let started = Instant::now();
    let closed = loop {
        match next(&mut socket).await {
            Ok(_) => continue,
            Err(code) => break code,
        }
    };
    assert_eq!(closed, Some(CloseCode::Library(4001)));
    assert!(started.elapsed() < Duration::from_secs(6), "closed after {:?}", started.elapsed());
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_feed_follows_who_holds_the_order() {
    let scratch = ScratchDb::sqlite("ds_sec_feed");
    let server = Server::start(&scratch.url, &["--dispatch-tick-ms", "100", "--ws-order-grace-secs", "1"]);
    server.seed("s1", "milk", 10).await;
    let rider = "r-sec";
    server
        .call("PUT", &format!("/v1/riders/{rider}"), Some(&admin()), Some(json!({"name": "R", "store_id": "s1"})))
        .await;
    let me = token(Role::Rider, rider, None);
    server.call("POST", &format!("/v1/riders/{rider}/shift"), Some(&me), Some(json!({"on_shift": true}))).await;
    let at = json!({"lat": STORE_LAT + 0.001, "lng": STORE_LNG, "ts": now_ms()});
    server.call("POST", &format!("/v1/riders/{rider}/location"), Some(&me), Some(at)).await;
    let alice = token(Role::Customer, "alice", None);
    let (_, order) = server.order(&alice, "k", order_body("milk", 1)).await;
    let id = order["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 19, "order ids are neither sequential nor countable: {id}");
    let staff = token(Role::Staff, "sam", Some("s1"));
    server.call("POST", &format!("/v1/orders/{id}/packed"), Some(&staff), None).await;
    common::eventually("assigned", 10, || async {
        let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
        (o["rider_id"] == rider).then_some(())
    })
    .await;
    let topic = format!("order/{id}");
    // The customer sees where the rider is, and nothing of the rider's other work.
    let mut customer = ws(&server, &alice).await;
    let snap = subscribe(&mut customer, &topic).await;
    assert_eq!(snap["data"]["rider"]["id"], rider, "{snap}");
    assert!(snap["data"]["rider"].get("orders").is_none(), "{snap}");
    // The rider follows it, then rejects it: its feed of the order stops with a message.
    let mut rider_ws = ws(&server, &me).await;
    assert_eq!(subscribe(&mut rider_ws, &topic).await["type"], "snapshot");
    let event = json!({"type": "rejected", "order_id": id, "ts": now_ms()});
    let (s, _) = server.call("POST", &format!("/v1/riders/{rider}/events"), Some(&me), Some(event)).await;
    assert_eq!(s, 202);
    let ended = loop {
        let v = next(&mut rider_ws).await.expect("the feed ends with a message, not a close");
        if v["type"] == "error" {
            break v;
        }
    };
    assert_eq!((ended["topic"].as_str(), ended["data"]["error"].as_str()), (Some(topic.as_str()), Some("not_found")));
    // Off shift for now, so the next tick cannot give the order straight back to it (the only
    // rider) before it is checked below.
    server.call("POST", &format!("/v1/riders/{rider}/shift"), Some(&me), Some(json!({"on_shift": false}))).await;
    // A stranger, and the rider now, are answered as for an order that does not exist.
    for who in [&me, &token(Role::Customer, "mallory", None), &token(Role::Staff, "sue", Some("s2"))] {
        let mut w = ws(&server, who).await;
        assert_eq!(subscribe(&mut w, &topic).await["data"]["error"], "not_found");
        let (s, _) = server.call("GET", &format!("/v1/orders/{id}"), Some(who), None).await;
        assert_eq!(s, 404);
    }
    // Back on shift: the order comes back to it. Delivered: the order's feed shows no rider any more.
    server.call("POST", &format!("/v1/riders/{rider}/shift"), Some(&me), Some(json!({"on_shift": true}))).await;
    let at = json!({"lat": STORE_LAT + 0.001, "lng": STORE_LNG, "ts": now_ms()});
    server.call("POST", &format!("/v1/riders/{rider}/location"), Some(&me), Some(at)).await;
    common::eventually("assigned again", 10, || async {
        let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
        (o["rider_id"] == rider).then_some(())
    })
    .await;
    for kind in ["picked_up", "delivered"] {
        let e = json!({"type": kind, "order_id": id, "ts": now_ms()});
        server.call("POST", &format!("/v1/riders/{rider}/events"), Some(&me), Some(e)).await;
    }
    let mut late = ws(&server, &alice).await;
    let snap = subscribe(&mut late, &topic).await;
    assert_eq!((snap["data"]["order"]["status"].as_str(), &snap["data"]["rider"]), (Some("delivered"), &Value::Null));
    // The customer keeps the finished order's feed for the grace period (1 s here), then it ends.
    let ended = loop {
        let v = next(&mut late).await.expect("the feed ends with a message");
        if v["type"] == "error" {
            break v;
        }
    };
    assert_eq!(ended["data"]["error"], "ended", "{ended}");
    // The customer who followed it live is told too.
    let ended = loop {
        let v = next(&mut customer).await.expect("the live feed ends with a message");
        if v["type"] == "error" {
            break v;
        }
    };
    assert_eq!(ended["data"]["error"], "ended", "{ended}");
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smaller_findings() {
    let scratch = ScratchDb::sqlite("ds_sec_small");
    let limited_server = Server::start(&scratch.url, &["--rate-limit-per-sec", "1", "--rate-limit-burst", "3"]);
    // A customer whose subject is "admin" throttles only itself.
    let server = &limited_server;
    let impostor = token(Role::Customer, "admin", None);
    let mut limited = false;
    for _ in 0..10 {
        limited |= server.call("GET", "/v1/orders/x", Some(&impostor), None).await.0 == 429;
    }
    assert!(limited, "the customer was rate limited");
    let (s, _) = server.call("GET", "/healthz", Some(&admin()), None).await;
    assert_eq!(s, 200, "the admin was not");
    drop(limited_server);
    let server = Server::start(&scratch.url, &[]);
    // A stock delta of i64::MIN is refused, not taken as small.
    server.seed("s1", "milk", 5).await;
    let (s, _) = server
        .call(
            "POST",
            "/v1/stores/s1/stock",
            Some(&admin()),
            Some(json!({"sku": "milk", "delta": i64::MIN, "reason": "count"})),
        )
        .await;
    assert_eq!(s, 422);
    // Names with control or bidirectional-override characters are refused.
    for name in ["Milk\u{202E}klim", "Milk\u{0007}", "Mi\u{2066}lk"] {
        let (s, b) = server
            .call(
                "PUT",
                "/v1/catalog/milk2",
                Some(&admin()),
                Some(json!({"name": name, "category": "dairy", "price_minor": 1})),
            )
            .await;
        assert_eq!(s, 422, "{name:?}: {b}");
    }
    // A token that is not valid yet is refused.
    let nbf = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        let claims =
            json!({"sub": "admin", "role": "admin", "exp": now_ms() / 1000 + 3600, "nbf": now_ms() / 1000 + 600});
        let payload = b64.encode(claims.to_string());
        let sig = darkstore::auth::hmac_hex(common::SECRET.as_bytes(), format!("{header}.{payload}").as_bytes());
        format!("{header}.{payload}.{}", b64.encode(hex::decode(sig).unwrap()))
    };
    let (s, b) = server.call("GET", "/v1/stores", Some(&nbf), None).await;
    assert_eq!(s, 401, "{b}");
    // The dashboard is never framed and runs only its own code.
    let r = server.client.get(server.url("/")).send().await.unwrap();
    let csp = r.headers().get("content-security-policy").unwrap().to_str().unwrap().to_owned();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(r.headers().get("x-content-type-options").unwrap(), "nosniff");
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_holds_a_bounded_number_of_websockets() {
    let scratch = ScratchDb::sqlite("ds_sec_wscap");
    let server = Server::start(&scratch.url, &["--ws-max-per-client", "4"]);
    let alice = token(Role::Customer, "alice", None);
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(ws(&server, &alice).await);
    }
    let url = format!("{}/v1/ws?token={alice}", server.base.replace("http://", "ws://"));
    let err = tokio_tungstenite::connect_async(&url).await.unwrap_err();
    assert!(err.to_string().contains("429"), "{err}");
    // Another client is not affected; a closed connection frees its place.
    ws(&server, &token(Role::Customer, "bob", None)).await;
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    common::eventually("a place freed", 5, || async { tokio_tungstenite::connect_async(&url).await.ok().map(|_| ()) })
        .await;
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_needs_the_customers_code_or_the_rider_at_the_door() {
    let scratch = ScratchDb::sqlite("ds_sec_proof");
    let server = Server::start(&scratch.url, &["--dispatch-tick-ms", "100", "--delivery-radius-m", "100"]);
    server.seed("s1", "milk", 10).await;
    let rider = "r-pod";
    server
        .call("PUT", &format!("/v1/riders/{rider}"), Some(&admin()), Some(json!({"name": "R", "store_id": "s1"})))
        .await;
    let me = token(Role::Rider, rider, None);
    server.call("POST", &format!("/v1/riders/{rider}/shift"), Some(&me), Some(json!({"on_shift": true}))).await;
    let at = |lat: f64, ts: i64| json!({"lat": lat, "lng": STORE_LNG, "ts": ts});
    server.call("POST", &format!("/v1/riders/{rider}/location"), Some(&me), Some(at(STORE_LAT, now_ms()))).await;
    let alice = token(Role::Customer, "alice", None);
    let staff = token(Role::Staff, "sam", Some("s1"));
    // Two orders; the drop point is 111 m north of the store, where the rider waits.
    let mut orders = Vec::new();
    for key in ["first", "second"] {
        let (_, o) = server.order(&alice, key, order_body("milk", 1)).await;
        let code = o["delivery_code"].as_str().expect("its customer sees the code").to_owned();
        assert_eq!(code.len(), 4);
        let id = o["id"].as_str().unwrap().to_owned();
        // Nobody else sees it: not staff, not the rider, not the order's feed.
        let (_, seen) = server.call("GET", &format!("/v1/orders/{id}"), Some(&staff), None).await;
        assert!(seen.get("delivery_code").is_none(), "{seen}");
        server.call("POST", &format!("/v1/orders/{id}/packed"), Some(&staff), None).await;
        orders.push((id, code));
    }
    let (first, code) = orders[0].clone();
    let (second, second_code) = orders[1].clone();
    common::eventually("both assigned", 10, || async {
        let mut n = 0;
        for (id, _) in [&orders[0], &orders[1]] {
            let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&me), None).await;
            n += (o["rider_id"] == rider) as usize;
        }
        (n == 2).then_some(())
    })
    .await;
    let (_, o) = server.call("GET", &format!("/v1/orders/{first}"), Some(&me), None).await;
    assert!(o.get("delivery_code").is_none(), "the rider never sees the code: {o}");
    for id in [&first, &second] {
        let e = json!({"type": "picked_up", "order_id": id, "ts": now_ms()});
        server.call("POST", &format!("/v1/riders/{rider}/events"), Some(&me), Some(e)).await;
    }
    let deliver = |id: &str, code: Option<&str>| {
        let mut e = json!({"type": "delivered", "order_id": id, "ts": now_ms()});
        if let Some(c) = code {
            e["code"] = json!(c);
        }
        let path = format!("/v1/riders/{rider}/events");
        let (server, me) = (&server, &me);
        async move { server.call("POST", &path, Some(me), Some(e)).await.0 }
    };
    // At the store (111 m from the door): no code, a wrong one, or another order's are refused.
    let wrong = if code == "0000" { "0001" } else { "0000" };
    for (what, given) in
        [("no code", None), ("a wrong code", Some(wrong)), ("another order's code", Some(second_code.as_str()))]
    {
        if given == Some(code.as_str()) {
            continue; // the two orders drew the same code
        }
        assert_eq!(deliver(&first, given).await, 422, "{what}");
        let (_, o) = server.call("GET", &format!("/v1/orders/{first}"), Some(&alice), None).await;
        assert_eq!(o["status"], "picked_up", "{what}");
    }
    assert!(
        common::metric(&server, "darkstore_rider_messages_dropped_total{reason=\"unproven_delivery\"} ").await >= 2.0
    );
    // The right code proves it from anywhere.
    assert_eq!(deliver(&first, Some(&code)).await, 202);
    // At the door, no code is needed.
    server
        .call("POST", &format!("/v1/riders/{rider}/location"), Some(&me), Some(at(STORE_LAT + 0.001, now_ms())))
        .await;
    assert_eq!(deliver(&second, None).await, 202);
    for id in [&first, &second] {
        let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
        assert_eq!(o["status"], "delivered");
    }
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_lets_configured_origins_in_and_no_others() {
    let scratch = ScratchDb::sqlite("ds_cors");
    let server = Server::start(&scratch.url, &["--cors-origin", "https://shop.example.com,https://staff.example.com"]);
    server.seed("s1", "milk", 10).await;
    let preflight = |origin: &'static str| {
        server
            .client
            .request(reqwest::Method::OPTIONS, server.url("/v1/orders"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type, idempotency-key")
            .send()
    };
    let ok = preflight("https://shop.example.com").await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "https://shop.example.com");
    let methods = h["access-control-allow-methods"].to_str().unwrap().to_ascii_uppercase();
    assert!(methods.contains("POST"), "{methods}");
    let headers = h["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(headers.contains("idempotency-key") && headers.contains("authorization"), "{headers}");
    let other = preflight("https://evil.example.net").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none(), "an origin not listed gets no grant");
    // The real request from an allowed origin carries the grant, and exposes what clients read.
    let r = server
        .client
        .get(server.url(&format!("/v1/availability?lat={STORE_LAT}&lng={STORE_LNG}")))
        .header("origin", "https://staff.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://staff.example.com");
    drop(server);
    // None configured: no grants at all; a malformed origin is a start-up error.
    let server = Server::start(&scratch.url, &[]);
    let r = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/v1/orders"))
        .header("origin", "https://shop.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    drop(server);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_darkstore"))
        .args(["serve", "--http", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0", "--database-url", &scratch.url])
        .args(["--jwt-secret", common::SECRET, "--cors-origin", "https://*.example.com"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cors-origin"), "{}", String::from_utf8_lossy(&out.stderr));
    scratch.drop_database().await;
}

/// PostgreSQL over TLS with verification on and a CA that did not sign the server's certificate:
/// the start stops with an error that names the setting to look at. Runs with
/// `DARKSTORE_TEST_POSTGRES` (its server has `ssl = on`, as the machine's does).
#[tokio::test]
async fn an_untrusted_database_certificate_stops_the_start_naming_the_setting() {
    let Some(scratch) = ScratchDb::postgres("ds_tls_start").await else {
        eprintln!("DARKSTORE_TEST_POSTGRES not set: skipped");
        return;
    };
    // The public roots never signed a local server's certificate.
    let sep = if scratch.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}sslmode=verify-full&sslrootcert=/etc/ssl/certs/ca-certificates.crt", scratch.url);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_darkstore"))
        .args(["serve", "--http", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0", "--database-url", &url])
        .args(["--jwt-secret", common::SECRET])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("sslrootcert") && stderr.contains("--database-url"), "{stderr}");
    scratch.drop_database().await;
}
