//! darkstore: a real-time dispatch and geo-inventory server for 10-minute grocery delivery.
//!
//! A map of the server (ARCHITECTURE.md has the whole of it):
//! - [`config`]: the command line (flags, environment variables, defaults).
//! - [`clock`]: time, handed in; only `main` reads the system clock.
//! - [`model`]: the domain's values; [`changes`]: typed changes and the hub that hands them on.
//! - [`state`]: stores, catalog, stock and orders, and every operation on them.
//! - [`riders`]: riders (registration, live state, the index of who can take work).
//! - [`ingest`]: what riders send, applied; [`dispatch`]: the dispatch tick.
//! - [`publish`]: changes to WebSocket and MQTT topics; [`topics`], [`views`], [`feeds`].
//! - [`http`]: the HTTP API (axum): routing, identity, rate limits, errors, handlers.
//! - [`mqtt`]: the embedded broker and the server's client.
//! - [`auth`], [`metrics`], [`ratelimit`], [`error`]: cross-cutting pieces of the edge.
//! - [`demo`]: the demo city `darkstore demo` loads.
//!
//! [`start`] opens the database, rebuilds the state and binds nothing itself: the caller hands in
//! the listener, so tests bind port 0. [`Server::run_until`] serves until the shutdown future
//! resolves, then drains requests, stops background work and waits for the last commit.

/// Tokens and signatures (the `darkstore-auth` crate, re-exported).
pub use darkstore_auth as auth;
pub mod broker;
pub mod changes;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod dispatch;
pub mod error;
pub mod feeds;
pub mod geofence;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod picks;
pub mod promises;
pub mod publish;
pub mod ratelimit;
pub mod riders;
pub mod state;
pub mod topics;
pub mod views;

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use darkstore_db::{Committer, Db};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::changes::{Changes, Observer};
use crate::clock::Clock;
use crate::config::ServeConfig;
use crate::dispatch::Dispatcher;
use crate::http::App;
use crate::ingest::Ingest;
use crate::promises::Promises;
use crate::publish::Publisher;
use crate::ratelimit::RateLimiter;
use crate::riders::Riders;
use crate::state::{State, StateConfig};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The settings key under which a generated token secret is kept.
pub const JWT_SECRET_KEY: &str = "jwt_secret";

/// A started server, ready to serve.
pub struct Server {
    pub http_addr: SocketAddr,
    pub mqtt_url: Option<String>,
    pub app: Arc<App>,
    /// The embedded broker, when there is no external one.
    pub broker: Option<broker::EmbeddedBroker>,
    listener: TcpListener,
    commit_task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

/// A fresh random secret, hex-encoded.
pub fn random_secret() -> Result<String, BoxError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(hex::encode(bytes))
}

/// Opens the database, rebuilds the state and prepares the HTTP listener.
pub async fn start(config: &ServeConfig, listener: TcpListener, clock: Arc<dyn Clock>) -> Result<Server, BoxError> {
    let travel = config.travel_model();
    if !travel.is_valid() {
        return Err("invalid travel model: speed and promise must be positive, detour at least 1".into());
    }
    if config.max_body_bytes < 1024 {
        return Err("--max-body-bytes must be at least 1024".into());
    }
    let cors_origins = cors_origins(&config.cors_origins)?;
    let db = Db::connect(&config.database_url).await.map_err(|e| -> BoxError {
        let text = e.to_string();
        if text.contains("ertificate") || text.contains("TLS") || text.contains("tls") {
            // Name the setting: verification is on, and the server's certificate did not pass it.
            format!("{text} (TLS to PostgreSQL: check sslmode and sslrootcert in --database-url)").into()
        } else {
            e.into()
        }
    })?;
    let jwt_secret = match &config.jwt_secret {
        Some(s) if s.len() >= 16 => s.clone(),
        Some(_) => return Err("--jwt-secret must be at least 16 characters".into()),
        None => {
            let secret = db.setting_or_insert(JWT_SECRET_KEY, &random_secret()?).await?;
            tracing::info!("using the token secret kept in the database (`darkstore token` reads it there)");
            secret
        }
    };
    let (committer, commit_task) = Committer::spawn(db.clone(), config.commit_max_batch, 65_536);
    let cluster = match &config.cluster_url {
        None => None,
        Some(url) => {
            if db.backend() != darkstore_db::Backend::Postgres {
                return Err("--cluster-url needs PostgreSQL (--database-url postgres://…): the nodes share it".into());
            }
            let node_id = config.node_id.as_deref().ok_or("--cluster-url needs --node-id")?;
            let advertise = match &config.advertise {
                Some(url) => url.clone(),
                None => format!("http://{}", listener.local_addr()?),
            };
            let cluster = cluster::Cluster::join(
                url,
                node_id,
                &advertise,
                Duration::from_millis(config.lease_ttl_ms),
                config.cluster_border_m,
            )
            .await?;
            committer.set_fencer(cluster.clone());
            Some(cluster)
        }
    };
    let order_retention_ms = (config.order_retention_minutes.max(0.0) * 60_000.0) as i64;
    let key_retention_ms = (config.idempotency_key_hours.max(0.0) * 3_600_000.0) as i64;
    // Finished orders past the orders' retention would leave memory at once: only the keys of
    // those within the keys' retention are read.
    let now = clock.now_ms();
    let since = darkstore_db::Since {
        orders: now.saturating_sub(order_retention_ms),
        keys: now.saturating_sub(key_retention_ms),
    };
    let mut snapshot = db.load_since(since).await?;
    if cluster.is_some() {
        // The catalog only: a region's stock and orders are loaded when its lease is taken.
        snapshot.retain_stores(|_| false);
    }
    tracing::info!(
        stores = snapshot.stores.len(),
        products = snapshot.products.len(),
        orders = snapshot.orders.len(),
        lots = snapshot.lots.len(),
        "state rebuilt from the database"
    );
    let payment_hold_ms =
        config.payment_webhook_secret.as_ref().map(|_| (config.payment_hold_minutes.max(0.0) * 60_000.0) as i64);
    let quote = darkstore_geoinv::quote::QuoteParams {
        pick_ms: (travel.picking_minutes * 60_000.0) as i64,
        pickers: config.pickers.max(1),
        handover_ms: (config.handover_secs.max(0.0) * 1000.0) as i64,
        // A round trip to the edge of the area and back (the ride the promise leaves, twice).
        cycle_ms: (2.0 * (travel.promise_minutes - travel.picking_minutes).max(1.0) * 60_000.0) as i64,
    };
    let max_eta_minutes = config.max_eta_minutes.filter(|m| m.is_finite() && *m > 0.0);
    if config.delivery_fee_minor < 0 {
        return Err("--delivery-fee-minor must be at least 0".into());
    }
    if !(config.surge_max.is_finite() && (1.0..=10.0).contains(&config.surge_max)) {
        return Err("--surge-max must be between 1 and 10".into());
    }
    let state_config = StateConfig {
        travel,
        payment_hold_ms,
        order_retention_ms,
        key_retention_ms,
        quote,
        max_eta_minutes,
        delivery_fee_minor: config.delivery_fee_minor,
    };
    // The owners of state, and the hub their changes go through.
    let changes = Arc::new(Changes::new());
    let rider_rows = std::mem::take(&mut snapshot.riders);
    let state =
        Arc::new(State::from_snapshot(state_config, db, committer.clone(), snapshot, clock.clone(), changes.clone()));
    let riders =
        Arc::new(Riders::new(config.rider_silence_secs.max(1) as i64 * 1000, Some(committer), changes.clone()));
    riders.restore(rider_rows);
    for held in state.orders_with_riders().await {
        let pickup = state.store(&held.order.store_id).map_or((held.order.lat, held.order.lng), |s| (s.lat, s.lng));
        riders.restore_task(&held.rider_id, &held.order, held.picked_up, pickup, clock.now_ms());
    }
    let feeds = Arc::new(feeds::Feeds::new());
    let publisher = Arc::new(Publisher::new(feeds.clone(), state.promise_ms()));
    publisher.set_state(Arc::downgrade(&state));
    let promises = Arc::new(Promises::new(travel, quote.handover_ms));
    promises.set_state(Arc::downgrade(&state));
    let picks = Arc::new(picks::TopPicks::new(config.top_picks_days));
    let now = clock.now_ms();
    for (store, sku, day, units) in state.db.units_per_day_since(picks.since(now)).await? {
        picks.add_day(&store, &sku, units, day);
    }
    // Riders first: an order leaving a task changes the task before the order's feed hears of it;
    // then the promises, whose ETAs the publisher tells.
    let geofences = Arc::new(geofence::Geofences::new(config.geofence_m));
    changes.attach(vec![
        Arc::downgrade(&riders) as Weak<dyn Observer>,
        Arc::downgrade(&geofences) as Weak<dyn Observer>,
        Arc::downgrade(&promises) as Weak<dyn Observer>,
        Arc::downgrade(&picks) as Weak<dyn Observer>,
        Arc::downgrade(&publisher) as Weak<dyn Observer>,
    ]);
    if config.mqtt_url.is_some() && config.mqtt_tls_cert.is_some() {
        return Err("--mqtt-tls-cert and --mqtt-tls-key are for the embedded broker: not with --mqtt-url".into());
    }
    let server_client_id = mqtt::server_client_id()?;
    let (mqtt_url, credentials, broker) = match &config.mqtt_url {
        Some(url) => {
            tracing::warn!(
                url = %mqtt::redacted(url),
                "an external MQTT broker: darkstore cannot enforce who may publish or subscribe what there; \
                 give it the access rules in the README (riders publish and read only their own topics)"
            );
            (url.clone(), None, None)
        }
        None => {
            let internal = auth::hmac_hex(jwt_secret.as_bytes(), b"darkstore mqtt server credential");
            let access = Arc::new(broker::Access::new(
                jwt_secret.clone().into_bytes(),
                internal.clone(),
                server_client_id.clone(),
                clock.clone(),
            ));
            access.set_state(Arc::downgrade(&state));
            let tls = match (&config.mqtt_tls_cert, &config.mqtt_tls_key) {
                (Some(cert), Some(key)) => Some((cert.clone(), key.clone(), config.mqtt_tls_listen)),
                _ => None,
            };
            let embedded = broker::EmbeddedBroker::start(config.mqtt_listen, tls, access, mqtt::MAX_PAYLOAD).await?;
            let url = format!("mqtt://{}", embedded.addr);
            (url, Some((broker::SERVER_USERNAME.to_owned(), internal)), Some(embedded))
        }
    };
    let (mqtt, incoming) =
        mqtt::connect(&mqtt_url, server_client_id, credentials, config.mqtt_queue, config.mqtt_ca_file.as_deref())?;
    for _ in 0..50 {
        if mqtt.connected.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !mqtt.connected.load(std::sync::atomic::Ordering::Relaxed) {
        if mqtt.untrusted.load(std::sync::atomic::Ordering::Relaxed) {
            // Verification is on and failed: waiting would not help; say which setting to fix.
            return Err(format!(
                "the MQTT broker at {} presented a TLS certificate that does not verify (expired, self-signed or \
                 from another CA): give its CA with --mqtt-ca-file",
                mqtt.url
            )
            .into());
        }
        tracing::warn!(url = %mqtt.url, "the MQTT broker is not reachable yet; /readyz says so until it is");
    }
    {
        let mqtt = mqtt.clone();
        publisher.set_mqtt(Box::new(move |topic, payload| mqtt.publish(topic, payload, rumqttc::QoS::AtLeastOnce)));
    }
    let tick_ms = config.dispatch_tick_ms.max(100);
    let ingest = Arc::new(Ingest::new(state.clone(), riders.clone(), config.delivery_radius_m.max(0.0)));
    let surge = darkstore_geoinv::surge::SurgeRule::new(config.delivery_fee_minor, config.surge_max);
    let dispatcher = Arc::new(Dispatcher::new(ingest.clone(), promises.clone(), surge, tick_ms as i64));
    let app = Arc::new(App {
        state: state.clone(),
        clock: clock.clone(),
        jwt_secret: jwt_secret.into_bytes(),
        webhook_secret: config.payment_webhook_secret.clone().map(String::into_bytes),
        limiter: RateLimiter::new(config.rate_limit_per_sec, config.rate_limit_burst),
        max_body_bytes: config.max_body_bytes,
        cors_origins,
        riders,
        ingest: ingest.clone(),
        dispatcher: dispatcher.clone(),
        publisher,
        promises,
        geofences,
        picks,
        feeds,
        pages: http::pages::Pages::default(),
        cluster,
        mqtt: Some(mqtt.clone()),
        broker_access: broker.as_ref().map(|b| b.access.clone()),
        ws: http::ws::WsLimits::new(
            config.ws_max_connections,
            config.ws_max_per_client,
            config.ws_queue,
            Duration::from_secs(config.ws_order_grace_secs),
        ),
    });
    let (stop, stopped) = watch::channel(false);
    let mut background = Vec::new();
    let incoming = match &app.cluster {
        None => incoming,
        Some(cluster) => {
            // Every node hears every rider; a rider is dispatched by the owner of its store's
            // region, or lent to a neighbouring region's owner by the border rule, claimed in
            // either case (`cluster::claims`). The node that gave a rider its task speaks for it
            // on the feeds; an idle rider is spoken for by its home region's owner.
            ingest.cluster_mode.store(true, std::sync::atomic::Ordering::Relaxed);
            // By the rider's store: the publisher asks while the riders' map is locked for that
            // rider, so this must not look the rider up again.
            let serves = {
                let (cluster, state) = (Arc::downgrade(cluster), Arc::downgrade(&state));
                move |r: &model::Rider| -> bool {
                    let (Some(cluster), Some(state)) = (cluster.upgrade(), state.upgrade()) else { return false };
                    if r.task.is_some() {
                        return true;
                    }
                    if cluster.claims.held_elsewhere(&r.id) {
                        return false;
                    }
                    let store = r.store_id.as_deref().and_then(|s| state.store(s));
                    store.is_some_and(|s| cluster.serves_store(&s).is_ok())
                }
            };
            dispatcher.set_arbiter(cluster.clone());
            {
                let (cluster, stopped) = (cluster.clone(), stopped.clone());
                background.push(tokio::spawn(async move { cluster.claims.watch(stopped).await }));
            }
            let (relay, handles) = cluster.start_relay(
                app.publisher.clone() as Arc<dyn cluster::relay::Sink>,
                broker.is_some(),
                stopped.clone(),
            );
            background.extend(handles);
            app.publisher.set_relay(relay, Box::new(serves));
            let (merged, handles) = cluster.relay_riders(incoming, broker.is_some(), stopped.clone());
            background.extend(handles);
            merged
        }
    };
    background.extend(ingest::spawn(ingest, incoming, stopped.clone()));
    if let Some(cluster) = &app.cluster {
        let announcer = Arc::downgrade(cluster);
        state.on_catalog_change(Box::new(move || {
            if let Some(c) = announcer.upgrade() {
                c.announce_catalog();
            }
        }));
        background.push(tokio::spawn(cluster.clone().run(state.clone(), app.riders.clone(), stopped.clone())));
        background.push(tokio::spawn(http::ws_cluster::serve_snapshots(app.clone(), stopped.clone())));
        let weak = Arc::downgrade(&app);
        cluster.on_region_moved(Box::new(move |regions| {
            if let Some(app) = weak.upgrade() {
                http::ws_cluster::resnapshot(&app, regions);
            }
        }));
        let router = http::router(app.clone());
        background.push(tokio::spawn(cluster.clone().serve_forwards(router, app.jwt_secret.clone(), stopped.clone())));
    }
    background.push(dispatch::spawn(dispatcher, Duration::from_millis(tick_ms), stopped.clone()));
    // Payment holds that ran out (also those that ran out while the server was down).
    background.push(every(Duration::from_secs(1), stopped.clone(), {
        let state = state.clone();
        move || {
            let state = state.clone();
            async move { state.expire_holds().await }
        }
    }));
    background.push(every(Duration::from_secs(config.expiry_sweep_secs.max(1)), stopped.clone(), {
        let state = state.clone();
        move || {
            let state = state.clone();
            async move {
                state.expire_lots().await;
                state.evict_finished_orders();
            }
        }
    }));
    // One node: each lot's ledger sums are checkpointed as the ledger grows, so a start sums only
    // the rows after the checkpoint; and the units ordered per day are rolled up a day at a time
    // once the day has been over for an hour (no order of it commits later), so a start sums only
    // the orders since. Cluster nodes write side by side and never do either.
    if app.cluster.is_none() {
        background.push(every(Duration::from_secs(LEDGER_CHECKPOINT_SECS), stopped.clone(), {
            let state = state.clone();
            move || {
                let state = state.clone();
                async move {
                    let complete_before = (state.now() - ROLL_UP_SETTLE_MS).div_euclid(86_400_000);
                    let writes = vec![darkstore_db::Write::Checkpoint, darkstore_db::Write::RollUp { complete_before }];
                    if let Err(e) = state.committer().commit(writes).await {
                        tracing::warn!(error = %e, "ledger checkpoint or roll-up failed; the next one tries again");
                    }
                }
            }
        }));
    }
    if let Some(addr) = config.metrics_listen {
        let listener = TcpListener::bind(addr).await.map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
        tracing::info!(addr = %listener.local_addr()?, "metrics served without a token");
        let (router, mut stop) = (http::metrics_router(app.clone()), stopped.clone());
        background.push(tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = stop.changed().await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        }));
    }
    background.push(every(Duration::from_millis(config.ws_batch_ms), stopped.clone(), {
        let feeds = app.feeds.clone();
        move || {
            let feeds = feeds.clone();
            async move { feeds.flush_batches() }
        }
    }));
    background.push(every(Duration::from_secs(60), stopped, {
        let app = app.clone();
        move || {
            let app = app.clone();
            async move { app.limiter.prune() }
        }
    }));
    Ok(Server {
        http_addr: listener.local_addr()?,
        mqtt_url: Some(mqtt.url.clone()),
        app,
        broker,
        listener,
        commit_task,
        background,
        stop,
    })
}

/// `--cors-origin` values: each `scheme://host[:port]`, no path, no wildcard.
fn cors_origins(origins: &[String]) -> Result<Vec<axum::http::HeaderValue>, BoxError> {
    let mut out = Vec::new();
    for o in origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        let o = o.trim_end_matches('/');
        let well_formed = (o.starts_with("https://") || o.starts_with("http://"))
            && !o
                .split_once("://")
                .is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/') || rest.contains('*'));
        if !well_formed {
            return Err(format!(
                "--cors-origin {o:?}: give an origin like https://shop.example.com (no path, no wildcard)"
            )
            .into());
        }
        out.push(
            axum::http::HeaderValue::from_str(o)
                .map_err(|_| format!("--cors-origin {o:?} is not a valid header value"))?,
        );
    }
    Ok(out)
}

/// Runs `tick` every `period` until `stop` turns true.
fn every<F, Fut>(period: Duration, mut stop: watch::Receiver<bool>, mut tick: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => tick().await,
                _ = stop.changed() => break,
            }
        }
    })
}

/// How often a single node checkpoints the ledger's sums (each checkpoint sums at most
/// `darkstore_db::CHECKPOINT_MAX_ROWS` rows).
const LEDGER_CHECKPOINT_SECS: u64 = 30;
/// How long after a day is over its units are rolled up: an order placed that day has long
/// committed by then.
const ROLL_UP_SETTLE_MS: i64 = 3_600_000;

impl Server {
    /// The line a launcher waits for on stdout.
    pub fn ready_line(&self) -> String {
        let mqtt = self.mqtt_url.as_deref().unwrap_or("none");
        format!("darkstore ready http={} mqtt={}", self.http_addr, mqtt)
    }

    /// Serves until `shutdown` resolves, then shuts down in order: stop accepting and finish
    /// in-flight requests, stop background work, let the last commit land.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), BoxError> {
        let router = http::router(self.app.clone());
        let app = self.app.clone();
        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            // WebSockets never finish by themselves: close them (1001) so the drain can end.
            let _ = app.ws.shutdown.send(true);
            let _ = drain_tx.send(());
        };
        let serve = axum::serve(self.listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(signal)
            .into_future();
        tokio::pin!(serve);
        tokio::select! {
            r = &mut serve => r?,
            _ = async {
                let _ = drain_rx.await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            } => tracing::warn!("requests still open 10 s after the shutdown signal; stopping anyway"),
        }
        tracing::info!("http drained; stopping background work");
        let _ = self.stop.send(true);
        for task in self.background {
            let _ = task.await;
        }
        let db = self.app.state.db.clone();
        if let Some(m) = &self.app.mqtt {
            let _ = m.client.try_disconnect();
        }
        if let Some(b) = &self.broker {
            b.shutdown();
        }
        drop(self.app);
        // The commit task ends when the last handle to the state (and its committer) is gone.
        if tokio::time::timeout(Duration::from_secs(10), self.commit_task).await.is_err() {
            tracing::warn!("commit queue still busy after 10 s; closing anyway");
        }
        db.close().await;
        tracing::info!("shut down cleanly");
        Ok(())
    }
}
