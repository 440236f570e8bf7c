//! The WebSocket feeds in cluster mode: snapshots of a region held elsewhere are asked of its
//! owner, other nodes' questions are answered, and subscribers get fresh snapshots when a region
//! changes owner. The feed itself is `ws.rs`.

use std::sync::Arc;

use serde_json::{Value, json};

use super::AppRef;
use super::ws::local_snapshot;
use crate::auth::Claims;
use crate::topics::Feed;

/// A topic's snapshot. In cluster mode, one of a region another node holds is asked of that node
/// (it holds the stock, the orders and the riders' tasks).
pub(super) async fn snapshot(app: &AppRef, claims: &Option<Claims>, topic: &str) -> Value {
    if let Some(cluster) = &app.cluster
        && let Some(store) = store_of_topic(app, topic).await
        && let Err(elsewhere) = cluster.serves_store(&store)
        && let Some((owner, _)) = elsewhere.owner
        && owner != cluster.node_id
    {
        let question = json!({"topic": topic, "claims": claims}).to_string();
        match cluster.ask(&owner, "snapshot", question.as_bytes(), &app.jwt_secret).await {
            Ok(answer) => return serde_json::from_slice(&answer).unwrap_or(Value::Null),
            Err(e) => {
                tracing::warn!(%owner, error = %e, topic, "the owner did not give a snapshot; answering from here")
            }
        }
    }
    local_snapshot(app, claims, topic).await
}

/// The store a topic is about (None: `riders`, or nothing known).
async fn store_of_topic(app: &AppRef, topic: &str) -> Option<Arc<crate::state::Store>> {
    let state = &app.state;
    match Feed::parse(topic)? {
        Feed::Store(id) => state.store(id),
        Feed::Order(id) => {
            let order = state.find_order(id).await.ok().flatten()?;
            let store_id = order.lock().await.store_id.clone();
            state.store(&store_id)
        }
        Feed::Availability(cell) => state.store_for_cell(cell.parse::<h3o::CellIndex>().ok()?),
        Feed::Riders => None,
    }
}

/// Cluster mode: after a region changed owner, every local subscription to a topic of that region
/// gets a fresh snapshot (what the old owner sent last may not have reached this node). Order
/// snapshots sent this way carry no delivery code (the customer had it in its first one).
pub fn resnapshot(app: &AppRef, regions: Vec<String>) {
    let (Some(cluster), app) = (app.cluster.clone(), app.clone()) else { return };
    tokio::spawn(async move {
        let moved: std::collections::HashSet<String> = regions.into_iter().collect();
        for topic in app.feeds.topics_with_prefix("") {
            let Some(store) = store_of_topic(&app, &topic).await else { continue };
            if !cluster.region_of_store(&store.id).is_some_and(|r| moved.contains(&r)) {
                continue;
            }
            let data = snapshot(&app, &None, &topic).await;
            app.feeds.publish(&topic, "snapshot", &data);
        }
    });
}

/// Cluster mode: answers the snapshots other nodes ask of this one for their clients.
pub async fn serve_snapshots(app: AppRef, stop: tokio::sync::watch::Receiver<bool>) {
    let Some(cluster) = app.cluster.clone() else { return };
    let secret = app.jwt_secret.clone();
    let handler = move |body: axum::body::Bytes| {
        let app = app.clone();
        async move {
            let question: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let claims: Option<Claims> = serde_json::from_value(question["claims"].clone()).ok();
            let topic = question["topic"].as_str().unwrap_or_default().to_owned();
            local_snapshot(&app, &claims, &topic).await.to_string().into_bytes()
        }
    };
    cluster.serve_asks("snapshot", secret, handler, stop).await;
}
