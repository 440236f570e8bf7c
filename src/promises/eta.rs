//! Live ETA: on each position of a rider with a task (and right after an assignment or a pickup),
//! every order of the task gets `eta_at`: the rider to the store (or the optimizer's expected
//! arrival when its position is unknown; once inside the store's geofence, the time it entered),
//! no earlier than the orders are packed, the hand-over,
//! then the drops in sequence, each ride and hand-over scaled by the store's riding ratio. It is
//! told on the order's feed (`Change::Eta`) at assignment and pickup, and while the rider moves at
//! most every [`ETA_EVERY_MS`] and only when it moved by a second or more. The estimate at an
//! order's assignment is kept as its plan (what a bundle's slack is learned from).

use std::sync::Weak;
use std::sync::atomic::Ordering;

use darkstore_geoinv::Millis;

use super::Promises;
use crate::changes::{Change, Changes, EtaReason};
use crate::model::Rider;

/// The least time between two `eta` messages of an order while its rider moves.
pub const ETA_EVERY_MS: Millis = 5_000;

impl Promises {
    /// Live ETAs of a rider's task, told where due.
    pub(super) fn rider(&self, rider: &Rider, hub: &Changes) {
        let Some(task) = &rider.task else {
            if rider.pos.is_some() {
                self.fixes.lock().expect("fixes lock").remove(&rider.id);
            }
            return;
        };
        self.observe_speed(rider);
        let Some(first) = task.orders.first() else { return };
        let Some(now) = self.state.get().and_then(Weak::upgrade).map(|s| s.now()) else { return };
        let store_id = self.open.get(&first.id).map(|o| o.store_id.clone()).unwrap_or_else(|| task.store_id.clone());
        let f = self.calibrated(&store_id).ride;
        let scaled = |ms: Millis| (ms as f64 * f) as Millis;
        let handover = scaled(self.handover_ms);
        let unpicked: Vec<&str> = task.order_ids().filter(|id| !task.picked.iter().any(|p| p == id)).collect();
        let (mut t, mut pos) = (now, rider.pos.unwrap_or(task.pickup));
        if !unpicked.is_empty() {
            // At the store (by its fence): the hand-over counts from the arrival.
            let arrived = self
                .at_store
                .lock()
                .expect("at-store lock")
                .get(&rider.id)
                .filter(|(t, _)| *t == task.id)
                .map(|(_, at)| *at);
            let arrive = match (arrived, rider.pos) {
                (Some(at), _) => at.min(now),
                (None, Some(p)) => now.saturating_add(scaled(self.ride_prior(p, task.pickup))),
                (None, None) => task.pickup_eta.max(now),
            };
            let ready = unpicked.iter().filter_map(|id| self.ready_by(id)).max().unwrap_or(now);
            t = arrive.max(ready).saturating_add(handover);
            pos = task.pickup;
        }
        for (i, o) in task.orders.iter().enumerate() {
            t = t.saturating_add(scaled(self.ride_prior(pos, (o.lat, o.lng)))).saturating_add(handover);
            pos = (o.lat, o.lng);
            let Some(mut open) = self.open.get_mut(&o.id) else { continue };
            if !open.assigned {
                continue;
            }
            if open.in_task.1 == 0 {
                open.in_task = (i + 1, task.orders.len());
                open.planned_pickup_at.get_or_insert(task.pickup_eta);
            }
            open.eta_at = t;
            if open.pending == Some(EtaReason::Assigned) {
                open.planned_at = Some(t);
            }
            let reason = match (open.pending.take(), open.told) {
                (Some(r), _) => r,
                (None, Some((at, told))) if now - at >= ETA_EVERY_MS && (t - told).abs() >= 1000 => EtaReason::Moving,
                (None, None) => EtaReason::Moving,
                (None, Some(_)) => continue,
            };
            open.told = Some((now, t));
            let store_id = open.store_id.clone();
            let promised_by = open.promised_by;
            drop(open);
            self.counters.eta_messages.fetch_add(1, Ordering::Relaxed);
            hub.emit(&Change::Eta { order_id: &o.id, store_id: &store_id, eta_at: t, promised_by, reason });
        }
    }
}
