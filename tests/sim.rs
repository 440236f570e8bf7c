//! A short simulator run against the real server: the report's invariants hold.

mod common;

use std::time::Duration;

use common::{SECRET, STORE_LAT, STORE_LNG, Server, admin};
use darkstore_db::scratch::ScratchDb;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_city_runs_with_nothing_lost_or_oversold() {
    let scratch = ScratchDb::sqlite("ds_sim");
    let server = Server::start(&scratch.url, &["--dispatch-tick-ms", "300"]);
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
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let cfg = darkstore_sim::city::RunConfig::new("http://127.0.0.1:9", "mqtt://127.0.0.1:9", SECRET);
    let err = darkstore_sim::city::run(cfg).await.unwrap_err();
    assert!(err.contains("cannot reach the server"), "{err}");
}
