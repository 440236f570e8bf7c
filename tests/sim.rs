//! A short simulator run against the real server: the report's invariants hold.

mod common;

use std::time::Duration;

use common::{SECRET, STORE_LAT, STORE_LNG, Server, admin};
use darkstore_db::scratch::ScratchDb;
use serde_json::json;

/// One store with four SKUs (milk scarce, so stock runs out during a run).
async fn seed_city(server: &Server) {
    let admin = admin();
    server
        .call("PUT", "/v1/stores/s1", Some(&admin), Some(json!({"name": "S1", "lat": STORE_LAT, "lng": STORE_LNG})))
        .await;
    for (sku, qty) in [("milk", 6), ("bread", 40), ("eggs", 40), ("rice", 40)] {
        server
            .call(
                "PUT",
                &format!("/v1/catalog/{sku}"),
                Some(&admin),
                Some(json!({"name": sku, "category": "staples", "price_minor": 100})),
            )
            .await;
        server
            .call(
                "POST",
                "/v1/stores/s1/stock",
                Some(&admin),
                Some(json!({"sku": sku, "delta": qty, "reason": "restock"})),
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_city_runs_with_nothing_lost_or_oversold() {
    let scratch = ScratchDb::sqlite("ds_sim");
    // The server believes riders ride at 10 m/s; the city's ride at 5 (× the speed-up of 40).
    let server = Server::start(&scratch.url, &["--dispatch-tick-ms", "300", "--rider-speed-mps", "10"]);
    seed_city(&server).await;
    let mut cfg = darkstore_sim::city::RunConfig::new(&server.base, server.mqtt.as_deref().unwrap(), SECRET);
    cfg.riders = 6;
    cfg.order_rate = 3.0;
    cfg.duration = Duration::from_secs(5);
    cfg.drain = Duration::from_secs(40);
    cfg.speedup = 40.0;
    let report = darkstore_sim::city::run(cfg).await.expect("the simulator runs");
    eprintln!("{}", report.human());
    assert!(report.placed >= 5, "orders were placed: {}", report.placed);
    assert_eq!(report.accounted, report.placed, "every 201 is known to the server");
    assert_eq!(report.delivered + report.undelivered, report.placed);
    assert_eq!(report.oversold, 0);
    assert_eq!(report.lifecycle_violations, 0, "delivered orders went through the lifecycle in order");
    assert_eq!(report.errors, 0, "{:?}", report.errors_by_kind);
    assert!(report.delivered > 0, "deliveries completed");
    assert!(report.positions_published > 0 && report.tasks_received > 0);
    assert!(report.order_latency_ms.count == report.placed);
    // Every delivered order was judged against the promise it was given.
    assert!((0.0..=100.0).contains(&report.on_time_pct));
    assert!(report.promise_error_p50_s <= report.promise_error_p90_s);
    let json = serde_json::to_value(&report).unwrap();
    for field in ["on_time_pct", "promise_error_p50_s", "promise_error_p90_s", "eta_error_at_pickup_p90_s"] {
        assert!(json[field].is_number(), "{field} in the JSON report");
    }
    assert!(json["fee_levels"].as_object().is_some_and(|f| !f.is_empty()), "{json}");
    // The server learned how fast riders really move from their positions: time taken ÷ time
    // modelled = (1 ÷ (5 m/s × 40)) ÷ (1.4 detour ÷ 10 m/s) ≈ 0.0357, half the speed it was told
    // and forty times faster than real time.
    let learned = common::metric(&server, "darkstore_calibration_ratio{what=\"speed\"}").await;
    assert!((0.030..=0.043).contains(&learned), "learned speed ratio {learned}");
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn customers_who_cancel_leave_no_rider_holding_their_order() {
    let scratch = ScratchDb::sqlite("ds_sim_cancel");
    let server = Server::start(&scratch.url, &["--dispatch-tick-ms", "300"]);
    seed_city(&server).await;
    let mut cfg = darkstore_sim::city::RunConfig::new(&server.base, server.mqtt.as_deref().unwrap(), SECRET);
    cfg.riders = 6;
    cfg.order_rate = 4.0;
    cfg.duration = Duration::from_secs(6);
    cfg.drain = Duration::from_secs(40);
    cfg.speedup = 40.0;
    cfg.cancel_rate = 0.6;
    let report = darkstore_sim::city::run(cfg).await.expect("the simulator runs");
    eprintln!("{}", report.human());
    assert!(report.cancelled > 0, "customers cancelled");
    assert_eq!(report.stranded_riders, 0, "no rider kept a cancelled order");
    assert_eq!(report.delivered + report.undelivered + report.cancelled, report.placed);
    assert_eq!(report.accounted, report.placed);
    assert_eq!(report.oversold, 0);
    assert_eq!(report.lifecycle_violations, 0);
    assert_eq!(report.errors, 0, "{:?}", report.errors_by_kind);
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let cfg = darkstore_sim::city::RunConfig::new("http://127.0.0.1:9", "mqtt://127.0.0.1:9", SECRET);
    let err = darkstore_sim::city::run(cfg).await.unwrap_err();
    assert!(err.contains("cannot reach the server"), "{err}");
}

/// A broker that cannot be reached, and a server that dies mid-run: the run still ends on time
/// with a report that says what went wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_broker_or_server_gives_a_partial_report_not_a_hang() {
    let scratch = ScratchDb::sqlite("ds_sim_dies");
    let mut server = Server::start(&scratch.url, &[]);
    seed_city(&server).await;
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut cfg = darkstore_sim::city::RunConfig::new(&server.base, &format!("mqtt://{unused}"), SECRET);
    cfg.riders = 3;
    cfg.order_rate = 4.0;
    cfg.duration = Duration::from_secs(4);
    cfg.drain = Duration::from_secs(5);
    cfg.speedup = 20.0;
    let run = tokio::spawn(darkstore_sim::city::run(cfg));
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.kill();
    let started = std::time::Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ends instead of hanging")
        .unwrap()
        .expect("a partial report, not an error");
    eprintln!("{}", report.human());
    assert!(started.elapsed() < Duration::from_secs(40));
    assert!(report.errors_by_kind.contains_key("mqtt_connection"), "{:?}", report.errors_by_kind);
    assert!(report.errors_by_kind.keys().any(|k| k.starts_with("audit")), "{:?}", report.errors_by_kind);
    assert!(report.placed > 0, "orders were placed before the server died");
    assert!(report.accounted < report.placed, "the dead server could not account for them");
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_simulator_seeds_a_fresh_server() {
    let scratch = ScratchDb::sqlite("ds_sim_seed");
    let server = Server::start(&scratch.url, &["--dispatch-tick-ms", "300"]);
    let mut cfg = darkstore_sim::city::RunConfig::new(&server.base, server.mqtt.as_deref().unwrap(), SECRET);
    cfg.riders = 4;
    cfg.order_rate = 3.0;
    cfg.duration = Duration::from_secs(3);
    cfg.drain = Duration::from_secs(30);
    cfg.speedup = 40.0;
    cfg.seed_stores = 3;
    cfg.seed_skus = 12;
    let report = darkstore_sim::city::run(cfg).await.expect("the simulator seeds and runs");
    assert!(report.placed > 0 && report.errors == 0, "{}", report.human());
    let (_, stores) = server.call("GET", "/v1/stores", Some(&admin()), None).await;
    assert_eq!(stores["stores"].as_array().unwrap().len(), 3, "{stores}");
    let line = server.stock_line("sim-store-000", "sim-sku-00011").await;
    assert!(line["on_hand"].as_i64().unwrap() > 0, "{line}");
    drop(server);
    // Without seeding, a server with no stores is an error before anything runs.
    let empty = ScratchDb::sqlite("ds_sim_empty");
    let server = Server::start(&empty.url, &[]);
    let mut cfg = darkstore_sim::city::RunConfig::new(&server.base, server.mqtt.as_deref().unwrap(), SECRET);
    cfg.seed_stores = 0;
    let Err(err) = darkstore_sim::city::run(cfg).await else { panic!("no stores, no city") };
    assert!(err.contains("no stores"), "{err}");
    drop(server);
    scratch.drop_database().await;
    empty.drop_database().await;
}
