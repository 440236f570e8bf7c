//! A rider: its MQTT connection, shift, a position every second, and the tasks it follows.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use darkstore_auth::Role;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Ctx, Rng, Store, distance_m, now_ms, offset};

/// One rider: MQTT connection, shift, positions every second, tasks and events.
pub(super) async fn rider(ctx: Arc<Ctx>, id: String, store: Store, seed: u64) {
    let s = &ctx.stats;
    let token = ctx.token(Role::Rider, &id, None);
    let hostport = ctx.cfg.mqtt.trim_start_matches("mqtt://").trim_end_matches('/');
    let Some((host, port)) = hostport.rsplit_once(':').and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
    else {
        return s.error("mqtt_url");
    };
    // `{rider}:…`: the embedded broker binds client ids to the token's subject.
    let mut opts = MqttOptions::new(format!("{id}:{}", std::process::id()), host, port);
    opts.set_keep_alive(Duration::from_secs(15));
    opts.set_credentials(id.clone(), token);
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let (tasks_tx, mut tasks_rx) = mpsc::channel::<Value>(16);
    let poller_ctx = ctx.clone();
    let poller = tokio::spawn(async move {
        // A broker that cannot be reached or drops the rider counts once per outage, as
        // `mqtt_connection`; the rider keeps retrying.
        let mut down = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                        let _ = tasks_tx.send(v).await;
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => down = false,
                Ok(_) => {}
                Err(_) => {
                    if !down && !poller_ctx.stop.load(Ordering::Relaxed) {
                        poller_ctx.stats.error("mqtt_connection");
                    }
                    down = true;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    let _ = client.subscribe(format!("riders/{id}/tasks"), QoS::AtLeastOnce).await;
    let _ = client.publish(format!("riders/{id}/shift"), QoS::AtLeastOnce, false, r#"{"on_shift":true}"#).await;
    let mut rng = Rng::new(seed);
    let (dlat, dlng) = offset(store.lat, (rng.unit() - 0.5) * 600.0, (rng.unit() - 0.5) * 600.0);
    let mut pos = (store.lat + dlat, store.lng + dlng);
    // The route: (task, target, what happens there).
    let mut route: Vec<(String, (f64, f64), Stop)> = Vec::new();
    let mut wait_until: Option<Instant> = None;
    // A position a second; faster with a large speedup, so that no report jumps further than the
    // server finds plausible (about 50 m between reports).
    let per_second = (ctx.cfg.speedup * ctx.cfg.rider_speed_mps / 50.0).ceil().max(1.0);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    let step = ctx.cfg.rider_speed_mps * ctx.cfg.speedup / per_second;
    while !ctx.stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => {}
            Some(task) = tasks_rx.recv() => {
                s.tasks.fetch_add(1, Ordering::Relaxed);
                let task_id = task["task_id"].as_str().unwrap_or_default().to_owned();
                let pickup = (task["pickup"]["lat"].as_f64().unwrap_or(store.lat), task["pickup"]["lng"].as_f64().unwrap_or(store.lng));
                let orders: Vec<(String, (f64, f64))> = task["orders"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| Some((o["id"].as_str()?.to_owned(), (o["lat"].as_f64()?, o["lng"].as_f64()?))))
                    .collect();
                if route.iter().any(|(t, _, _)| *t == task_id) {
                    // The task again, changed (an order was cancelled or handed back): keep only
                    // the stops of the orders still on it; none left withdraws it.
                    let first = route.first().cloned();
                    let keep = |o: &String| orders.iter().any(|(id, _)| id == o);
                    for (t, _, stop) in route.iter_mut() {
                        if *t == task_id && let Stop::Store(os) = stop {
                            os.retain(keep);
                        }
                    }
                    route.retain(|(t, _, stop)| *t != task_id || match stop {
                        Stop::Store(os) => !os.is_empty(),
                        Stop::Door(o) => keep(o),
                    });
                    if route.first() != first.as_ref() {
                        wait_until = None;
                    }
                    continue;
                }
                route.push((task_id.clone(), pickup, Stop::Store(orders.iter().map(|o| o.0.clone()).collect())));
                for (oid, at) in orders {
                    route.push((task_id.clone(), at, Stop::Door(oid)));
                }
                continue;
            }
        }
        // Move toward the next stop.
        if let Some((_, target, _)) = route.first().cloned() {
            if wait_until.is_some_and(|w| Instant::now() < w) {
                // Being served at the store or the door.
            } else if let Some(w) = wait_until.take() {
                let _ = w;
                let (_, _, stop) = route.remove(0);
                let events: Vec<(&str, String)> = match &stop {
                    Stop::Store(orders) => orders.iter().map(|o| ("picked_up", o.clone())).collect(),
                    Stop::Door(o) => vec![("delivered", o.clone())],
                };
                for (kind, order_id) in events {
                    let body = json!({"type": kind, "order_id": order_id, "ts": now_ms()}).to_string();
                    if client.publish(format!("riders/{id}/events"), QoS::AtLeastOnce, false, body).await.is_err() {
                        s.error("mqtt_publish");
                    }
                }
            } else {
                let d = distance_m(pos, target);
                if d <= step {
                    pos = target;
                    if let Some((_, _, Stop::Store(orders))) = route.first()
                        && let Some(first) = orders.first()
                    {
                        let body = json!({"type": "arrived_store", "order_id": first, "ts": now_ms()}).to_string();
                        let _ = client.publish(format!("riders/{id}/events"), QoS::AtLeastOnce, false, body).await;
                    }
                    // One simulated minute of service at each stop.
                    wait_until = Some(Instant::now() + ctx.real(60.0));
                } else {
                    let f = step / d;
                    pos = (pos.0 + (target.0 - pos.0) * f, pos.1 + (target.1 - pos.1) * f);
                }
            }
        }
        let body = json!({"lat": pos.0, "lng": pos.1, "ts": now_ms()});
        match client.try_publish(format!("riders/{id}/location"), QoS::AtMostOnce, false, body.to_string()) {
            Ok(()) => {
                s.positions.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => s.error("mqtt_publish"),
        }
    }
    // The app must never be left going for an order its customer cancelled.
    let cancelled = s.cancelled_ids.lock().expect("cancelled lock").clone();
    let stranded = route
        .iter()
        .filter(|(_, _, stop)| match stop {
            Stop::Store(os) => os.iter().any(|o| cancelled.contains(o)),
            Stop::Door(o) => cancelled.contains(o),
        })
        .count();
    s.stranded.fetch_add(stranded as u64, Ordering::Relaxed);
    let _ = client.publish(format!("riders/{id}/shift"), QoS::AtLeastOnce, false, r#"{"on_shift":false}"#).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = client.disconnect().await;
    poller.abort();
}

#[derive(Debug, Clone, PartialEq)]
enum Stop {
    /// Pick up these orders.
    Store(Vec<String>),
    /// Deliver this order.
    Door(String),
}
