//! Staff of a store: `pickers` people pick confirmed orders in turn (first come, first picked),
//! each order taking the picking time ±25%, then mark it packed; restock what runs low.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use darkstore_auth::Role;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{Ctx, Rng, Store};

pub(super) async fn staff(ctx: Arc<Ctx>, store: Store) {
    let s = &ctx.stats;
    let token = ctx.token(Role::Staff, &format!("sim-staff-{}", store.id), Some(&store.id));
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(ctx.ws_url(&token)).await else {
        return s.error("staff_ws_connect");
    };
    let topic = format!("store/{}", store.id);
    let _ = ws.send(Message::Text(json!({"op": "subscribe", "topic": topic}).to_string().into())).await;
    let mut restocking: std::collections::HashSet<String> = std::collections::HashSet::new();
    // The picking queue, worked by `pickers` people.
    let (queue_tx, queue_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let queue_rx = Arc::new(tokio::sync::Mutex::new(queue_rx));
    for p in 0..ctx.cfg.pickers.max(1) {
        let (ctx, token, queue_rx) = (ctx.clone(), token.clone(), queue_rx.clone());
        let mut rng = Rng::new(ctx.cfg.seed ^ 0x51af ^ ((p as u64) << 20) ^ store.id.len() as u64);
        tokio::spawn(async move {
            loop {
                let Some(id) = queue_rx.lock().await.recv().await else { return };
                if ctx.stop.load(Ordering::Relaxed) {
                    return;
                }
                tokio::time::sleep(ctx.real(ctx.cfg.picking_secs * (0.75 + 0.5 * rng.unit()))).await;
                let r =
                    ctx.http.post(format!("{}/v1/orders/{id}/packed", ctx.cfg.server)).bearer_auth(&token).send().await;
                match r {
                    // 409: a rider was already assigned (or the order was cancelled) meanwhile.
                    Ok(r) if r.status().is_success() || r.status().as_u16() == 409 => {}
                    Ok(r) => ctx.stats.error(format!("packed_{}", r.status().as_u16())),
                    Err(_) => ctx.stats.error("packed_unreachable"),
                }
            }
        });
    }
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
                let _ = queue_tx.send(id);
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
