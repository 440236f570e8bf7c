//! The quote comes from the state of the store: its queue and its riders, not the map alone.

mod common;

use std::time::Duration;

use common::{STORE_LAT, STORE_LNG, Server, admin, now_ms, order_body, token};
use darkstore::auth::Role;
use darkstore_db::scratch::ScratchDb;
use serde_json::{Value, json};

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
    assert!(placed >= 5, "only {placed} orders before the store was busy");
    let busy = common::eventually("the queue in the quote", 5, || async {
        let v = availability(&server).await;
        (v["eta_minutes"].as_i64().unwrap() > first + 10).then_some(v)
    })
    .await;
    assert_eq!(busy["within_promise"], false, "{busy}");
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
    // An order is promised what it was quoted.
    let (_, placed) = server.order(&alice, "k0", order_body("milk", 1)).await;
    let created = humantime::parse_rfc3339(placed["created_at"].as_str().unwrap()).unwrap();
    let promised = humantime::parse_rfc3339(placed["promised_by"].as_str().unwrap()).unwrap();
    let minutes = promised.duration_since(created).unwrap().as_secs() / 60;
    assert_eq!(minutes as i64, placed["eta_minutes"].as_i64().unwrap(), "{placed}");
    drop(server);
    scratch.drop_database().await;
}
