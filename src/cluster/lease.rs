//! A region's lease: taking it (epoch first, then the load), renewing it, letting it go, and the
//! fences every commit carries while it is held.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Instant;

use darkstore_db::{DbError, Fencer, Write};

use super::{Cluster, Held};
use crate::state::State;

impl Cluster {
    pub(super) async fn acquire(
        &self,
        state: &Arc<State>,
        riders: &crate::riders::Riders,
        region: &str,
        stores: &[String],
    ) {
        let sent = Instant::now();
        let Ok(epoch) = self.leases.create(region, self.node_id.clone().into()).await else {
            return; // Held by another node until it hands off or its lease lapses.
        };
        // The epoch first, then the load: whatever the previous owner committed before this is
        // in what is loaded, and anything it tries after is refused.
        let fence = [Write::Fence { region: region.to_owned(), epoch: epoch as i64 }];
        if let Err(e) = state.db.write_batch(&fence).await {
            tracing::warn!(region, error = %e, "could not take the region's epoch; letting the lease go");
            let _ = self.leases.delete_expect_revision(region, Some(epoch)).await;
            return;
        }
        let snapshot = match state.db.load_since(state.history_since()).await {
            Ok(mut snap) => {
                let keep: HashSet<&str> = stores.iter().map(String::as_str).collect();
                snap.retain_stores(|s| keep.contains(s));
                snap
            }
            Err(e) => {
                tracing::warn!(region, error = %e, "could not load the region; letting the lease go");
                let _ = self.leases.delete_expect_revision(region, Some(epoch)).await;
                return;
            }
        };
        let orders = snapshot.orders.len();
        // Whatever this node still had of the region (from an earlier tenure) goes first.
        self.unload(state, riders, stores).await;
        state.load_region(snapshot);
        // The riders' tasks, from the orders they hold (as at start-up: counted as sent).
        let now = state.now();
        let mut kept = HashSet::new();
        for held in state.orders_with_riders().await {
            if stores.contains(&held.order.store_id) {
                let pickup =
                    state.store(&held.order.store_id).map_or((held.order.lat, held.order.lng), |s| (s.lat, s.lng));
                riders.restore_task(&held.rider_id, &held.order, held.picked_up, pickup, now);
                kept.insert(held.rider_id.clone());
            }
        }
        self.held.lock().expect("held lock").insert(region.to_owned(), Held { epoch, renewed: sent });
        // The riders of the rebuilt tasks are this node's to speak for and to let go.
        self.claims.take_region(region, &kept).await;
        tracing::info!(region, epoch, stores = stores.len(), orders, "took a region");
    }

    pub(super) async fn renew(
        &self,
        state: &Arc<State>,
        riders: &crate::riders::Riders,
        region: &str,
        held: Held,
        stores: &[String],
    ) {
        let sent = Instant::now();
        match self.leases.update(region, self.node_id.clone().into(), held.epoch).await {
            Ok(epoch) => {
                if let Some(h) = self.held.lock().expect("held lock").get_mut(region) {
                    *h = Held { epoch, renewed: sent };
                }
            }
            Err(e) => {
                tracing::warn!(region, error = %e, "lost a region's lease");
                self.forget(state, riders, region, stores).await;
            }
        }
    }

    pub(super) async fn release(
        &self,
        state: &Arc<State>,
        riders: &crate::riders::Riders,
        region: &str,
        held: Held,
        stores: &[String],
        why: &str,
    ) {
        // Stop committing first; then let the lease go, so the next owner's epoch fences any
        // commit still in flight.
        self.held.lock().expect("held lock").remove(region);
        let _ = self.leases.delete_expect_revision(region, Some(held.epoch)).await;
        self.forget(state, riders, region, stores).await;
        tracing::info!(region, why, "released a region");
    }

    pub(super) async fn forget(
        &self,
        state: &Arc<State>,
        riders: &crate::riders::Riders,
        region: &str,
        stores: &[String],
    ) {
        self.held.lock().expect("held lock").remove(region);
        self.unload(state, riders, stores).await;
    }

    /// Forgets the stock and orders of `stores`, and those orders in the riders' tasks.
    pub(super) async fn unload(&self, state: &Arc<State>, riders: &crate::riders::Riders, stores: &[String]) {
        let orders: HashSet<String> = state
            .orders_with_riders()
            .await
            .into_iter()
            .filter(|h| stores.contains(&h.order.store_id))
            .map(|h| h.order.id)
            .collect();
        riders.forget_orders(&orders, state.now());
        state.unload_stores(&stores.iter().cloned().collect()).await;
    }
}

impl Fencer for Cluster {
    fn fences(&self, writes: &[Write]) -> Result<Vec<Write>, DbError> {
        let mut regions = BTreeSet::new();
        for w in writes {
            if let Some(store) = w.store_id() {
                let region = self.region_of_store(store).ok_or_else(|| DbError::Fenced(format!("of store {store}")))?;
                regions.insert(region);
            }
        }
        let held = self.held.lock().expect("held lock");
        regions
            .into_iter()
            .map(|region| match held.get(&region) {
                Some(h) if h.renewed.elapsed() < self.trusted() => Ok(Write::Fence { region, epoch: h.epoch as i64 }),
                _ => Err(DbError::Fenced(region)),
            })
            .collect()
    }
}
