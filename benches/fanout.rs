//! Fan-out: N WebSocket clients subscribed to one store, rider positions published over MQTT at
//! M per second; publish-to-client latency and messages delivered per second.
//!
//! `cargo bench --bench fanout` runs a series of (clients, updates/s) steps, 10 s each
//! (`BENCH_SECS`); `BENCH_STEPS="1000:2000,10000:20000"` picks the steps. Positions go through the
//! machine's Mosquitto (127.0.0.1:1883) to a release build of the server.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BenchServer, token};
use darkstore::auth::Role;
use darkstore_db::scratch::ScratchDb;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio_tungstenite::tungstenite::Message;

const N_RIDERS: usize = 500;

fn now_ms() -> i64 {
    common::now_ms()
}

async fn step(base: &str, n_clients: usize, rate: u64, secs: u64, staff: &str) {
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000, 3).unwrap()));
    let received = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Frames count only while the publisher runs, from positions published in that window.
    let window_start = Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX));
    let ws_url = format!("{}/v1/ws?token={staff}", base.replace("http://", "ws://"));
    let mut clients = Vec::new();
    let connect_started = Instant::now();
    for _ in 0..n_clients {
        let (mut ws, _) = match tokio_tungstenite::connect_async(&ws_url).await {
            Ok(c) => c,
            Err(e) => {
                println!("  connect failed after {} clients: {e}", clients.len());
                break;
            }
        };
        ws.send(Message::Text(r#"{"op":"subscribe","topic":"store/s1"}"#.into())).await.unwrap();
        let (latency, received, closed, stop) = (latency.clone(), received.clone(), closed.clone(), stop.clone());
        let window_start = window_start.clone();
        clients.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 600_000, 3).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        // Rider frames carry the rider's ts, set by the publisher at send time.
                        if let Some(i) = t.find("\"ts\":") {
                            let rest = &t[i + 5..];
                            let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
                            if let Ok(ts) = rest[..end].parse::<i64>()
                                && ts >= window_start.load(Ordering::Relaxed)
                            {
                                local.record((now_ms() - ts).max(1) as u64).unwrap();
                                n += 1;
                            }
                        }
                    }
                    Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                        closed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    _ => {}
                }
            }
            received.fetch_add(n, Ordering::Relaxed);
            latency.lock().unwrap().add(&local).unwrap();
        }));
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The publisher: positions for N_RIDERS riders at `rate` per second, in 10 ms batches.
    let mut opts = MqttOptions::new(format!("fanout-pub-{}", std::process::id()), "127.0.0.1", 1883);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut el) = AsyncClient::new(opts, 100_000);
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let started = Instant::now();
    window_start.store(now_ms(), Ordering::Relaxed);
    let per_batch = (rate / 100).max(1);
    let mut sent = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let mut k = 0usize;
    while started.elapsed() < Duration::from_secs(secs) {
        ticker.tick().await;
        for _ in 0..per_batch {
            k = (k + 1) % N_RIDERS;
            let body = format!(r#"{{"lat":{},"lng":77.6412,"ts":{}}}"#, 12.9719 + (k as f64) * 1e-5, now_ms());
            if client.try_publish(format!("riders/fan-{k}/location"), QoS::AtMostOnce, false, body).is_ok() {
                sent += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients.drain(..) {
        let _ = c.await;
    }
    let h = latency.lock().unwrap();
    println!(
        "| {n_clients} | {rate} | {:.0} | {:.0} | {} | {} | {} | {} | {:.1} |",
        sent as f64 / elapsed,
        received.load(Ordering::Relaxed) as f64 / elapsed,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        closed.load(Ordering::Relaxed),
        connect_secs,
    );
}

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let steps: Vec<(usize, u64)> = std::env::var("BENCH_STEPS")
        .unwrap_or_else(|_| "100:2000,1000:2000,1000:20000,5000:5000,10000:2000,10000:20000".into())
        .split(',')
        .filter_map(|s| s.split_once(':').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?))))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        println!("fan-out: store/s1 subscribers, {N_RIDERS} riders of the store publishing over Mosquitto, {secs} s per step, a fresh server per step");
        println!("| clients | target updates/s | published/s | frames delivered/s | p50 ms | p99 ms | max ms | clients closed | connect s |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for (clients, rate) in steps {
            let scratch = ScratchDb::sqlite("ds_bench_fanout");
            let server = BenchServer::start(
                &scratch.url,
                &["--mqtt-url", "mqtt://127.0.0.1:1883", "--ws-max-connections", "20000"],
            );
            let base = server.base.clone();
            let admin = token(Role::Admin, "admin", None);
            let staff = token(Role::Staff, "staff", Some("s1"));
            let http = reqwest::Client::new();
            http.put(format!("{base}/v1/stores/s1"))
                .bearer_auth(&admin)
                .body(r#"{"name":"S1","lat":12.9719,"lng":77.6412}"#)
                .send()
                .await
                .unwrap();
            for i in 0..N_RIDERS {
                http.put(format!("{base}/v1/riders/fan-{i}"))
                    .bearer_auth(&admin)
                    .body(r#"{"name":"F","store_id":"s1"}"#)
                    .send()
                    .await
                    .unwrap();
            }
            step(&base, clients, rate, secs, &staff).await;
            drop(server);
            scratch.drop_database().await;
        }
    });
}
