//! Riders and dispatch against the real server and real brokers: the embedded one, the
//! machine's Mosquitto (127.0.0.1:1883), and a private Mosquitto this test starts and restarts.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    STORE_LAT, STORE_LNG, Server, admin, eventually, metric, mqtt_of, order_body, publish, rider_client, token, unique,
};
use darkstore::auth::Role;
use darkstore_db::scratch::ScratchDb;
use rumqttc::QoS;
use serde_json::json;

const SYSTEM_MOSQUITTO: &str = "mqtt://127.0.0.1:1883";

/// The whole story on one broker: a rider comes on shift, its position reaches the index, a
/// packed order becomes a task on its topic, and its events carry the order to delivered.
async fn delivery_story(extra: &[&str], rider_password: bool) {
    let scratch = ScratchDb::sqlite("ds_story");
    let mut flags = vec!["--dispatch-tick-ms", "200"];
    flags.extend_from_slice(extra);
    let server = Server::start(&scratch.url, &flags);
    server.seed("s1", "milk", 10).await;
    let rider = unique("rider");
    let (s, _) = server
        .call("PUT", &format!("/v1/riders/{rider}"), Some(&admin()), Some(json!({"name": "Ravi", "store_id": "s1"})))
        .await;
    assert_eq!(s, 201);
    let rider_token = token(Role::Rider, &rider, None);
    let (client, mut inbox, accepted) =
        rider_client(&mqtt_of(&server), &rider, rider_password.then(|| rider_token.clone())).await;
    assert!(accepted, "the broker accepted the rider");
    client.subscribe(format!("riders/{rider}/tasks"), QoS::AtLeastOnce).await.unwrap();
    publish(&client, format!("riders/{rider}/shift"), json!({"on_shift": true})).await;
    let now = common::now_ms();
    publish(
        &client,
        format!("riders/{rider}/location"),
        json!({"lat": STORE_LAT + 0.002, "lng": STORE_LNG, "ts": now}),
    )
    .await;
    let me = eventually("the position in the index", 10, || async {
        let (_, v) = server.call("GET", &format!("/v1/riders/{rider}"), Some(&rider_token), None).await;
        (v["lat"].is_number() && v["on_shift"] == true).then_some(v)
    })
    .await;
    assert_eq!(me["status"], "idle");

    let alice = token(Role::Customer, "alice", None);
    let (s, order) = server.order(&alice, "story", order_body("milk", 2)).await;
    assert_eq!(s, 201, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    let staff = token(Role::Staff, "sam", Some("s1"));
    let (s, _) = server.call("POST", &format!("/v1/orders/{id}/packed"), Some(&staff), None).await;
    assert_eq!(s, 200);

    let (topic, task) =
        tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await.expect("a task arrives").unwrap();
    assert_eq!(topic, format!("riders/{rider}/tasks"));
    assert_eq!(task["orders"][0]["id"], id.as_str(), "{task}");
    assert_eq!(task["store_id"], "s1");
    assert!(task["task_id"].is_string() && task["assigned_at"].is_i64() && task["pickup"]["lat"].is_f64(), "{task}");
    let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
    assert_eq!((o["status"].as_str(), o["rider_id"].as_str()), (Some("assigned"), Some(rider.as_str())));
    // The rider can read its order.
    let (s, _) = server.call("GET", &format!("/v1/orders/{id}"), Some(&rider_token), None).await;
    assert_eq!(s, 200);

    // The rider waits 100 m from the door: the customer's code proves the hand-over.
    let code = order["delivery_code"].as_str().expect("the customer sees its delivery code").to_owned();
    for kind in ["arrived_store", "picked_up", "picked_up", "delivered"] {
        publish(
            &client,
            format!("riders/{rider}/events"),
            json!({"type": kind, "order_id": id, "ts": common::now_ms(), "code": code}),
        )
        .await;
    }
    eventually("the order delivered", 10, || async {
        let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
        (o["status"] == "delivered").then_some(())
    })
    .await;
    // The sale left the store: 10 - 2 on hand, nothing reserved.
    let line = server.stock_line("s1", "milk").await;
    assert_eq!((line["on_hand"].as_i64(), line["reserved"].as_i64()), (Some(8), Some(0)));
    let (_, me) = server.call("GET", &format!("/v1/riders/{rider}"), Some(&rider_token), None).await;
    assert_eq!(me["status"], "idle");
    // The duplicate picked_up was ignored, not applied twice.
    assert!(metric(&server, "darkstore_rider_events_ignored_total ").await >= 1.0);
    let db = darkstore_db::Db::connect(&scratch.url).await.unwrap();
    let history: Vec<String> = db.order_events(&id).await.unwrap().into_iter().map(|e| e.0).collect();
    assert_eq!(history, ["confirmed", "packed", "assigned", "picked_up", "delivered"]);
    db.close().await;
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_story_on_the_embedded_broker() {
    delivery_story(&[], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_story_on_mosquitto() {
    delivery_story(&["--mqtt-url", SYSTEM_MOSQUITTO], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_admits_riders_by_their_own_token_only() {
    let scratch = ScratchDb::sqlite("ds_brokerauth");
    let server = Server::start(&scratch.url, &[]);
    let broker = mqtt_of(&server);
    let cases = [
        ("its own token", "r1", Some(token(Role::Rider, "r1", None)), true),
        ("another rider's token", "r1", Some(token(Role::Rider, "r2", None)), false),
        ("a customer token", "r1", Some(token(Role::Customer, "r1", None)), true),
        ("no password", "r1", None, false),
        ("garbage", "r1", Some("not-a-token".to_owned()), false),
        (
            "the server's username without its secret",
            darkstore::broker::SERVER_USERNAME,
            Some("guess".to_owned()),
            false,
        ),
    ];
    for (what, user, password, expected) in cases {
        let (_, _, accepted) = rider_client(&broker, user, password).await;
        assert_eq!(accepted, expected, "{what}");
    }
    // Client ids are bound to the token's subject: nobody takes another's session (or the
    // server's, whose id is random per start; the old predictable one is refused like any other).
    let r2 = Some(token(Role::Rider, "r2", None));
    let taken = [
        ("another rider's client id", "r1:phone"),
        ("a prefix of its own", "r2x"),
        ("the server's old id", "darkstore-server-1234"),
        ("a customer's form", "customer:r2"),
    ];
    for (what, client_id) in taken {
        let (_, _, accepted) = common::mqtt_client(&broker, client_id, "r2", r2.clone()).await;
        assert!(!accepted, "{what}");
    }
    let (_, _, accepted) = common::mqtt_client(&broker, "r2:phone", "r2", r2.clone()).await;
    assert!(accepted, "its own form");
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rider_messages_are_counted_and_dropped() {
    let scratch = ScratchDb::sqlite("ds_garbage");
    let server = Server::start(&scratch.url, &["--dispatch-tick-ms", "200"]);
    server.seed("s1", "milk", 5).await;
    let a = unique("ra");
    let b = unique("rb");
    for r in [&a, &b] {
        server.call("PUT", &format!("/v1/riders/{r}"), Some(&admin()), Some(json!({"name": "R"}))).await;
    }
    let (client, _inbox, accepted) = rider_client(&mqtt_of(&server), "admin", Some(admin())).await;
    assert!(accepted);
    let now = common::now_ms();
    let garbage: Vec<(String, Vec<u8>)> = vec![
        (format!("riders/{a}/location"), b"\xff\xfe garbage".to_vec()),
        (format!("riders/{a}/location"), br#"{"lat": "12.9", "lng": 77.6, "ts": 1}"#.to_vec()),
        (format!("riders/{a}/location"), br#"{"lat": 12.9}"#.to_vec()),
        (format!("riders/{a}/location"), json!({"lat": 95.0, "lng": 77.6, "ts": now}).to_string().into_bytes()),
        (
            format!("riders/{a}/location"),
            json!({"lat": 12.97, "lng": 77.64, "ts": now + 3_600_000}).to_string().into_bytes(),
        ),
        (
            "riders/nobody-registered/location".into(),
            json!({"lat": 12.97, "lng": 77.64, "ts": now}).to_string().into_bytes(),
        ),
        (format!("riders/{a}/shift"), br#"{"on_shift": "yes"}"#.to_vec()),
        (format!("riders/{a}/events"), br#"{"type": "teleported", "order_id": "o1"}"#.to_vec()),
        (format!("riders/{a}/events"), b"[]".to_vec()),
    ];
    for (topic, payload) in garbage {
        client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
    }
    // Then a valid position and an out-of-order one.
    publish(&client, format!("riders/{a}/shift"), json!({"on_shift": true})).await;
    publish(&client, format!("riders/{a}/location"), json!({"lat": STORE_LAT, "lng": STORE_LNG, "ts": now})).await;
    publish(&client, format!("riders/{a}/location"), json!({"lat": STORE_LAT, "lng": STORE_LNG, "ts": now - 5000}))
        .await;
    let dropped = |reason: &'static str| format!("darkstore_rider_messages_dropped_total{{reason=\"{reason}\"}} ");
    eventually("every bad message counted", 10, || async {
        let malformed = metric(&server, &dropped("malformed")).await;
        let implausible = metric(&server, &dropped("implausible")).await;
        let unknown = metric(&server, &dropped("unknown_rider")).await;
        let stale = metric(&server, &dropped("stale")).await;
        (malformed >= 5.0 && implausible >= 2.0 && unknown >= 1.0 && stale >= 1.0).then_some(())
    })
    .await;
    let (_, me) = server.call("GET", &format!("/v1/riders/{a}"), Some(&admin()), None).await;
    assert_eq!(me["lat"].as_f64(), Some(STORE_LAT), "the valid position after the garbage landed");

    // Rider b cannot move rider a's order.
    let alice = token(Role::Customer, "alice", None);
    let (_, order) = server.order(&alice, "k", order_body("milk", 1)).await;
    let id = order["id"].as_str().unwrap().to_owned();
    let (s, _) = server.call("POST", &format!("/v1/orders/{id}/packed"), Some(&admin()), None).await;
    assert_eq!(s, 200);
    eventually("the order assigned to rider a", 10, || async {
        let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
        (o["rider_id"] == a.as_str()).then_some(())
    })
    .await;
    for kind in ["picked_up", "delivered", "rejected"] {
        publish(&client, format!("riders/{b}/events"), json!({"type": kind, "order_id": id, "ts": now})).await;
    }
    let (s, _) = server
        .call(
            "POST",
            &format!("/v1/riders/{b}/events"),
            Some(&token(Role::Rider, &b, None)),
            Some(json!({"type": "picked_up", "order_id": id})),
        )
        .await;
    assert_eq!(s, 202);
    eventually("rider b's events ignored", 10, || async {
        (metric(&server, "darkstore_rider_events_ignored_total ").await >= 4.0).then_some(())
    })
    .await;
    let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
    assert_eq!((o["status"].as_str(), o["rider_id"].as_str()), (Some("assigned"), Some(a.as_str())));
    // Over HTTP, another rider's token is refused outright.
    let (s, _) = server
        .call(
            "POST",
            &format!("/v1/riders/{a}/location"),
            Some(&token(Role::Rider, &b, None)),
            Some(json!({"lat": 1.0, "lng": 1.0, "ts": now})),
        )
        .await;
    assert_eq!(s, 403);
    // Rider a goes off shift before pickup: the order goes back to wait for a rider.
    publish(&client, format!("riders/{a}/shift"), json!({"on_shift": false})).await;
    eventually("the order handed back", 10, || async {
        let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
        (o["status"] == "packed" && o["rider_id"].is_null()).then_some(())
    })
    .await;
    drop(server);
    scratch.drop_database().await;
}

struct Mosquitto(Child);

impl Mosquitto {
    fn start(port: u16) -> Mosquitto {
        let child = Command::new("mosquitto")
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed");
        common::wait_for_port(port);
        Mosquitto(child)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_is_survived() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let broker_url = format!("mqtt://127.0.0.1:{port}");
    let broker = Mosquitto::start(port);
    let scratch = ScratchDb::sqlite("ds_restart");
    let server = Server::start(&scratch.url, &["--mqtt-url", &broker_url]);
    let rider = unique("rider");
    server.call("PUT", &format!("/v1/riders/{rider}"), Some(&admin()), Some(json!({"name": "R"}))).await;
    let ready = |want: u16| {
        let server = &server;
        async move { (server.call("GET", "/readyz", None, None).await.0 == want).then_some(()) }
    };
    eventually("ready with the broker up", 10, || ready(200)).await;
    drop(broker);
    eventually("not ready with the broker down", 15, || ready(503)).await;
    let _broker = Mosquitto::start(port);
    eventually("ready again after the broker restarts", 15, || ready(200)).await;
    // The server resubscribed: a position published now reaches it.
    let (client, _inbox, accepted) = rider_client(&broker_url, &rider, None).await;
    assert!(accepted);
    let now = common::now_ms();
    publish(&client, format!("riders/{rider}/location"), json!({"lat": STORE_LAT, "lng": STORE_LNG, "ts": now})).await;
    eventually("the position after the restart", 10, || async {
        let (_, v) = server.call("GET", &format!("/v1/riders/{rider}"), Some(&admin()), None).await;
        v["lat"].is_number().then_some(())
    })
    .await;
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_a_rider_who_never_returns_gives_its_order_back() {
    let scratch = ScratchDb::sqlite("ds_crash_rider");
    let flags = ["--dispatch-tick-ms", "200", "--rider-silence-secs", "1"];
    let mut server = Server::start(&scratch.url, &flags);
    server.seed("s1", "milk", 5).await;
    let rider = unique("rider");
    server.call("PUT", &format!("/v1/riders/{rider}"), Some(&admin()), Some(json!({"name": "R"}))).await;
    let rider_token = token(Role::Rider, &rider, None);
    let now = common::now_ms();
    for (path, body) in
        [("shift", json!({"on_shift": true})), ("location", json!({"lat": STORE_LAT, "lng": STORE_LNG, "ts": now}))]
    {
        let (s, b) = server.call("POST", &format!("/v1/riders/{rider}/{path}"), Some(&rider_token), Some(body)).await;
        assert_eq!(s, 204, "{b}");
    }
    let alice = token(Role::Customer, "alice", None);
    let (_, order) = server.order(&alice, "k", order_body("milk", 1)).await;
    let id = order["id"].as_str().unwrap().to_owned();
    server.call("POST", &format!("/v1/orders/{id}/packed"), Some(&admin()), None).await;
    eventually("the order assigned", 10, || async {
        let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
        (o["status"] == "assigned").then_some(())
    })
    .await;
    server.kill();
    let server = Server::start(&scratch.url, &flags);
    // Restored with its rider; the rider stays silent, so the order goes back to the queue.
    eventually("the order handed back after the silence limit", 15, || async {
        let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
        (o["status"] == "packed" && o["rider_id"].is_null()).then_some(())
    })
    .await;
    drop(server);
    scratch.drop_database().await;
}
