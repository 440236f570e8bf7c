//! The role matrix and bad input, against the real server.

mod common;

use common::{STORE_LAT, STORE_LNG, Server, admin, order_body, token};
use darkstore::auth::{self, Claims, Role};
use darkstore_db::scratch::ScratchDb;
use serde_json::{Value, json};

#[tokio::test]
async fn role_matrix() {
    let scratch = ScratchDb::sqlite("ds_roles");
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 50).await;
    server.seed("s2", "milk", 0).await;
    let alice = token(Role::Customer, "alice", None);
    let (_, order) = server.order(&alice, "k1", order_body("milk", 1)).await;
    let oid = order["id"].as_str().unwrap().to_owned();

    let tokens: Vec<(&str, Option<String>)> = vec![
        ("anonymous", None),
        ("customer", Some(alice.clone())),
        ("other-customer", Some(token(Role::Customer, "mallory", None))),
        ("staff", Some(token(Role::Staff, "sam", Some("s1")))),
        ("other-staff", Some(token(Role::Staff, "sue", Some("s2")))),
        ("rider", Some(token(Role::Rider, "r1", None))),
        ("admin", Some(admin())),
    ];
    let store_body = json!({"name": "S1", "lat": STORE_LAT, "lng": STORE_LNG});
    let product_body = json!({"name": "Milk", "category": "dairy", "price_minor": 4500});
    let stock_body = json!({"sku": "milk", "delta": 1, "reason": "restock"});
    // (method, path, body, expected status for each token in the order above)
    let cases: Vec<(&str, String, Option<Value>, [u16; 7])> = vec![
        ("PUT", "/v1/stores/s1".into(), Some(store_body), [401, 403, 403, 403, 403, 403, 200]),
        ("PUT", "/v1/catalog/milk".into(), Some(product_body), [401, 403, 403, 403, 403, 403, 200]),
        ("PUT", "/v1/riders/r1".into(), Some(json!({"name": "Ravi"})), [401, 403, 403, 403, 403, 403, 201]),
        ("POST", "/v1/stores/s1/stock".into(), Some(stock_body), [401, 403, 403, 200, 403, 403, 200]),
        ("GET", "/v1/stores/s1/stock".into(), None, [401, 403, 403, 200, 403, 403, 200]),
        ("GET", format!("/v1/availability?lat={STORE_LAT}&lng={STORE_LNG}"), None, [200; 7]),
        ("GET", format!("/v1/orders/{oid}"), None, [401, 200, 404, 200, 404, 404, 200]),
        ("POST", "/v1/orders".into(), Some(order_body("milk", 1)), [401, 201, 201, 403, 403, 403, 201]),
        ("GET", "/healthz".into(), None, [200; 7]),
        ("GET", "/readyz".into(), None, [200; 7]),
        ("GET", "/metrics".into(), None, [401, 403, 403, 403, 403, 403, 200]),
        ("GET", "/openapi.json".into(), None, [200; 7]),
    ];
    for (method, path, body, expected) in &cases {
        for ((who, tok), want) in tokens.iter().zip(expected) {
            let (status, got) = if path == "/v1/orders" && tok.is_some() {
                server.order(tok.as_ref().unwrap(), &format!("matrix-{who}"), body.clone().unwrap()).await
            } else {
                server.call(method, path, tok.as_deref(), body.clone()).await
            };
            assert_eq!(status, *want, "{who} {method} {path}: {got}");
            if status >= 400 {
                assert!(got["error"].is_string() && got["message"].is_string(), "{who} {method} {path}: {got}");
            }
        }
    }
    // Packing and cancelling: other staff and strangers cannot touch the order, and are told
    // what they would be told of an order that does not exist (a rider may not cancel at all).
    let outsiders = [
        (token(Role::Customer, "mallory", None), 404, 403),
        (token(Role::Staff, "sue", Some("s2")), 404, 404),
        (token(Role::Rider, "r1", None), 403, 403),
    ];
    for (tok, cancel, pack) in &outsiders {
        let (s, _) = server.call("POST", &format!("/v1/orders/{oid}/cancel"), Some(tok), None).await;
        assert_eq!(s, *cancel);
        let (s, _) = server.call("POST", &format!("/v1/orders/{oid}/packed"), Some(tok), None).await;
        assert_eq!(s, *pack);
    }
    let (s, _) = server.call("POST", &format!("/v1/orders/{oid}/packed"), Some(&alice), None).await;
    assert_eq!(s, 403, "a customer cannot pack");
    let (s, _) =
        server.call("POST", &format!("/v1/orders/{oid}/packed"), Some(&tokens[3].1.clone().unwrap()), None).await;
    assert_eq!(s, 200, "staff of the store packs");
    scratch.drop_database().await;
}

#[tokio::test]
async fn bad_tokens_are_401() {
    let scratch = ScratchDb::sqlite("ds_tokens");
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 5).await;
    let expired = auth::sign(
        common::SECRET.as_bytes(),
        &Claims { sub: "alice".into(), role: Role::Customer, store: None, exp: 1_000 },
    );
    let forged = auth::sign(
        b"not-the-server-secret",
        &Claims { sub: "alice".into(), role: Role::Admin, store: None, exp: i64::MAX / 2 },
    );
    for (what, tok) in [("expired", expired.as_str()), ("forged", forged.as_str()), ("garbage", "abc.def")] {
        let (s, body) = server.call("GET", "/v1/stores/s1/stock", Some(tok), None).await;
        assert_eq!((s, body["error"].as_str()), (401, Some("unauthorized")), "{what}: {body}");
    }
    let resp =
        server.client.get(server.url("/v1/stores/s1/stock")).header("authorization", "Basic abc").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    scratch.drop_database().await;
}

#[tokio::test]
async fn bad_input_is_a_precise_4xx_and_changes_nothing() {
    let scratch = ScratchDb::sqlite("ds_bad");
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 10).await;
    let alice = token(Role::Customer, "alice", None);
    let admin = admin();
    let line = |sku: &str, qty: Value| json!({"lat": STORE_LAT, "lng": STORE_LNG, "lines": [{"sku": sku, "qty": qty}]});
    // Orders: (what, raw body, status, code)
    let orders: Vec<(&str, String, u16, &str)> = vec![
        ("lat out of range", json!({"lat": 91.0, "lng": 0.0, "lines": [{"sku": "milk", "qty": 1}]}).to_string(), 422, "invalid_request"),
        ("lng out of range", json!({"lat": 0.0, "lng": -181.0, "lines": [{"sku": "milk", "qty": 1}]}).to_string(), 422, "invalid_request"),
        ("lat as string", json!({"lat": "12.9", "lng": 77.6, "lines": [{"sku": "milk", "qty": 1}]}).to_string(), 422, "invalid_request"),
        ("lat missing", json!({"lng": 77.6, "lines": [{"sku": "milk", "qty": 1}]}).to_string(), 422, "invalid_request"),
        ("NaN", r#"{"lat": NaN, "lng": 77.6, "lines": []}"#.into(), 400, "invalid_request"),
        ("unknown sku", line("caviar", json!(1)).to_string(), 422, "invalid_request"),
        ("bad sku", line("milk/../x", json!(1)).to_string(), 422, "invalid_request"),
        ("zero qty", line("milk", json!(0)).to_string(), 422, "invalid_request"),
        ("negative qty", line("milk", json!(-3)).to_string(), 422, "invalid_request"),
        ("fractional qty", line("milk", json!(1.5)).to_string(), 422, "invalid_request"),
        ("absurd qty", line("milk", json!(1e30)).to_string(), 422, "invalid_request"),
        ("large qty", line("milk", json!(1_000_001)).to_string(), 422, "invalid_request"),
        ("no lines", json!({"lat": STORE_LAT, "lng": STORE_LNG, "lines": []}).to_string(), 422, "invalid_request"),
        (
            "duplicate sku",
            json!({"lat": STORE_LAT, "lng": STORE_LNG, "lines": [{"sku": "milk", "qty": 1}, {"sku": "milk", "qty": 1}]}).to_string(),
            422,
            "invalid_request",
        ),
        ("malformed json", "{\"lat\": 12.9,".into(), 400, "invalid_request"),
        ("trailing garbage", format!("{} x", line("milk", json!(1))), 400, "invalid_request"),
        ("too far away", json!({"lat": 19.07, "lng": 72.87, "lines": [{"sku": "milk", "qty": 1}]}).to_string(), 422, "not_serviceable"),
        ("more than in stock", line("milk", json!(11)).to_string(), 409, "insufficient_stock"),
        ("oversized body", format!("{{\"pad\": \"{}\"}}", "x".repeat(70 * 1024)), 413, "invalid_request"),
    ];
    for (i, (what, body, status, code)) in orders.iter().enumerate() {
        let resp = server
            .client
            .post(server.url("/v1/orders"))
            .bearer_auth(&alice)
            .header("idempotency-key", format!("bad-{i}"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let got_status = resp.status().as_u16();
        let got: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!((got_status, got["error"].as_str()), (*status, Some(*code)), "{what}: {got}");
    }
    // No Idempotency-Key, or one that is not 1-200 visible ASCII characters: 400.
    for key in [None, Some("has space"), Some(&*"k".repeat(201))] {
        let mut req = server.client.post(server.url("/v1/orders")).bearer_auth(&alice);
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        let resp = req.body(line("milk", json!(1)).to_string()).send().await.unwrap();
        assert_eq!(resp.status(), 400, "key {key:?}");
    }

    // Stock: (what, body, status)
    let stock: Vec<(&str, Value, u16)> = vec![
        ("zero delta", json!({"sku": "milk", "delta": 0, "reason": "count"}), 422),
        ("unknown reason", json!({"sku": "milk", "delta": 1, "reason": "gift"}), 422),
        ("unknown sku", json!({"sku": "caviar", "delta": 1, "reason": "restock"}), 422),
        ("negative restock", json!({"sku": "milk", "delta": -1, "reason": "restock"}), 422),
        ("fractional delta", json!({"sku": "milk", "delta": 0.5, "reason": "count"}), 422),
        ("bad expiry", json!({"sku": "milk", "delta": 1, "reason": "restock", "expires_at": "tomorrow"}), 422),
        ("below zero", json!({"sku": "milk", "delta": -11, "reason": "damage"}), 409),
    ];
    for (what, body, status) in &stock {
        let (s, got) = server.call("POST", "/v1/stores/s1/stock", Some(&admin), Some(body.clone())).await;
        assert_eq!(s, *status, "{what}: {got}");
    }
    let (s, _) = server
        .call(
            "POST",
            "/v1/stores/nowhere/stock",
            Some(&admin),
            Some(json!({"sku": "milk", "delta": 1, "reason": "restock"})),
        )
        .await;
    assert_eq!(s, 404);
    // Reserve 4, then a write-off that would dip below reserved is 409 with the numbers.
    let (s, _) = server.order(&alice, "ok-1", line("milk", json!(4))).await;
    assert_eq!(s, 201);
    let (s, got) = server
        .call(
            "POST",
            "/v1/stores/s1/stock",
            Some(&admin),
            Some(json!({"sku": "milk", "delta": -7, "reason": "damage"})),
        )
        .await;
    assert_eq!((s, got["reserved"].as_i64()), (409, Some(4)), "{got}");
    // Nothing of the above changed the stock.
    let l = server.stock_line("s1", "milk").await;
    assert_eq!((l["on_hand"].as_i64(), l["reserved"].as_i64(), l["available"].as_i64()), (Some(10), Some(4), Some(6)));

    // Admin bodies.
    let admin_cases: Vec<(&str, &str, Value, u16)> = vec![
        ("PUT", "/v1/stores/s9", json!({"name": "x", "lat": 100.0, "lng": 0.0}), 422),
        ("PUT", "/v1/stores/bad%20id", json!({"name": "x", "lat": 1.0, "lng": 1.0}), 422),
        ("PUT", "/v1/stores/s9", json!({"name": "", "lat": 1.0, "lng": 1.0}), 422),
        ("PUT", "/v1/catalog/tea", json!({"name": "Tea", "category": "staples", "price_minor": -1}), 422),
        ("PUT", "/v1/catalog/tea", json!({"name": "Tea", "category": "staples", "price_minor": 1.5}), 422),
        ("PUT", "/v1/riders/r9", json!({"name": "R", "store_id": "nowhere"}), 422),
    ];
    for (method, path, body, status) in &admin_cases {
        let (s, got) = server.call(method, path, Some(&admin), Some(body.clone())).await;
        assert_eq!(s, *status, "{method} {path}: {got}");
    }

    // Availability query strings.
    let queries = [
        ("lat=abc&lng=77.6", 422),
        ("lat=NaN&lng=77.6", 422),
        ("lat=12.9", 422),
        ("lat=95&lng=77.6", 422),
        ("lat=12.97&lng=77.64&limit=0", 422),
        ("lat=12.97&lng=77.64&limit=1001", 422),
        ("lat=12.97&lng=77.64&limit=x", 422),
        ("lat=19.07&lng=72.87", 200),
    ];
    for (q, status) in queries {
        let (s, got) = server.call("GET", &format!("/v1/availability?{q}"), None, None).await;
        assert_eq!(s, status, "{q}: {got}");
    }
    let (_, far) = server.call("GET", "/v1/availability?lat=19.07&lng=72.87", None, None).await;
    assert_eq!((far["serviceable"].as_bool(), far["items"].as_array().map(Vec::len)), (Some(false), Some(0)));
    let (s, got) = server.call("GET", "/v1/nope", None, None).await;
    assert_eq!((s, got["error"].as_str()), (404, Some("not_found")));
    scratch.drop_database().await;
}

#[tokio::test]
async fn availability_pages_by_sku_and_hides_what_cannot_be_sold() {
    let scratch = ScratchDb::sqlite("ds_avail");
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 3).await;
    let admin = admin();
    for (sku, category, qty, expires) in [
        ("apple", "fruit_veg", 5, None),
        ("bread", "bakery", 2, None),
        ("curd", "dairy", 4, Some("2001-01-01T00:00:00Z")),
        ("eggs", "dairy", 0, None),
    ] {
        let (s, _) = server
            .call(
                "PUT",
                &format!("/v1/catalog/{sku}"),
                Some(&admin),
                Some(json!({"name": sku, "category": category, "price_minor": 100})),
            )
            .await;
        assert_eq!(s, 201);
        if qty > 0 {
            let mut body = json!({"sku": sku, "delta": qty, "reason": "restock"});
            if let Some(e) = expires {
                body["expires_at"] = json!(e);
            }
            let (s, got) = server.call("POST", "/v1/stores/s1/stock", Some(&admin), Some(body)).await;
            assert_eq!(s, 200, "{got}");
        }
    }
    let page = |q: String| {
        let server = &server;
        async move {
            let (s, got) =
                server.call("GET", &format!("/v1/availability?lat={STORE_LAT}&lng={STORE_LNG}{q}"), None, None).await;
            assert_eq!(s, 200, "{got}");
            let skus: Vec<String> =
                got["items"].as_array().unwrap().iter().map(|i| i["sku"].as_str().unwrap().to_owned()).collect();
            (skus, got["next"].clone(), got)
        }
    };
    // Expired curd and out-of-stock eggs never show.
    let (all, next, body) = page(String::new()).await;
    assert_eq!(all, ["apple", "bread", "milk"]);
    assert_eq!(next, Value::Null);
    assert_eq!(body["store_id"], "s1");
    // No rider serves the store: a quote, but not one within the promise.
    assert!(body["eta_minutes"].as_i64().unwrap() > 0);
    assert_eq!(body["within_promise"], false);
    let (first, next, _) = page("&limit=2".into()).await;
    assert_eq!((first.as_slice(), next.as_str()), (&["apple".to_owned(), "bread".to_owned()][..], Some("bread")));
    let (rest, next, _) = page("&limit=2&after=bread".into()).await;
    assert_eq!((rest, next), (vec!["milk".to_owned()], Value::Null));
    let (dairy, _, _) = page("&category=dairy".into()).await;
    assert_eq!(dairy, ["milk"]);
    scratch.drop_database().await;
}

/// The first page is kept per store between changes: every kind of change must show at once,
/// including a lot expiring with no request at all in between.
#[tokio::test]
async fn availability_follows_every_change_of_stock_catalog_and_time() {
    let scratch = ScratchDb::sqlite("ds_avail_fresh");
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 5).await;
    let admin = admin();
    let alice = token(Role::Customer, "alice", None);
    let page = || async {
        let (s, got) =
            server.call("GET", &format!("/v1/availability?lat={STORE_LAT}&lng={STORE_LNG}"), None, None).await;
        assert_eq!(s, 200, "{got}");
        let items = got["items"].as_array().unwrap().clone();
        items
            .into_iter()
            .map(|i| (i["sku"].as_str().unwrap().to_owned(), i["available"].as_i64().unwrap(), i))
            .collect::<Vec<_>>()
    };
    let milk = |p: &[(String, i64, Value)]| p.iter().find(|(s, _, _)| s == "milk").map(|(_, a, _)| *a);
    assert_eq!(milk(&page().await), Some(5));
    assert_eq!(milk(&page().await), Some(5), "served again unchanged");
    // An order takes units.
    let (s, order) = server.order(&alice, "k1", order_body("milk", 2)).await;
    assert_eq!(s, 201, "{order}");
    assert_eq!(milk(&page().await), Some(3));
    // Cancelling gives them back.
    let path = format!("/v1/orders/{}/cancel", order["id"].as_str().unwrap());
    assert_eq!(server.call("POST", &path, Some(&alice), None).await.0, 200);
    assert_eq!(milk(&page().await), Some(5));
    // A write-off and a restock.
    let body = json!({"sku": "milk", "delta": -4, "reason": "damage"});
    assert_eq!(server.call("POST", "/v1/stores/s1/stock", Some(&admin), Some(body)).await.0, 200);
    assert_eq!(milk(&page().await), Some(1));
    // A catalog edit shows in the items.
    let product = json!({"name": "Toned milk 1 l", "category": "dairy", "price_minor": 4700});
    assert_eq!(server.call("PUT", "/v1/catalog/milk", Some(&admin), Some(product)).await.0, 200);
    let p = page().await;
    let item = &p.iter().find(|(s, _, _)| s == "milk").unwrap().2;
    assert_eq!((item["name"].as_str(), item["price_minor"].as_i64()), (Some("Toned milk 1 l"), Some(4700)));
    // A lot that expires in two seconds: on the page now, gone after its expiry with nothing else
    // changing in between.
    let (s, _) = server
        .call(
            "PUT",
            "/v1/catalog/curd",
            Some(&admin),
            Some(json!({"name": "Curd", "category": "dairy", "price_minor": 300})),
        )
        .await;
    assert_eq!(s, 201);
    let soon = humantime::format_rfc3339_millis(std::time::SystemTime::now() + std::time::Duration::from_secs(2));
    let body = json!({"sku": "curd", "delta": 3, "reason": "restock", "expires_at": soon.to_string()});
    assert_eq!(server.call("POST", "/v1/stores/s1/stock", Some(&admin), Some(body)).await.0, 200);
    let curd = |p: &[(String, i64, Value)]| p.iter().find(|(s, _, _)| s == "curd").map(|(_, a, _)| *a);
    assert_eq!(curd(&page().await), Some(3));
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(curd(&page().await), None, "an expired lot must leave the page");
    assert_eq!(milk(&page().await), Some(1));
    scratch.drop_database().await;
}

#[tokio::test]
async fn rate_limits_answer_429() {
    let scratch = ScratchDb::sqlite("ds_rate");
    // The helper turns limits off; a later flag wins.
    let server = Server::start(&scratch.url, &["--rate-limit-per-sec", "1", "--rate-limit-burst", "5"]);
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(server.call("GET", "/healthz", None, None).await.0);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    let (s, body) = server.call("GET", "/healthz", None, None).await;
    assert_eq!((s, body["error"].as_str()), (429, Some("rate_limited")));
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_and_paused_stores_hand_their_points_to_an_open_one() {
    let scratch = ScratchDb::sqlite("ds_hours");
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 50).await;
    // A second store 1.3 km south with the same item.
    let admin = admin();
    let s2 = json!({"name": "South", "lat": STORE_LAT - 0.012, "lng": STORE_LNG});
    assert_eq!(server.call("PUT", "/v1/stores/s2", Some(&admin), Some(s2.clone())).await.0, 201);
    let restock = json!({"sku": "milk", "delta": 50, "reason": "restock"});
    assert_eq!(server.call("POST", "/v1/stores/s2/stock", Some(&admin), Some(restock)).await.0, 200);
    // Between the two (both reach it), and just north of s1 (only s1 reaches it).
    let between = (STORE_LAT - 0.005, STORE_LNG);
    let north = (STORE_LAT + 0.012, STORE_LNG);
    let avail = |p: (f64, f64)| {
        let server = &server;
        async move { server.call("GET", &format!("/v1/availability?lat={}&lng={}", p.0, p.1), None, None).await.1 }
    };
    assert_eq!(avail(between).await["store_id"], "s1");
    assert_eq!(avail(between).await["open"], true);

    // Staff of s1 pause it: the point between goes to s2; the one only s1 reaches is refused.
    let staff = token(Role::Staff, "sam", Some("s1"));
    let pause = json!({"paused": {"reason": "inventory count"}});
    let (s, v) = server.call("PATCH", "/v1/stores/s1", Some(&staff), Some(pause.clone())).await;
    assert_eq!(
        (s, v["paused"]["reason"].as_str(), v["open"].as_bool()),
        (200, Some("inventory count"), Some(false)),
        "{v}"
    );
    let v = avail(between).await;
    assert_eq!((v["store_id"].as_str(), v["accepting"].as_bool()), (Some("s2"), Some(true)), "{v}");
    let v = avail(north).await;
    assert_eq!(
        (v["store_id"].as_str(), v["open"].as_bool(), v["accepting"].as_bool(), v["reason"].as_str()),
        (Some("s1"), Some(false), Some(false), Some("paused")),
        "{v}"
    );
    let alice = token(Role::Customer, "alice", None);
    let body = |p: (f64, f64)| json!({"lat": p.0, "lng": p.1, "lines": [{"sku": "milk", "qty": 1}]});
    let (s, e) = server.order(&alice, "north-paused", body(north)).await;
    assert_eq!((s, e["error"].as_str(), e["reason"].as_str()), (422, Some("not_serviceable"), Some("paused")), "{e}");
    let (s, o) = server.order(&alice, "between-paused", body(between)).await;
    assert_eq!((s, o["store_id"].as_str()), (201, Some("s2")), "{o}");
    // Others may not pause it.
    let other = token(Role::Staff, "olga", Some("s2"));
    assert_eq!(server.call("PATCH", "/v1/stores/s1", Some(&other), Some(pause.clone())).await.0, 403);
    assert_eq!(server.call("PATCH", "/v1/stores/s1", Some(&alice), Some(pause)).await.0, 403);
    let (s, _) = server.call("PATCH", "/v1/stores/s1", Some(&staff), Some(json!({"paused": null}))).await;
    assert_eq!(s, 200);
    assert_eq!(avail(between).await["store_id"], "s1");

    // Hours in UTC that leave out today: closed until midnight.
    let now_s = common::now_ms() / 1000;
    let (today, next_midnight) = ((now_s / 86_400 + 3) % 7, (now_s / 86_400 + 1) * 86_400);
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let hours: serde_json::Map<String, serde_json::Value> = days
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as i64 != today)
        .map(|(_, d)| (d.to_string(), json!([["00:00", "24:00"]])))
        .collect();
    // Not across midnight: the test's "today" must be the server's.
    if next_midnight - now_s < 10 {
        tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    }
    let s1 = json!({"name": "Indiranagar", "lat": STORE_LAT, "lng": STORE_LNG, "timezone": "UTC", "hours": hours});
    let (s, v) = server.call("PUT", "/v1/stores/s1", Some(&admin), Some(s1)).await;
    assert_eq!((s, v["open"].as_bool()), (200, Some(false)), "{v}");
    let v = avail(north).await;
    assert_eq!((v["reason"].as_str(), v["accepting"].as_bool()), (Some("closed"), Some(false)), "{v}");
    let opens = humantime::parse_rfc3339(v["opens_at"].as_str().unwrap()).unwrap();
    let opens = opens.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert_eq!(opens, (common::now_ms() / 1000 / 86_400 + 1) * 86_400, "{v}");
    let (s, e) = server.order(&alice, "north-closed", body(north)).await;
    assert_eq!((s, e["reason"].as_str()), (422, Some("closed")), "{e}");
    assert_eq!(avail(between).await["store_id"], "s2");
    // Bad hours and zones are refused.
    for (tz, hours) in [
        ("Mars/Olympus", json!({"mon": [["07:00", "23:00"]]})),
        ("UTC", json!({"monday": [["07:00", "23:00"]]})),
        ("UTC", json!({"mon": [["7am", "23:00"]]})),
    ] {
        let bad = json!({"name": "x", "lat": STORE_LAT, "lng": STORE_LNG, "timezone": tz, "hours": hours});
        assert_eq!(server.call("PUT", "/v1/stores/s1", Some(&admin), Some(bad)).await.0, 422, "{tz}");
    }
    // Hours survive a restart.
    drop(server);
    let server = Server::start(&scratch.url, &[]);
    let (_, v) = server.call("GET", "/v1/stores/s1", None, None).await;
    assert_eq!((v["open"].as_bool(), v["timezone"].as_str()), (Some(false), Some("UTC")), "{v}");
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_available_items_by_prefix_and_typo() {
    let scratch = ScratchDb::sqlite("ds_search");
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 5).await;
    let admin = admin();
    for (sku, name, qty) in [
        ("banana", "Banana Robusta", 10),
        ("banana-chips", "Banana Chips, Salted", 10),
        ("tomato", "Tomato Hybrid", 10),
        ("ketchup", "Tomato Ketchup", 0),
    ] {
        let p = json!({"name": name, "category": "food", "price_minor": 100});
        server.call("PUT", &format!("/v1/catalog/{sku}"), Some(&admin), Some(p)).await;
        if qty > 0 {
            let r = json!({"sku": sku, "delta": qty, "reason": "restock"});
            server.call("POST", "/v1/stores/s1/stock", Some(&admin), Some(r)).await;
        }
    }
    let search = |q: &'static str| {
        let server = &server;
        async move {
            let path = format!("/v1/availability?lat={STORE_LAT}&lng={STORE_LNG}&q={q}");
            let (s, v) = server.call("GET", &path, None, None).await;
            assert_eq!(s, 200, "{v}");
            v["items"].as_array().unwrap().iter().map(|i| i["sku"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
        }
    };
    assert_eq!(search("BAN").await, ["banana", "banana-chips"]);
    assert_eq!(search("bananna%20chips").await, ["banana-chips"]);
    // Ketchup is out of stock: only the tomato.
    assert_eq!(search("tomtao").await, ["tomato"]);
    assert_eq!(search("milk").await, ["milk"]);
    assert!(search("xyz").await.is_empty());
    // A product renamed is found by its new name.
    let p = json!({"name": "Cavendish Banana", "category": "food", "price_minor": 100});
    server.call("PUT", "/v1/catalog/banana", Some(&admin), Some(p)).await;
    assert_eq!(search("cavend").await, ["banana"]);
    let long = "x".repeat(101);
    let (s, _) =
        server.call("GET", &format!("/v1/availability?lat={STORE_LAT}&lng={STORE_LNG}&q={long}"), None, None).await;
    assert_eq!(s, 422);
    let (s, _) =
        server.call("GET", &format!("/v1/availability?lat={STORE_LAT}&lng={STORE_LNG}&q=%20"), None, None).await;
    assert_eq!(s, 422);
    drop(server);
    scratch.drop_database().await;
}
