//! Riders across regions: who may give a rider a task, and the arbiter that makes sure only one
//! node does at a time.
//!
//! The rule (documented in ARCHITECTURE.md, "Cluster mode"):
//! - A rider belongs to its home store's region: that region's owner dispatches it, and speaks
//!   for it on the feeds while it is idle.
//! - A rider idle within `--cluster-border-m` of a store of another region (a border rider), or a
//!   rider with no home store anywhere within that distance, may be given a task by that region's
//!   owner as well: it is lent.
//! - Every assignment in cluster mode first *claims* the rider: it creates the rider's key in the
//!   JetStream key-value bucket `darkstore_riders` (value: the node and the task's region). The
//!   create succeeds for one node only, so two nodes that both planned the same rider cannot both
//!   give it a task; the loser's orders stay open for its next tick. A round trip or two per
//!   task, and a tick's claims go out together.
//! - The claimant speaks for the rider while the key is its own; every other node leaves the rider
//!   out of its plans and its feeds (each node watches the bucket).
//! - The key goes when the task ends: its holder deletes it (at the revision it created, so a key
//!   another node has taken over since is never deleted by mistake). A node that takes a region
//!   puts the keys of the tasks it rebuilt there and deletes the region's other keys (tasks that
//!   ended while the region had no owner, claims whose assignment was fenced); the owner of a
//!   key's region deletes keys of nodes that are no longer members.
//!
//! Keys are rider ids with `.` written as `=` (a `.` separates subject tokens in NATS; `=` is not
//! allowed in ids, so the mapping is one to one).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::dispatch::Usable;

pub const RIDERS: &str = "darkstore_riders";

/// What a rider's key says: the node that gave it a task, and the task's region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub node: String,
    pub region: String,
    #[serde(skip)]
    pub revision: u64,
}

fn key_of(rider: &str) -> String {
    rider.replace('.', "=")
}

fn rider_of(key: &str) -> String {
    key.replace('=', ".")
}

pub struct Claims {
    node_id: String,
    kv: kv::Store,
    /// Every key of the bucket, as watched: rider → claim.
    seen: RwLock<HashMap<String, Claim>>,
    /// The keys this node created or put: rider → (revision, region).
    mine: Mutex<HashMap<String, (u64, String)>>,
}

impl Claims {
    pub fn new(node_id: &str, kv: kv::Store) -> Claims {
        Claims { node_id: node_id.to_owned(), kv, seen: RwLock::new(HashMap::new()), mine: Mutex::new(HashMap::new()) }
    }

    /// Whether another node holds the rider (as last watched).
    pub fn held_elsewhere(&self, rider: &str) -> bool {
        self.seen.read().expect("claims lock").get(rider).is_some_and(|c| c.node != self.node_id)
    }

    /// Every claim, as last watched: (rider, claim), sorted by rider.
    pub fn all(&self) -> Vec<(String, Claim)> {
        let mut v: Vec<(String, Claim)> =
            self.seen.read().expect("claims lock").iter().map(|(r, c)| (r.clone(), c.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn value(&self, region: &str) -> bytes::Bytes {
        let claim = Claim { node: self.node_id.clone(), region: region.to_owned(), revision: 0 };
        serde_json::to_vec(&claim).unwrap_or_default().into()
    }

    fn note(&self, rider: &str, region: &str, revision: u64) {
        self.mine.lock().expect("claims lock").insert(rider.to_owned(), (revision, region.to_owned()));
        let claim = Claim { node: self.node_id.clone(), region: region.to_owned(), revision };
        self.seen.write().expect("claims lock").insert(rider.to_owned(), claim);
    }

    /// Claims a rider for a task of `region`: true when this node now holds its key (created, or
    /// this process's own). False when another node (or this node id's earlier run) holds it, or
    /// NATS did not answer.
    pub async fn claim(&self, rider: &str, region: &str) -> bool {
        let key = key_of(rider);
        match self.kv.create(&key, self.value(region)).await {
            Ok(revision) => {
                self.note(rider, region, revision);
                true
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let Ok(Some(entry)) = self.kv.entry(key.clone()).await else { return false };
                let holder = serde_json::from_slice::<Claim>(&entry.value).ok();
                // This process's own key (its task ended, the key not yet deleted) is taken over;
                // a key naming this node id from an earlier run is not: its task may live on in a
                // region no one has taken yet, whose next owner decides.
                let ours =
                    self.mine.lock().expect("claims lock").get(rider).is_some_and(|(rev, _)| *rev == entry.revision);
                match holder {
                    Some(c) if c.node == self.node_id && ours => {
                        match self.kv.update(&key, self.value(region), entry.revision).await {
                            Ok(revision) => {
                                self.note(rider, region, revision);
                                true
                            }
                            Err(_) => false,
                        }
                    }
                    Some(c) => {
                        tracing::debug!(rider, holder = %c.node, "rider held by another node");
                        self.seen
                            .write()
                            .expect("claims lock")
                            .insert(rider.to_owned(), Claim { revision: entry.revision, ..c });
                        false
                    }
                    None => false,
                }
            }
            Err(e) => {
                tracing::warn!(rider, error = %e, "could not claim a rider");
                false
            }
        }
    }

    /// Puts a rider's key as this node's (a task rebuilt on taking `region`).
    pub async fn adopt(&self, rider: &str, region: &str) {
        match self.kv.put(key_of(rider), self.value(region)).await {
            Ok(revision) => self.note(rider, region, revision),
            Err(e) => tracing::warn!(rider, error = %e, "could not claim a rebuilt task's rider"),
        }
    }

    /// Lets a claim go at once (its assignment did not happen).
    pub async fn release(&self, rider: &str) {
        let held = self.mine.lock().expect("claims lock").get(rider).map(|(rev, _)| *rev);
        if let Some(revision) = held {
            self.delete(rider, revision).await;
        }
    }

    /// Deletes this node's keys of riders whose task has ended here (`has_task` false) in a region
    /// it still holds (`holds`). A key of a region this node no longer holds is left to the
    /// region's next owner, who rebuilds the task or deletes the key: deleting it here could free
    /// a rider that still has a task, for a moment, between two owners.
    pub async fn release_idle(&self, has_task: impl Fn(&str) -> bool, holds: impl Fn(&str) -> bool) {
        // A copy: the riders and the leases are asked without this lock held.
        let mine: Vec<(String, u64, String)> = self
            .mine
            .lock()
            .expect("claims lock")
            .iter()
            .map(|(rider, (revision, region))| (rider.clone(), *revision, region.clone()))
            .collect();
        for (rider, revision, region) in mine {
            if !holds(&region) {
                let mut mine = self.mine.lock().expect("claims lock");
                if mine.get(&rider).is_some_and(|(rev, _)| *rev == revision) {
                    mine.remove(&rider);
                }
            } else if !has_task(&rider) {
                self.delete(&rider, revision).await;
            }
        }
    }

    /// Deletes a key at `revision`; forgets it as this node's unless NATS did not answer.
    async fn delete(&self, rider: &str, revision: u64) {
        let key = key_of(rider);
        let gone = match self.kv.delete_expect_revision(&key, Some(revision)).await {
            Ok(()) => true,
            // Someone else's now (or already gone): not this node's to delete.
            Err(_) => match self.kv.entry(key).await {
                Ok(entry) => entry.is_none_or(|e| e.revision != revision || e.operation != kv::Operation::Put),
                Err(_) => false,
            },
        };
        if gone {
            let mut mine = self.mine.lock().expect("claims lock");
            if mine.get(rider).is_some_and(|(rev, _)| *rev == revision) {
                mine.remove(rider);
            }
            let mut seen = self.seen.write().expect("claims lock");
            if seen.get(rider).is_some_and(|c| c.revision == revision) {
                seen.remove(rider);
            }
        }
    }

    /// Every key of the bucket as it is now, read afresh (not as watched: the watch may lag).
    async fn read_all(&self) -> Option<HashMap<String, Claim>> {
        let mut out = HashMap::new();
        if self.kv.status().await.ok()?.values() == 0 {
            return Some(out);
        }
        let mut entries = self.kv.watch_with_history(">").await.ok()?;
        let read = async {
            while let Some(Ok(entry)) = entries.next().await {
                if entry.operation == kv::Operation::Put
                    && let Ok(c) = serde_json::from_slice::<Claim>(&entry.value)
                {
                    out.insert(rider_of(&entry.key), Claim { revision: entry.revision, ..c });
                }
                if entry.delta == 0 {
                    return true;
                }
            }
            false
        };
        let done = tokio::time::timeout(std::time::Duration::from_secs(3), read).await.unwrap_or(false);
        done.then_some(out)
    }

    /// On taking `region`: its keys become this node's for the riders whose tasks were rebuilt
    /// here (`kept`); its other keys go (tasks that ended or were never committed while the
    /// region changed owner).
    pub async fn take_region(&self, region: &str, kept: &HashSet<String>) {
        for rider in kept {
            self.adopt(rider, region).await;
        }
        let Some(all) = self.read_all().await else {
            tracing::warn!(region, "could not read the riders' claims; the round's sweep will catch up");
            return;
        };
        for (rider, claim) in all {
            if claim.region == region && !kept.contains(&rider) {
                tracing::info!(%rider, region, node = %claim.node, "released a rider whose task ended between owners");
                self.delete(&rider, claim.revision).await;
            }
        }
    }

    /// Deletes the keys of nodes that are gone (crashed, or left) in regions this node holds.
    pub async fn sweep(&self, live: &HashSet<&str>, holds: impl Fn(&str) -> bool) {
        let stale: Vec<(String, u64, String)> = self
            .seen
            .read()
            .expect("claims lock")
            .iter()
            .filter(|(_, c)| holds(&c.region) && !live.contains(c.node.as_str()))
            .map(|(r, c)| (r.clone(), c.revision, c.node.clone()))
            .collect();
        for (rider, revision, node) in stale {
            tracing::info!(rider, node, "released a rider claimed by a node that is gone");
            self.delete(&rider, revision).await;
        }
    }

    /// Follows the bucket until `stop`: every key's current value, then every change. Watches
    /// again (from the current values) when the watch ends, e.g. after NATS restarted.
    pub async fn watch(&self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            match self.kv.watch_with_history(">").await {
                Ok(mut entries) => {
                    // The current values come first (a moment with an incomplete picture costs
                    // at most a claim that fails).
                    self.seen.write().expect("claims lock").clear();
                    loop {
                        let entry = tokio::select! {
                            e = entries.next() => e,
                            _ = stop.changed() => return,
                        };
                        let Some(Ok(entry)) = entry else { break };
                        let rider = rider_of(&entry.key);
                        let claim = (entry.operation == kv::Operation::Put)
                            .then(|| serde_json::from_slice::<Claim>(&entry.value).ok())
                            .flatten();
                        let mut seen = self.seen.write().expect("claims lock");
                        match claim {
                            Some(c) => {
                                seen.insert(rider, Claim { revision: entry.revision, ..c });
                            }
                            None => {
                                if seen.get(&rider).is_some_and(|c| c.revision <= entry.revision) {
                                    seen.remove(&rider);
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch the riders' claims"),
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

impl crate::dispatch::RiderArbiter for super::Cluster {
    fn usable(&self, rider: &crate::model::Rider) -> Usable {
        if rider.task.is_some() {
            return Usable::Home;
        }
        if self.claims.held_elsewhere(&rider.id) {
            return Usable::No;
        }
        let home = rider.store_id.as_deref().and_then(|s| self.region_of_store(s));
        if home.is_some_and(|region| self.holds(&region)) { Usable::Home } else { Usable::Border }
    }

    fn border_m(&self) -> f64 {
        self.border_m
    }

    fn claim<'a>(&'a self, rider: &'a str, store_id: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            match self.region_of_store(store_id) {
                Some(region) => self.claims.claim(rider, &region).await,
                None => false,
            }
        })
    }

    fn release<'a>(&'a self, rider: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.claims.release(rider))
    }

    fn release_idle<'a>(&'a self, riders: &'a crate::riders::Riders) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let has_task = |r: &str| riders.get(r).is_some_and(|x| x.task.is_some());
            self.claims.release_idle(has_task, |region| self.has_region(region)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_one_to_one() {
        for id in ["r-1", "r.1", "a_b.c-d", "r..x", ".r."] {
            assert_eq!(rider_of(&key_of(id)), id);
            assert!(!key_of(id).contains('.'));
        }
    }
}
