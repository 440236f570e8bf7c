//! Customers: availability, an order, its feed followed to the door, and cancels.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use darkstore_auth::Role;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{Ctx, audit_get, now_ms, parse_time};

/// The points of an order's life after which a cancelling customer cancels (the status it has
/// just seen). After pickup the server refuses.
pub(super) const CANCEL_POINTS: [&str; 4] = ["confirmed", "packed", "assigned", "picked_up"];

const LIFECYCLE: [&str; 6] = ["pending_payment", "confirmed", "packed", "assigned", "picked_up", "delivered"];

fn rank(status: &str) -> Option<usize> {
    LIFECYCLE.iter().position(|s| *s == status)
}

/// Cancels an order as its customer; a successful cancel of an order a rider held is audited a
/// second later: that rider must no longer hold it.
async fn cancel(ctx: &Arc<Ctx>, token: &str, id: &str, rider: Option<String>) {
    let s = &ctx.stats;
    let r = ctx.http.post(format!("{}/v1/orders/{id}/cancel", ctx.cfg.server)).bearer_auth(token).send().await;
    match r {
        Ok(r) if r.status().is_success() => {
            s.cancelled.fetch_add(1, Ordering::Relaxed);
            s.cancelled_ids.lock().expect("cancelled lock").insert(id.to_owned());
            let Some(rider) = rider else { return };
            let (ctx, id) = (ctx.clone(), id.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let admin = ctx.token(Role::Admin, "darkstore-sim", None);
                let Ok(r) = audit_get(&ctx, &format!("/v1/riders/{rider}"), &admin).await else {
                    return ctx.stats.error("audit_rider");
                };
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if v["task"]["orders"].as_array().into_iter().flatten().any(|o| o.as_str() == Some(id.as_str())) {
                    ctx.stats.stranded.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // Too late: the order was picked up.
        Ok(r) if r.status().as_u16() == 409 => {
            s.cancel_refused.fetch_add(1, Ordering::Relaxed);
        }
        Ok(r) => s.error(format!("cancel_{}", r.status().as_u16())),
        Err(_) => s.error("cancel_unreachable"),
    }
}

pub(super) async fn customer(
    ctx: Arc<Ctx>,
    n: u64,
    point: (f64, f64),
    intended: Instant,
    pick: f64,
    mut cancel_after: Option<&'static str>,
) {
    let s = &ctx.stats;
    let token = ctx.token(Role::Customer, &format!("sim{:04x}-customer-{n}", ctx.cfg.seed & 0xffff), None);
    let url = format!("{}/v1/availability?lat={}&lng={}&limit=50", ctx.cfg.server, point.0, point.1);
    let avail: Value = match ctx.http.get(url).send().await {
        Ok(r) if r.status().is_success() => {
            s.record(&s.avail_ms, intended.elapsed().as_secs_f64() * 1000.0);
            r.json().await.unwrap_or(Value::Null)
        }
        Ok(r) => return s.error(format!("availability_{}", r.status().as_u16())),
        Err(_) => return s.error("availability_unreachable"),
    };
    let items: Vec<&Value> = avail["items"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    if avail["serviceable"] != true || items.is_empty() {
        s.not_serviceable.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let n_lines = 1 + (pick * 3.0) as usize % 3;
    let start = (pick * items.len() as f64) as usize % items.len();
    let lines: Vec<Value> = (0..n_lines.min(items.len()))
        .map(|i| json!({"sku": items[(start + i * 7) % items.len()]["sku"], "qty": 1}))
        .collect::<Vec<_>>();
    let mut lines = lines;
    lines.sort_by(|a, b| a["sku"].as_str().cmp(&b["sku"].as_str()));
    lines.dedup_by(|a, b| a["sku"] == b["sku"]);
    let sent = Instant::now();
    let r = ctx
        .http
        .post(format!("{}/v1/orders", ctx.cfg.server))
        .bearer_auth(&token)
        .header("idempotency-key", format!("sim{:04x}-{n}", ctx.cfg.seed & 0xffff))
        .json(&json!({"lat": point.0, "lng": point.1, "lines": lines}))
        .send()
        .await;
    let order: Value = match r {
        Ok(r) if r.status().as_u16() == 201 => {
            s.record(&s.order_ms, sent.elapsed().as_secs_f64() * 1000.0);
            r.json().await.unwrap_or(Value::Null)
        }
        Ok(r) if r.status().as_u16() == 409 => {
            s.insufficient.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ok(r) if r.status().as_u16() == 422 => {
            s.not_serviceable.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ok(r) => return s.error(format!("order_{}", r.status().as_u16())),
        Err(_) => return s.error("order_unreachable"),
    };
    let Some(id) = order["id"].as_str().map(str::to_owned) else { return s.error("order_without_id") };
    s.placed.fetch_add(1, Ordering::Relaxed);
    s.placed_ids.lock().expect("ids lock").push(id.clone());
    if let Some(fee) = order["delivery_fee_minor"].as_i64() {
        *s.fees.lock().expect("fees lock").entry(fee).or_default() += 1;
    }
    let created = order["created_at"].as_str().and_then(parse_time).unwrap_or_else(now_ms);
    // Follow the order to its door.
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(ctx.ws_url(&token)).await else {
        return s.error("ws_connect");
    };
    let topic = format!("order/{id}");
    if ws.send(Message::Text(json!({"op": "subscribe", "topic": topic}).to_string().into())).await.is_err() {
        return s.error("ws_send");
    }
    let mut statuses: Vec<String> = Vec::new();
    let mut last_seq = None;
    let mut assigned_at = None;
    let mut last_position_ts = i64::MIN;
    // The estimate told when the order was picked up.
    let mut eta_at_pickup: Option<i64> = None;
    let follow_until = Instant::now() + ctx.cfg.duration + ctx.cfg.drain;
    while Instant::now() < follow_until {
        let msg = match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) | Err(_) => continue,
            Ok(None) | Ok(Some(Err(_))) => return s.error("ws_closed"),
        };
        let v: Value = serde_json::from_str(&msg).unwrap_or(Value::Null);
        if v["topic"] != topic.as_str() {
            continue;
        }
        if let (Some(prev), Some(seq)) = (last_seq, v["seq"].as_u64())
            && seq != prev + 1
        {
            s.error("ws_seq_gap");
        }
        last_seq = v["seq"].as_u64();
        let status = match v["type"].as_str() {
            Some("snapshot") => v["data"]["order"]["status"].as_str(),
            Some("status") => v["data"]["status"].as_str(),
            Some("rider_position") => {
                // Only a position reported while the order is followed measures GPS-to-WebSocket
                // latency. The first frame after assignment carries the rider's last known fix,
                // up to one report interval old; later frames that follow events (status changes)
                // repeat the last position.
                if let Some(ts) = v["data"]["ts"].as_i64()
                    && ts > last_position_ts
                {
                    if last_position_ts != i64::MIN {
                        s.record(&s.gps_ms, (now_ms() - ts) as f64);
                    }
                    last_position_ts = ts;
                }
                None
            }
            Some("eta") => {
                if v["data"]["reason"] == "picked_up" {
                    eta_at_pickup = v["data"]["eta_at"].as_str().and_then(parse_time);
                }
                None
            }
            Some("error") => return s.error(format!("ws_{}", v["data"]["error"].as_str().unwrap_or("error"))),
            _ => None,
        };
        let Some(status) = status else { continue };
        if statuses.last().map(String::as_str) != Some(status) {
            statuses.push(status.to_owned());
        }
        if cancel_after == Some(status) {
            cancel_after = None;
            let data = if v["type"] == "snapshot" { &v["data"]["order"] } else { &v["data"] };
            let rider = data["rider_id"].as_str().map(str::to_owned);
            cancel(&ctx, &token, &id, rider).await;
        }
        let now = now_ms();
        if status == "assigned" && assigned_at.is_none() {
            assigned_at = Some(now);
            s.record(&s.assign_s, (now - created) as f64 * ctx.cfg.speedup);
        }
        if status == "delivered" {
            let data = if v["type"] == "snapshot" { &v["data"]["order"] } else { &v["data"] };
            let delivered = data["delivered_at"].as_str().and_then(parse_time).unwrap_or(now);
            let c2d_sim = (delivered - created) as f64 * ctx.cfg.speedup;
            s.record(&s.c2d_s, c2d_sim);
            let promise = data["deadline"].as_str().and_then(parse_time).map(|d| d - created).unwrap_or(600_000) as f64;
            if let Some(promised) = data["promised_by"].as_str().and_then(parse_time) {
                if delivered <= promised {
                    s.on_time.fetch_add(1, Ordering::Relaxed);
                }
                let error_s = (delivered - promised) as f64 * ctx.cfg.speedup / 1000.0;
                s.promise_errors_s.lock().expect("errors lock").push(error_s);
            }
            if let Some(eta) = eta_at_pickup {
                let error_s = (delivered - eta).abs() as f64 * ctx.cfg.speedup / 1000.0;
                s.eta_errors_s.lock().expect("errors lock").push(error_s);
            }
            if c2d_sim <= promise {
                s.within_promise.fetch_add(1, Ordering::Relaxed);
            }
            let ranks: Vec<Option<usize>> = statuses.iter().map(|st| rank(st)).collect();
            let in_order = ranks.iter().all(Option::is_some) && ranks.windows(2).all(|w| w[0] < w[1]);
            if !in_order || !statuses.iter().any(|st| st == "picked_up") && statuses.len() > 1 {
                s.violations.fetch_add(1, Ordering::Relaxed);
            }
            s.delivered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if status == "cancelled" || status == "expired" {
            return;
        }
    }
}
