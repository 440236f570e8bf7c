//! Black-box tests of the order path against the real server over HTTP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Server, admin, order_body, token};
use darkstore::auth::Role;
use darkstore_db::scratch::ScratchDb;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_customers_contest_one_hundred_units() {
    let scratch = ScratchDb::sqlite("ds_contest");
    let server = Arc::new(Server::start(&scratch.url, &[]));
    server.seed("s1", "milk", 100).await;
    let mut tasks = Vec::new();
    for i in 0..500 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let t = token(Role::Customer, &format!("c{i}"), None);
            server.order(&t, "k", order_body("milk", 1)).await
        }));
    }
    let (mut created, mut short, mut other) = (0, 0, Vec::new());
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            201 => created += 1,
            409 if body["error"] == "insufficient_stock" => {
                assert_eq!(body["lines"][0]["sku"], "milk");
                short += 1;
            }
            _ => other.push((status, body)),
        }
    }
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert_eq!((created, short), (100, 400));
    let line = server.stock_line("s1", "milk").await;
    assert_eq!(
        (line["on_hand"].as_i64(), line["reserved"].as_i64(), line["available"].as_i64()),
        (Some(100), Some(100), Some(0))
    );
    scratch.drop_database().await;
}

#[tokio::test]
async fn idempotency_keys_replay_and_conflict() {
    let scratch = ScratchDb::sqlite("ds_idem");
    let server = Arc::new(Server::start(&scratch.url, &[]));
    server.seed("s1", "milk", 10).await;
    let alice = token(Role::Customer, "alice", None);
    let (s1, first) = server.order(&alice, "key-1", order_body("milk", 2)).await;
    assert_eq!(s1, 201, "{first}");
    // Same key, same body: the same order, nothing reserved twice.
    let (s2, again) = server.order(&alice, "key-1", order_body("milk", 2)).await;
    assert_eq!(s2, 201);
    assert_eq!(again["id"], first["id"]);
    // Same key, another body: 409 conflict.
    let (s3, conflict) = server.order(&alice, "key-1", order_body("milk", 3)).await;
    assert_eq!((s3, conflict["error"].as_str()), (409, Some("conflict")));
    // Another customer's identical key is theirs alone.
    let bob = token(Role::Customer, "bob", None);
    let (s4, bobs) = server.order(&bob, "key-1", order_body("milk", 2)).await;
    assert_eq!(s4, 201);
    assert_ne!(bobs["id"], first["id"]);
    // Ten concurrent requests with one new key make one order.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let server = server.clone();
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move { server.order(&alice, "key-2", order_body("milk", 1)).await }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let (s, b) = t.await.unwrap();
        assert_eq!(s, 201, "{b}");
        ids.push(b["id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let line = server.stock_line("s1", "milk").await;
    assert_eq!(line["reserved"], 5);
    // A replay survives a restart.
    drop(server);
    let server = Server::start(&scratch.url, &[]);
    let (s5, replay) = server.order(&alice, "key-1", order_body("milk", 2)).await;
    assert_eq!((s5, &replay["id"]), (201, &first["id"]));
    assert_eq!(server.stock_line("s1", "milk").await["reserved"], 5);
    drop(server);
    scratch.drop_database().await;
}

/// Finished orders leave memory after the retention window and are read back from the database:
/// reading, replaying, cancelling again and following them all answer as before.
#[tokio::test]
async fn finished_orders_leave_memory_and_still_answer() {
    let scratch = ScratchDb::sqlite("ds_retention");
    let flags = ["--order-retention-minutes", "0.01", "--expiry-sweep-secs", "1"];
    let server = Server::start(&scratch.url, &flags);
    server.seed("s1", "milk", 5).await;
    let alice = token(Role::Customer, "alice", None);
    let (_, done) = server.order(&alice, "old", order_body("milk", 1)).await;
    let (_, open) = server.order(&alice, "open", order_body("milk", 1)).await;
    let (done_id, open_id) = (done["id"].as_str().unwrap().to_owned(), open["id"].as_str().unwrap().to_owned());
    let cancel = format!("/v1/orders/{done_id}/cancel");
    assert_eq!(server.call("POST", &cancel, Some(&alice), None).await.0, 200);
    let metric = |text: &str, name: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(f64::NAN)
    };
    // Wait for a sweep past the window (0.6 s, swept every second).
    let mut evicted = 0.0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let text =
            server.client.get(server.url("/metrics")).bearer_auth(admin()).send().await.unwrap().text().await.unwrap();
        evicted = metric(&text, "darkstore_orders_evicted_total ");
        if evicted >= 1.0 {
            assert_eq!(metric(&text, "darkstore_orders "), 1.0, "only the open order stays in memory");
            break;
        }
    }
    assert_eq!(evicted, 1.0, "the cancelled order was let go, the open one was not");
    // Read back: its owner sees it, a stranger does not, it cannot be cancelled twice, and a
    // retried placement answers with it without taking stock again.
    let (s, got) = server.call("GET", &format!("/v1/orders/{done_id}"), Some(&alice), None).await;
    assert_eq!((s, got["status"].as_str(), got["lines"][0]["sku"].as_str()), (200, Some("cancelled"), Some("milk")));
    let bob = token(Role::Customer, "bob", None);
    assert_eq!(server.call("GET", &format!("/v1/orders/{done_id}"), Some(&bob), None).await.0, 404);
    let (s, again) = server.call("POST", &cancel, Some(&alice), None).await;
    assert_eq!((s, again["status"].as_str()), (409, Some("cancelled")));
    let (s, replay) = server.order(&alice, "old", order_body("milk", 1)).await;
    assert_eq!((s, replay["id"].as_str(), replay["status"].as_str()), (201, Some(done_id.as_str()), Some("cancelled")));
    assert_eq!(server.stock_line("s1", "milk").await["reserved"], 1, "only the open order holds stock");
    let (s, _) = server.call("GET", &format!("/v1/orders/{open_id}"), Some(&alice), None).await;
    assert_eq!(s, 200);
    assert_eq!(server.call("GET", "/v1/orders/o999", Some(&admin()), None).await.0, 404);
    scratch.drop_database().await;
}

/// Past its window an idempotency key is forgotten in memory, and the database's unique key turns
/// a retry into a precise 409 that takes no stock, not a second order and not a 5xx.
#[tokio::test]
async fn an_expired_idempotency_key_is_a_409_not_a_second_order_on_sqlite() {
    expired_key(ScratchDb::sqlite("ds_key_expiry")).await;
}

#[tokio::test]
async fn an_expired_idempotency_key_is_a_409_not_a_second_order_on_postgres() {
    let Some(scratch) = ScratchDb::postgres("ds_key_expiry").await else {
        eprintln!("DARKSTORE_TEST_POSTGRES is not set: PostgreSQL key-expiry test skipped");
        return;
    };
    expired_key(scratch).await;
}

async fn expired_key(scratch: ScratchDb) {
    let flags = ["--idempotency-key-hours", "0.0003", "--expiry-sweep-secs", "1"];
    let server = Server::start(&scratch.url, &flags);
    server.seed("s1", "milk", 5).await;
    let alice = token(Role::Customer, "alice", None);
    let (s, first) = server.order(&alice, "k", order_body("milk", 1)).await;
    assert_eq!(s, 201, "{first}");
    // The window is about a second; sweeps run every second.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (s, again) = server.order(&alice, "k", order_body("milk", 1)).await;
    assert_eq!((s, again["error"].as_str()), (409, Some("conflict")), "{again}");
    assert!(again["message"].as_str().unwrap().contains("use a new key"), "{again}");
    let (s, fresh) = server.order(&alice, "k2", order_body("milk", 1)).await;
    assert_eq!(s, 201, "{fresh}");
    assert_eq!(server.stock_line("s1", "milk").await["reserved"], 2, "the refused retry took nothing");
    scratch.drop_database().await;
}

#[tokio::test]
async fn lifecycle_cancel_releases_and_packed_blocks_nothing() {
    let scratch = ScratchDb::sqlite("ds_life");
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 5).await;
    let alice = token(Role::Customer, "alice", None);
    let staff = token(Role::Staff, "sam", Some("s1"));
    let (_, a) = server.order(&alice, "a", order_body("milk", 2)).await;
    let (_, b) = server.order(&alice, "b", order_body("milk", 2)).await;
    let (a, b) = (a["id"].as_str().unwrap().to_owned(), b["id"].as_str().unwrap().to_owned());
    assert_eq!(server.stock_line("s1", "milk").await["available"], 1);
    let (s, packed) = server.call("POST", &format!("/v1/orders/{a}/packed"), Some(&staff), None).await;
    assert_eq!((s, packed["status"].as_str()), (200, Some("packed")));
    // Packing twice is a conflict.
    let (s, again) = server.call("POST", &format!("/v1/orders/{a}/packed"), Some(&staff), None).await;
    assert_eq!((s, again["status"].as_str()), (409, Some("packed")));
    let (s, cancelled) = server.call("POST", &format!("/v1/orders/{b}/cancel"), Some(&alice), None).await;
    assert_eq!((s, cancelled["status"].as_str()), (200, Some("cancelled")));
    assert_eq!(server.stock_line("s1", "milk").await["available"], 3);
    let (s, _) = server.call("POST", &format!("/v1/orders/{b}/cancel"), Some(&alice), None).await;
    assert_eq!(s, 409);
    let (s, got) = server.call("GET", &format!("/v1/orders/{b}"), Some(&alice), None).await;
    assert_eq!((s, got["status"].as_str()), (200, Some("cancelled")));
    scratch.drop_database().await;
}

#[tokio::test]
async fn payment_holds_confirm_by_webhook_or_expire_across_a_restart() {
    let scratch = ScratchDb::sqlite("ds_pay");
    let flags = ["--payment-webhook-secret", "whsec-test", "--payment-hold-minutes", "0.02"];
    let server = Server::start(&scratch.url, &flags);
    server.seed("s1", "milk", 5).await;
    let alice = token(Role::Customer, "alice", None);
    let (_, paid) = server.order(&alice, "p1", order_body("milk", 1)).await;
    let (_, unpaid) = server.order(&alice, "p2", order_body("milk", 2)).await;
    assert_eq!(paid["status"], "pending_payment");
    assert_eq!(server.stock_line("s1", "milk").await["available"], 2);
    let event = json!({"order_id": paid["id"], "status": "succeeded"}).to_string();
    let sig = darkstore::auth::hmac_hex(b"whsec-test", event.as_bytes());
    let hook = |sig: String| {
        server
            .client
            .post(server.url("/v1/payments/webhook"))
            .header("x-signature", format!("sha256={sig}"))
            .body(event.clone())
            .send()
    };
    assert_eq!(hook("00".repeat(32)).await.unwrap().status(), 401);
    let ok = hook(sig.clone()).await.unwrap();
    assert_eq!(ok.status(), 200);
    // A retried delivery is fine.
    assert_eq!(hook(sig).await.unwrap().status(), 200);
    // Kill the server before the unpaid hold runs out (1.2 s), restart after it did.
    let mut server = server;
    server.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let server = Server::start(&scratch.url, &flags);
    let mut status = String::new();
    for _ in 0..50 {
        let (_, o) =
            server.call("GET", &format!("/v1/orders/{}", unpaid["id"].as_str().unwrap()), Some(&alice), None).await;
        status = o["status"].as_str().unwrap_or_default().to_owned();
        if status == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "expired");
    let (_, o) = server.call("GET", &format!("/v1/orders/{}", paid["id"].as_str().unwrap()), Some(&alice), None).await;
    assert_eq!(o["status"], "confirmed");
    let line = server.stock_line("s1", "milk").await;
    assert_eq!((line["reserved"].as_i64(), line["available"].as_i64()), (Some(1), Some(4)));
    drop(server);
    scratch.drop_database().await;
}

/// SIGKILL during a burst of orders: every order that got a 201 is there after a restart, and
/// the stock adds up to the ledger.
async fn crash_during_burst(scratch: ScratchDb) {
    let mut server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 1_000_000).await;
    let server_base = server.base.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..16 {
        let stop = stop.clone();
        let base = server_base.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let t = token(Role::Customer, &format!("crash{w}"), None);
            let mut confirmed = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let resp = client
                    .post(format!("{base}/v1/orders"))
                    .bearer_auth(&t)
                    .header("idempotency-key", format!("k{i}"))
                    .body(order_body("milk", 1).to_string())
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 201 => {
                        if let Ok(body) = r.json::<serde_json::Value>().await {
                            confirmed.push(body["id"].as_str().unwrap().to_owned());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            confirmed
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut confirmed = Vec::new();
    for t in tasks {
        confirmed.extend(t.await.unwrap());
    }
    assert!(confirmed.len() > 50, "the burst placed only {} orders", confirmed.len());
    let server = Server::start(&scratch.url, &[]);
    let admin = admin();
    for id in &confirmed {
        let (s, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&admin), None).await;
        assert_eq!((s, o["status"].as_str()), (200, Some("confirmed")), "order {id} got a 201 but is lost");
    }
    let db = darkstore_db::Db::connect(&scratch.url).await.unwrap();
    let snap = db.load().await.unwrap();
    let ordered: i64 = snap.orders.iter().flat_map(|o| &o.lines).map(|l| l.qty).sum();
    assert!(ordered >= confirmed.len() as i64);
    let ledger = db.ledger_totals().await.unwrap();
    assert_eq!(ledger, vec![("s1".to_owned(), "milk".to_owned(), 1_000_000, ordered)]);
    let line = server.stock_line("s1", "milk").await;
    assert_eq!((line["on_hand"].as_i64(), line["reserved"].as_i64()), (Some(1_000_000), Some(ordered)));
    db.close().await;
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_loses_no_confirmed_order_on_sqlite() {
    crash_during_burst(ScratchDb::sqlite("ds_crash")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_loses_no_confirmed_order_on_postgres() {
    let Some(scratch) = ScratchDb::postgres("ds_crash").await else {
        eprintln!("DARKSTORE_TEST_POSTGRES is not set: PostgreSQL crash test skipped");
        return;
    };
    crash_during_burst(scratch).await;
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let scratch = ScratchDb::sqlite("ds_term");
    let mut server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 3).await;
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_lists_newest_first_by_who_asks() {
    let scratch = ScratchDb::sqlite("ds_order_lists");
    let server = Server::start(&scratch.url, &[]);
    server.seed("s1", "milk", 100).await;
    let alice = token(Role::Customer, "alice", None);
    let bob = token(Role::Customer, "bob", None);
    let mut alices = Vec::new();
    for i in 0..5 {
        let (s, o) = server.order(&alice, &format!("a{i}"), order_body("milk", 1)).await;
        assert_eq!(s, 201, "{o}");
        alices.push(o["id"].as_str().unwrap().to_owned());
        // Placement times a few milliseconds apart: the list is by placement time.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let (_, b) = server.order(&bob, "b0", order_body("milk", 1)).await;
    server.call("POST", &format!("/v1/orders/{}/cancel", alices[1]), Some(&alice), None).await;
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["orders"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_owned()).collect()
    };
    // A customer sees its own, newest first, two at a time.
    let (s, p1) = server.call("GET", "/v1/orders?limit=2", Some(&alice), None).await;
    assert_eq!(s, 200, "{p1}");
    assert_eq!(ids(&p1), [alices[4].clone(), alices[3].clone()]);
    assert!(p1["orders"][0]["delivery_code"].is_string(), "its own code");
    let next = p1["next"].as_str().unwrap();
    let (_, p2) = server.call("GET", &format!("/v1/orders?limit=2&after={next}"), Some(&alice), None).await;
    assert_eq!(ids(&p2), [alices[2].clone(), alices[1].clone()]);
    let next = p2["next"].as_str().unwrap();
    let (_, p3) = server.call("GET", &format!("/v1/orders?limit=2&after={next}"), Some(&alice), None).await;
    assert_eq!(ids(&p3), [alices[0].clone()]);
    assert!(p3["next"].is_null());
    let (_, cancelled) = server.call("GET", "/v1/orders?status=cancelled", Some(&alice), None).await;
    assert_eq!(ids(&cancelled), [alices[1].clone()]);
    // Staff see their store's (everyone's), without the customers' codes; admin any.
    let staff = token(Role::Staff, "sam", Some("s1"));
    let (_, all) = server.call("GET", "/v1/orders?limit=100", Some(&staff), None).await;
    assert_eq!(all["orders"].as_array().unwrap().len(), 6);
    assert!(all["orders"][0]["delivery_code"].is_null());
    assert_eq!(ids(&all)[0], b["id"].as_str().unwrap());
    let (_, all) = server.call("GET", "/v1/orders?store_id=s1", Some(&admin()), None).await;
    assert_eq!(all["orders"].as_array().unwrap().len(), 6);
    let (s, _) = server.call("GET", "/v1/orders?store_id=s2", Some(&staff), None).await;
    assert_eq!(s, 403);
    let rider = token(Role::Rider, "r1", None);
    let (s, _) = server.call("GET", "/v1/orders", Some(&rider), None).await;
    assert_eq!(s, 403);
    for bad in ["limit=0", "limit=101", "status=lost", "after=nope", "after=12_bad%20id"] {
        let (s, _) = server.call("GET", &format!("/v1/orders?{bad}"), Some(&alice), None).await;
        assert_eq!(s, 422, "{bad}");
    }
    // Finished orders that left memory still come from the database.
    drop(server);
    let server = Server::start(&scratch.url, &[]);
    let (_, after) = server.call("GET", "/v1/orders?limit=100", Some(&alice), None).await;
    assert_eq!(after["orders"].as_array().unwrap().len(), 5);
    drop(server);
    scratch.drop_database().await;
}
