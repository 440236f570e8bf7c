//! The operations files in `deploy/` name only metrics the server really exports, and every
//! request carries an id.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Server, admin};
use darkstore_db::scratch::ScratchDb;

/// The metric names an expression or rule file mentions.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("darkstore_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_use_exported_metrics() {
    let scratch = ScratchDb::sqlite("ds_deploy");
    let server = Server::start(&scratch.url, &["--dispatch-tick-ms", "200"]);
    server.seed("s1", "milk", 10).await;
    // A tick or two, so each store's area is in the surge gauges.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let text =
        server.client.get(server.url("/metrics")).bearer_auth(admin()).send().await.unwrap().text().await.unwrap();
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect();
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["deploy/grafana/darkstore.json", "deploy/prometheus/alerts.yml"] {
        let body = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let used = names(&body);
        assert!(used.len() >= 8, "{file} uses {used:?}");
        for name in &used {
            assert!(exported.contains(name), "{file} uses {name}, which /metrics does not export");
        }
    }
    // The Grafana file is a dashboard: every panel has a query.
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{root}/deploy/grafana/darkstore.json")).unwrap())
            .unwrap();
    for p in dash["panels"].as_array().unwrap() {
        assert!(!p["targets"].as_array().unwrap().is_empty(), "{}", p["title"]);
    }
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id() {
    let scratch = ScratchDb::sqlite("ds_request_id");
    let server = Server::start(&scratch.url, &[]);
    let r = server.client.get(server.url("/healthz")).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 16, "{id}");
    let again = server.client.get(server.url("/healthz")).send().await.unwrap();
    assert_ne!(again.headers()["x-request-id"].to_str().unwrap(), id, "a new id each time");
    // A client's own id is kept when it is a short token, replaced when it is not.
    let r = server.client.get(server.url("/nope")).header("x-request-id", "trace-42").send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["x-request-id"].to_str().unwrap()), (404, "trace-42"));
    let r = server.client.get(server.url("/healthz")).header("x-request-id", "a b\"c").send().await.unwrap();
    assert_ne!(r.headers()["x-request-id"].to_str().unwrap(), "a b\"c");
    drop(server);
    scratch.drop_database().await;
}
