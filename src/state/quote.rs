//! Quotes: each store's load (what the dispatch tick saw: its picking queue, the orders waiting
//! for a rider, and when each of its riders can be back) and the quote for a point. The quote
//! itself is `darkstore_geoinv::quote`, a pure function; this keeps the snapshot it reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use darkstore_geoinv::Millis;
use darkstore_geoinv::quote::{Quote, StoreLoad, quote};
use darkstore_geoinv::travel::distance_m;

use super::{FastMap, State, Store};

/// A store's load as the last dispatch tick saw it, and the orders confirmed there since: each
/// joins the picking queue and the orders waiting for a rider, so orders placed between two ticks
/// are not all quoted as if they were the only one.
///
/// An order confirmed while the tick builds its loads may be counted in both or in neither, for
/// one tick at most.
#[derive(Debug, Default)]
pub struct LiveLoad {
    load: StoreLoad,
    confirmed_since: AtomicU32,
}

impl State {
    /// Replaces every store's load (the dispatch tick calls this once a tick).
    pub fn set_loads(&self, loads: FastMap<u32, StoreLoad>) {
        let loads = loads
            .into_iter()
            .map(|(k, load)| (k, Arc::new(LiveLoad { load, confirmed_since: AtomicU32::new(0) })))
            .collect();
        *self.loads.write().expect("loads lock") = loads;
    }

    /// One more order confirmed at a store since its load was taken.
    pub(super) fn confirmed_at(&self, store_idx: u32) {
        if let Some(live) = self.loads.read().expect("loads lock").get(&store_idx) {
            live.confirmed_since.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Riding time from (lat, lng) to (lat2, lng2) by the travel model, ms.
    pub fn ride_ms(&self, from: (f64, f64), to: (f64, f64)) -> Millis {
        (self.config.travel.ride_minutes(distance_m(from.0, from.1, to.0, to.1)) * 60_000.0) as Millis
    }

    /// The quote for an order placed now at `store` to (lat, lng).
    pub fn quote(&self, store: &Store, lat: f64, lng: f64) -> Quote {
        let ride = self.ride_ms((store.lat, store.lng), (lat, lng));
        let live = self.loads.read().expect("loads lock").get(&store.idx.0).cloned();
        let now = self.now();
        let Some(live) = live else { return quote(&StoreLoad::default(), ride, &self.config.quote, now) };
        match live.confirmed_since.load(Ordering::Relaxed) {
            0 => quote(&live.load, ride, &self.config.quote, now),
            n => {
                let mut load = live.load.clone();
                load.to_pick = load.to_pick.saturating_add(n);
                load.awaiting_rider = load.awaiting_rider.saturating_add(n);
                quote(&load, ride, &self.config.quote, now)
            }
        }
    }

    /// The delivery fee an order placed now at `store` pays, surge included.
    pub fn delivery_fee(&self, store: &Store) -> i64 {
        let loads = self.loads.read().expect("loads lock");
        loads.get(&store.idx.0).map_or(self.config.delivery_fee_minor, |l| l.load.delivery_fee_minor)
    }

    /// Whether a store with this quote takes orders: not past `--max-eta-minutes` when that is
    /// set (and, then, not without a rider at all).
    pub fn accepting(&self, q: &Quote) -> bool {
        match self.config.max_eta_minutes {
            Some(max) => !q.no_rider && (q.eta_ms as f64) <= max * 60_000.0,
            None => true,
        }
    }

    /// Whether the quote keeps the promise.
    pub fn within_promise(&self, q: &Quote) -> bool {
        !q.no_rider && q.eta_ms <= self.promise_ms()
    }
}
