//! Cluster mode: several nodes share one city. A region (the H3 resolution-5 parent cell of a
//! store's location, `PartitionKey`) is owned by one live node at a time, under a lease in a NATS
//! JetStream key-value bucket; the lease's revision is the region's fencing epoch, which every
//! group commit touching the region checks and advances in PostgreSQL (`Fencer`).
//!
//! The protocol, one round every quarter of the lease TTL:
//! 1. Membership: this node's key in the `darkstore_members` bucket (TTL as the leases) is
//!    renewed; the live nodes are the keys present.
//! 2. For every region of a known store, the desired owner is the rendezvous-hash winner among
//!    the live nodes. A node holding a region renews its lease (update on the revision it holds);
//!    a failed renewal means it lost the region: it stops committing for it and forgets it. A node
//!    holding a region another live node should own releases it (hand-off: it stops committing,
//!    then deletes the lease at its revision). The desired owner creates the lease when it is
//!    absent (put-if-absent), moves the region's epoch in PostgreSQL to the new revision *before*
//!    loading the region's stock and open orders from PostgreSQL, then serves it.
//! 3. Commits check locally that the lease was renewed within ¾ of the TTL (measured from before
//!    the renewal was sent, on this node's monotonic clock: no clock is compared across nodes),
//!    and PostgreSQL refuses any batch whose epoch a newer owner has passed.

pub mod claims;
pub mod forward;
pub mod hash;
mod lease;
pub mod relay;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;

use futures_util::StreamExt;
use serde_json::json;

use crate::BoxError;
use crate::state::State;

const MEMBERS: &str = "darkstore_members";
const LEASES: &str = "darkstore_leases";
/// Where a node says it changed the catalog (payload: its id).
const CATALOG_SUBJECT: &str = "darkstore.catalog";
/// Rounds between two reconciliations of the catalog with PostgreSQL (a missed announcement
/// costs at most this many rounds).
const CATALOG_EVERY: u32 = 8;

/// The region a point belongs to: its H3 resolution-5 parent cell.
pub fn region_of(lat: f64, lng: f64) -> Option<String> {
    let cell = darkstore_geoinv::area::cell_of(lat, lng).ok()?;
    Some(darkstore_geoinv::area::PartitionKey::of(cell).0.to_string())
}

/// A lease this node holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// The lease's revision: the region's fencing epoch.
    epoch: u64,
    /// When the request that produced `epoch` was sent (the lease lives at least TTL from then).
    renewed: Instant,
}

/// What this node last saw of the cluster.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Live nodes: (id, advertised URL).
    pub nodes: Vec<(String, String)>,
    /// Region → (owner, epoch), as the lease bucket says.
    pub owners: HashMap<String, (String, u64)>,
}

/// Where a region's requests should go when this node does not serve it.
#[derive(Debug, Clone)]
pub struct Elsewhere {
    pub region: String,
    pub owner: Option<(String, String)>,
}

pub struct Cluster {
    pub node_id: String,
    pub advertise: String,
    ttl: Duration,
    client: async_nats::Client,
    members: kv::Store,
    leases: kv::Store,
    held: Mutex<HashMap<String, Held>>,
    view: RwLock<View>,
    /// Store → region, for the stores this node knows.
    regions: RwLock<HashMap<String, String>>,
    /// The membership key's revision (0: not registered).
    member_rev: Mutex<u64>,
    /// The last membership renewal that succeeded.
    alive: Mutex<Option<Instant>>,
    stopping: AtomicBool,
    /// The last owner seen of each region.
    last_owners: Mutex<HashMap<String, String>>,
    /// Which node gives each rider its task (`claims.rs`).
    pub claims: claims::Claims,
    /// Idle riders of other regions within this distance of a store of a region held here may be
    /// given its tasks (m).
    pub border_m: f64,
    /// Called with the regions whose owner changed since the last round.
    on_moved: std::sync::OnceLock<Box<dyn Fn(Vec<String>) + Send + Sync>>,
}

/// The bucket `name`, created if absent; its keys live `max_age` without an update (zero: until
/// deleted).
async fn bucket(js: &async_nats::jetstream::Context, name: &str, max_age: Duration) -> Result<kv::Store, BoxError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let config = kv::Config {
        bucket: name.to_owned(),
        history: 1,
        max_age,
        // On disk: a restarted NATS server keeps the buckets (stale leases lapse by their age).
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    };
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another node created it meanwhile.
        Err(e) => {
            js.get_key_value(name).await.map_err(|_| format!("--cluster-url: key-value bucket {name}: {e}").into())
        }
    }
}

impl Cluster {
    /// Connects to NATS, makes sure the buckets exist, and registers this node (refused when a
    /// live node already has the id).
    pub async fn join(
        url: &str,
        node_id: &str,
        advertise: &str,
        ttl: Duration,
        border_m: f64,
    ) -> Result<Arc<Cluster>, BoxError> {
        if node_id.is_empty()
            || node_id.len() > 64
            || !node_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err("--node-id must be 1-64 characters of [A-Za-z0-9_-]".into());
        }
        if ttl < Duration::from_millis(500) {
            return Err("--lease-ttl-ms must be at least 500".into());
        }
        let client = async_nats::ConnectOptions::new()
            .name(format!("darkstore {node_id}"))
            .connection_timeout(Duration::from_secs(3))
            .connect(url)
            .await
            .map_err(|e| format!("--cluster-url {url}: cannot reach NATS: {e}"))?;
        let js = async_nats::jetstream::new(client.clone());
        let members = bucket(&js, MEMBERS, ttl).await?;
        let leases = bucket(&js, LEASES, ttl).await?;
        let riders = bucket(&js, claims::RIDERS, Duration::ZERO).await?;
        let value = json!({"advertise": advertise}).to_string();
        // A key left by this id's previous process (killed) lapses within the TTL; a live twin
        // keeps renewing it. So try until 1.5 TTL have passed before refusing.
        let deadline = Instant::now() + ttl * 3 / 2;
        let rev = loop {
            match members.create(node_id, value.clone().into()).await {
                Ok(rev) => break rev,
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "--node-id {node_id} is in use by a live node (its membership kept being renewed)"
                        )
                        .into());
                    }
                    tokio::time::sleep(ttl / 10).await;
                }
                Err(e) => return Err(format!("--cluster-url: registering this node: {e}").into()),
            }
        };
        tracing::info!(node = node_id, advertise, "joined the cluster");
        Ok(Arc::new(Cluster {
            node_id: node_id.to_owned(),
            advertise: advertise.to_owned(),
            ttl,
            client,
            members,
            leases,
            held: Mutex::new(HashMap::new()),
            view: RwLock::new(View::default()),
            regions: RwLock::new(HashMap::new()),
            member_rev: Mutex::new(rev),
            alive: Mutex::new(Some(Instant::now())),
            stopping: AtomicBool::new(false),
            on_moved: std::sync::OnceLock::new(),
            claims: claims::Claims::new(node_id, riders),
            border_m: if border_m.is_finite() { border_m.max(0.0) } else { 0.0 },
            last_owners: Mutex::new(HashMap::new()),
        }))
    }

    /// Calls `hook` with the regions whose owner changed, after each round that saw some (set once):
    /// the feeds send their clients fresh snapshots of what those regions hold.
    pub fn on_region_moved(&self, hook: Box<dyn Fn(Vec<String>) + Send + Sync>) {
        let _ = self.on_moved.set(hook);
    }

    /// How long a lease is trusted after the renewal was sent.
    fn trusted(&self) -> Duration {
        self.ttl * 3 / 4
    }

    /// Whether this node can serve: connected to NATS and its membership renewed recently.
    pub fn ready(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
            && self.alive.lock().expect("alive lock").is_some_and(|t| t.elapsed() < self.trusted())
    }

    pub fn view(&self) -> View {
        self.view.read().expect("view lock").clone()
    }

    /// The regions this node holds, with their epochs.
    pub fn held(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> =
            self.held.lock().expect("held lock").iter().map(|(r, h)| (r.clone(), h.epoch)).collect();
        v.sort();
        v
    }

    /// The region of a store this node knows.
    pub fn region_of_store(&self, store_id: &str) -> Option<String> {
        self.regions.read().expect("regions lock").get(store_id).cloned()
    }

    /// The stores of each region, as this node knows them.
    pub fn stores_by_region(&self) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for (store, region) in self.regions.read().expect("regions lock").iter() {
            out.entry(region.clone()).or_default().push(store.clone());
        }
        out.values_mut().for_each(|v| v.sort());
        out
    }

    /// Whether this node holds the region's lease (trusted or not: it has not let it go).
    pub(crate) fn has_region(&self, region: &str) -> bool {
        self.held.lock().expect("held lock").contains_key(region)
    }

    fn holds(&self, region: &str) -> bool {
        self.held.lock().expect("held lock").get(region).is_some_and(|h| h.renewed.elapsed() < self.trusted())
    }

    /// Ok when this node serves `store`'s region now; otherwise where it is served.
    pub fn serves_store(&self, store: &crate::state::Store) -> Result<(), Elsewhere> {
        let region = match self.region_of_store(&store.id) {
            Some(r) => r,
            None => {
                // A store this node learned of since its last round.
                let Some(r) = region_of(store.lat, store.lng) else {
                    return Err(Elsewhere { region: String::new(), owner: None });
                };
                self.regions.write().expect("regions lock").insert(store.id.clone(), r.clone());
                r
            }
        };
        if self.holds(&region) {
            return Ok(());
        }
        let view = self.view();
        let owner = view.owners.get(&region).and_then(|(node, _)| {
            view.nodes.iter().find(|(id, _)| id == node).map(|(id, url)| (id.clone(), url.clone()))
        });
        Err(Elsewhere { region, owner })
    }

    /// Learns the stores the state knows (their regions).
    fn learn_stores(&self, state: &State) {
        let mut regions = self.regions.write().expect("regions lock");
        for store in state.stores() {
            if !regions.contains_key(&store.id)
                && let Some(r) = region_of(store.lat, store.lng)
            {
                regions.insert(store.id.clone(), r);
            }
        }
    }

    /// Runs the ownership rounds until `stop` is set, then hands every region off and leaves.
    pub async fn run(
        self: Arc<Self>,
        state: Arc<State>,
        riders: Arc<crate::riders::Riders>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let period = self.ttl / 4;
        let mut announcements = match self.client.subscribe(CATALOG_SUBJECT).await {
            Ok(sub) => Some(sub),
            Err(e) => {
                tracing::warn!(error = %e, "cannot hear catalog announcements; reconciling periodically only");
                None
            }
        };
        let mut rounds = 0u32;
        let mut next_round = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_round) => {
                    if rounds.is_multiple_of(CATALOG_EVERY) {
                        self.sync_catalog(&state, &riders).await;
                    }
                    rounds = rounds.wrapping_add(1);
                    self.round(&state, &riders).await;
                    next_round = tokio::time::Instant::now() + period;
                }
                Some(msg) = async { match announcements.as_mut() { Some(s) => s.next().await, None => None } } => {
                    if msg.payload.as_ref() != self.node_id.as_bytes() {
                        self.sync_catalog(&state, &riders).await;
                    }
                }
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
        }
        self.leave(&state, &riders).await;
    }

    /// Tells the other nodes the catalog changed here.
    pub fn announce_catalog(self: &Arc<Self>) {
        let (client, id) = (self.client.clone(), self.node_id.clone());
        tokio::spawn(async move {
            if let Err(e) = client.publish(CATALOG_SUBJECT, id.into()).await {
                tracing::warn!(error = %e, "could not announce a catalog change");
            }
        });
    }

    /// Reads the catalog from PostgreSQL and applies what changed.
    async fn sync_catalog(&self, state: &Arc<State>, riders: &crate::riders::Riders) {
        match state.db.load_catalog().await {
            Ok(snap) => {
                riders.restore(snap.riders.clone());
                let changed = state.sync_catalog(&snap);
                if changed > 0 {
                    tracing::info!(changed, "catalog brought up to date");
                    self.learn_stores(state);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the catalog"),
        }
    }

    /// One round: membership, then every region's lease.
    async fn round(&self, state: &Arc<State>, riders: &crate::riders::Riders) {
        self.learn_stores(state);
        self.heartbeat().await;
        let nodes = self.live_nodes().await;
        let ids: Vec<&str> = nodes.iter().map(|(id, _)| id.as_str()).collect();
        let by_region = self.stores_by_region();
        let regions: BTreeSet<&String> = by_region.keys().collect();
        for region in regions {
            let desired = hash::owner(region, ids.iter().copied());
            let held = self.held.lock().expect("held lock").get(region).copied();
            match held {
                Some(h) if desired.is_some_and(|d| d != self.node_id) => {
                    self.release(state, riders, region, h, &by_region[region], "hand-off to its new owner").await;
                }
                Some(h) => self.renew(state, riders, region, h, &by_region[region]).await,
                None if desired == Some(self.node_id.as_str()) => {
                    self.acquire(state, riders, region, &by_region[region]).await;
                }
                None => {}
            }
        }
        // Claims of riders by nodes that are gone, in the regions held here.
        let live: std::collections::HashSet<&str> = ids.iter().copied().collect();
        self.claims.sweep(&live, |r| self.has_region(r)).await;
        // What the bucket says, for /v1/cluster and for pointing requests at owners.
        let mut owners = HashMap::new();
        for region in by_region.keys() {
            if let Ok(Some(entry)) = self.leases.entry(region.clone()).await
                && entry.operation == kv::Operation::Put
            {
                owners.insert(region.clone(), (String::from_utf8_lossy(&entry.value).into_owned(), entry.revision));
            }
        }
        let moved: Vec<String> = {
            // Against the last owner seen, so a region that had none for a while still counts.
            let mut last = self.last_owners.lock().expect("last owners lock");
            let mut moved = Vec::new();
            for (region, (owner, _)) in &owners {
                if last.insert(region.clone(), owner.clone()).is_some_and(|before| &before != owner) {
                    moved.push(region.clone());
                }
            }
            *self.view.write().expect("view lock") = View { nodes, owners };
            moved
        };
        if !moved.is_empty()
            && let Some(hook) = self.on_moved.get()
        {
            hook(moved);
        }
    }

    async fn heartbeat(&self) {
        let sent = Instant::now();
        let rev = *self.member_rev.lock().expect("member lock");
        let value = json!({"advertise": self.advertise}).to_string();
        let renewed = match self.members.update(&self.node_id, value.clone().into(), rev).await {
            Ok(rev) => Ok(rev),
            // Expired (e.g. this process was paused past the TTL): register again, unless
            // another process took the id meanwhile.
            Err(_) => self.members.create(&self.node_id, value.into()).await.map_err(|e| e.to_string()),
        };
        match renewed {
            Ok(rev) => {
                *self.member_rev.lock().expect("member lock") = rev;
                *self.alive.lock().expect("alive lock") = Some(sent);
            }
            Err(e) => tracing::warn!(error = %e, "cluster membership not renewed"),
        }
    }

    async fn live_nodes(&self) -> Vec<(String, String)> {
        let mut nodes = Vec::new();
        let Ok(mut keys) = self.members.keys().await else { return nodes };
        let mut ids = Vec::new();
        while let Some(Ok(key)) = keys.next().await {
            ids.push(key);
        }
        for id in ids {
            if let Ok(Some(value)) = self.members.get(id.clone()).await {
                let advertise = serde_json::from_slice::<serde_json::Value>(&value)
                    .ok()
                    .and_then(|v| v["advertise"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                nodes.push((id, advertise));
            }
        }
        nodes.sort();
        nodes
    }

    /// Graceful stop: hands every region off and leaves the membership.
    async fn leave(&self, state: &Arc<State>, riders: &crate::riders::Riders) {
        self.stopping.store(true, Ordering::Relaxed);
        let by_region = self.stores_by_region();
        let held: Vec<(String, Held)> =
            self.held.lock().expect("held lock").iter().map(|(r, h)| (r.clone(), *h)).collect();
        for (region, h) in held {
            let stores = by_region.get(&region).cloned().unwrap_or_default();
            self.release(state, riders, &region, h, &stores, "leaving the cluster").await;
        }
        let _ = self.members.delete(&self.node_id).await;
        tracing::info!(node = %self.node_id, "left the cluster");
    }
}
