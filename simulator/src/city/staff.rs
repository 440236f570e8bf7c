//! Staff of a store: pack confirmed orders after the picking time, restock what runs low.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use darkstore_auth::Role;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{Ctx, Store};

pub(super) async fn staff(ctx: Arc<Ctx>, store: Store) {
    let s = &ctx.stats;
    let token = ctx.token(Role::Staff, &format!("sim-staff-{}", store.id), Some(&store.id));
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(ctx.ws_url(&token)).await else {
        return s.error("staff_ws_connect");
    };
    let topic = format!("store/{}", store.id);
    let _ = ws.send(Message::Text(json!({"op": "subscribe", "topic": topic}).to_string().into())).await;
    let mut restocking: std::collections::HashSet<String> = std::collections::HashSet::new();
    while !ctx.stop.load(Ordering::Relaxed) {
        let msg = match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) | Err(_) => continue,
            Ok(None) | Ok(Some(Err(_))) => return s.error("staff_ws_closed"),
        };
        let v: Value = serde_json::from_str(&msg).unwrap_or(Value::Null);
        match v["type"].as_str() {
            Some("order") if v["data"]["status"] == "confirmed" => {
                let Some(id) = v["data"]["id"].as_str().map(str::to_owned) else { continue };
                let (ctx, token) = (ctx.clone(), token.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(ctx.real(ctx.cfg.picking_secs)).await;
                    let r = ctx
                        .http
                        .post(format!("{}/v1/orders/{id}/packed", ctx.cfg.server))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    match r {
                        // 409: a rider was already assigned and the order left the packing queue.
                        Ok(r) if r.status().is_success() || r.status().as_u16() == 409 => {}
                        Ok(r) => ctx.stats.error(format!("packed_{}", r.status().as_u16())),
                        Err(_) => ctx.stats.error("packed_unreachable"),
                    }
                });
            }
            Some("stock") => {
                let sku = v["data"]["sku"].as_str().unwrap_or_default().to_owned();
                let available = v["data"]["available"].as_i64().unwrap_or(0);
                if available < 5 && restocking.insert(sku.clone()) {
                    let r = ctx
                        .http
                        .post(format!("{}/v1/stores/{}/stock", ctx.cfg.server, store.id))
                        .bearer_auth(&token)
                        .json(&json!({"sku": sku, "delta": 40, "reason": "restock"}))
                        .send()
                        .await;
                    if !matches!(&r, Ok(r) if r.status().is_success()) {
                        s.error("restock");
                    }
                } else if available >= 5 {
                    restocking.remove(&sku);
                }
            }
            _ => {}
        }
    }
}
