//! Riders as they are right now: position, shift, status and task, and the spatial index of the
//! riders who can take work.
//!
//! Position updates are the hottest write path of the server: each is a JSON parse, a few checks,
//! a write into the rider's slot and an O(1) write into the index (see
//! `darkstore_dispatch::index`). Nothing here touches the database: a rider's position and shift
//! are live state, lost on restart and re-sent by the rider within seconds. Order transitions that
//! riders cause go through `State::transition` and are durable.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use darkstore_dispatch::index::RiderIndex;
use darkstore_geoinv::Millis;
use darkstore_geoinv::area::{PartitionKey, cell_of};
use darkstore_geoinv::travel::{distance_m, valid_coordinates};
use dashmap::DashMap;
use serde::Deserialize;

/// What a rider is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RiderStatus {
    Idle,
    ToStore,
    AtStore,
    Delivering,
}

impl RiderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RiderStatus::Idle => "idle",
            RiderStatus::ToStore => "to_store",
            RiderStatus::AtStore => "at_store",
            RiderStatus::Delivering => "delivering",
        }
    }
}

/// The work a rider has been given.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub store_id: String,
    /// Orders still on the task, in delivery sequence.
    pub orders: Vec<String>,
    /// Orders of the task already picked up.
    pub picked: Vec<String>,
    /// Predicted end of the task, and where.
    pub free_at: Millis,
    pub end: (f64, f64),
}

/// A registered rider's live state.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    /// Dense id, for the index.
    pub idx: u32,
    pub pos: Option<(f64, f64)>,
    /// The rider's own clock on its last position.
    pub ts: i64,
    /// Server time of the last message from the rider.
    pub seen_at: Millis,
    pub on_shift: bool,
    pub status: RiderStatus,
    pub task: Option<Task>,
    /// The index partition, and the position it was computed at: recomputed only after a move of
    /// about a kilometre (queries also search neighbouring partitions, so a rider just across a
    /// border is still found).
    part: Option<(PartitionKey, (f64, f64))>,
}

/// Why a message from a rider was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    Malformed,
    UnknownRider,
    /// Older than the last position (out of order).
    Stale,
    /// Out of range, from the future, or a physically impossible speed or jump.
    Implausible,
}

impl Drop {
    pub const ALL: [Drop; 4] = [Drop::Malformed, Drop::UnknownRider, Drop::Stale, Drop::Implausible];

    pub fn as_str(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::UnknownRider => "unknown_rider",
            Drop::Stale => "stale",
            Drop::Implausible => "implausible",
        }
    }
}

/// A position report (MQTT `riders/{id}/location` or HTTP).
#[derive(Debug, Clone, Deserialize)]
pub struct Location {
    pub lat: f64,
    pub lng: f64,
    pub ts: i64,
    #[serde(default)]
    pub speed_mps: Option<f64>,
    #[serde(default)]
    pub heading_deg: Option<f64>,
    #[serde(default)]
    pub accuracy_m: Option<f64>,
}

/// A shift change.
#[derive(Debug, Clone, Deserialize)]
pub struct Shift {
    pub on_shift: bool,
}

/// A rider event on an order.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    pub order_id: String,
    #[serde(default)]
    pub ts: Option<i64>,
}

/// Fastest plausible rider, metres per second (about 250 km/h: anything faster is a bad fix).
pub const MAX_SPEED_MPS: f64 = 70.0;
/// How far ahead of the server's clock a rider's timestamp may be.
pub const MAX_CLOCK_AHEAD_MS: i64 = 5 * 60_000;

#[derive(Debug, Default)]
pub struct FleetCounters {
    pub positions: AtomicU64,
    pub drops: [AtomicU64; Drop::ALL.len()],
    pub shed: AtomicU64,
    pub events: AtomicU64,
    pub events_ignored: AtomicU64,
}

pub struct Fleet {
    live: DashMap<String, Live, ahash::RandomState>,
    /// Dense index → rider id.
    names: Mutex<Vec<String>>,
    /// Riders who can take work now: on shift, idle, heard from recently.
    index: Mutex<RiderIndex<PartitionKey>>,
    pub silence_ms: Millis,
    pub counters: FleetCounters,
}

fn partition_of(lat: f64, lng: f64) -> Option<PartitionKey> {
    cell_of(lat, lng).ok().map(PartitionKey::of)
}

impl Fleet {
    pub fn new(silence_ms: Millis) -> Fleet {
        Fleet {
            live: DashMap::default(),
            names: Mutex::new(Vec::new()),
            index: Mutex::new(RiderIndex::new()),
            silence_ms,
            counters: FleetCounters::default(),
        }
    }

    pub fn count(&self, d: Drop) {
        self.counters.drops[d as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Makes a registered rider known (idempotent).
    pub fn register(&self, id: &str) {
        if self.live.contains_key(id) {
            return;
        }
        let mut names = self.names.lock().expect("names lock");
        let idx = names.len() as u32;
        if let dashmap::mapref::entry::Entry::Vacant(v) = self.live.entry(id.to_owned()) {
            names.push(id.to_owned());
            v.insert(Live {
                idx,
                pos: None,
                ts: i64::MIN,
                seen_at: 0,
                on_shift: false,
                status: RiderStatus::Idle,
                task: None,
                part: None,
            });
        }
    }

    pub fn get(&self, id: &str) -> Option<Live> {
        self.live.get(id).map(|l| l.clone())
    }

    pub fn n_indexed(&self) -> usize {
        self.index.lock().expect("index lock").len()
    }

    fn available(live: &Live, now: Millis, silence_ms: Millis) -> bool {
        live.on_shift && live.status == RiderStatus::Idle && live.pos.is_some() && now - live.seen_at <= silence_ms
    }

    /// Puts the rider in the index, or takes it out, as its state says.
    fn reindex(&self, live: &mut Live, now: Millis) {
        let available = Self::available(live, now, self.silence_ms);
        let key = match live.pos {
            Some((lat, lng)) if available => match live.part {
                Some((key, (plat, plng))) if (plat - lat).abs() < 0.01 && (plng - lng).abs() < 0.01 => Some(key),
                _ => {
                    let key = partition_of(lat, lng);
                    live.part = key.map(|k| (k, (lat, lng)));
                    key
                }
            },
            _ => None,
        };
        let mut index = self.index.lock().expect("index lock");
        match (key, live.pos) {
            (Some(key), Some((lat, lng))) => index.upsert(live.idx, key, lng, lat),
            _ => index.remove(live.idx),
        }
    }

    /// Applies a position report. `now` is the server's clock.
    pub fn location(&self, rider: &str, loc: &Location, now: Millis) -> Result<(), Drop> {
        if !valid_coordinates(loc.lat, loc.lng) || loc.ts > now + MAX_CLOCK_AHEAD_MS {
            return Err(Drop::Implausible);
        }
        if loc.speed_mps.is_some_and(|s| !s.is_finite() || !(0.0..=MAX_SPEED_MPS).contains(&s)) {
            return Err(Drop::Implausible);
        }
        let mut live = self.live.get_mut(rider).ok_or(Drop::UnknownRider)?;
        if loc.ts <= live.ts {
            return Err(Drop::Stale);
        }
        if let Some((lat, lng)) = live.pos {
            let seconds = (loc.ts - live.ts) as f64 / 1000.0;
            let metres = distance_m(lat, lng, loc.lat, loc.lng);
            // A jump is judged with a little slack for GPS noise.
            if metres > 200.0 && metres > MAX_SPEED_MPS * seconds {
                return Err(Drop::Implausible);
            }
        }
        live.pos = Some((loc.lat, loc.lng));
        live.ts = loc.ts;
        live.seen_at = now;
        self.reindex(&mut live, now);
        drop(live);
        self.counters.positions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Applies a shift change; returns the orders of a task the rider had not picked up yet, which
    /// must go back for reassignment when the rider goes off shift.
    pub fn shift(&self, rider: &str, on_shift: bool, now: Millis) -> Result<Vec<String>, Drop> {
        let mut live = self.live.get_mut(rider).ok_or(Drop::UnknownRider)?;
        live.on_shift = on_shift;
        live.seen_at = now;
        let handed_back = if on_shift { Vec::new() } else { Self::drop_unpicked(&mut live) };
        self.reindex(&mut live, now);
        Ok(handed_back)
    }

    /// Takes the not-yet-picked-up orders off a rider's task; the task ends if nothing is left.
    fn drop_unpicked(live: &mut Live) -> Vec<String> {
        let Some(task) = live.task.as_mut() else { return Vec::new() };
        let unpicked: Vec<String> = task.orders.iter().filter(|o| !task.picked.contains(o)).cloned().collect();
        task.orders.retain(|o| task.picked.contains(o));
        if task.orders.is_empty() {
            live.task = None;
            live.status = RiderStatus::Idle;
        }
        unpicked
    }

    /// Marks a rider heard from (any message counts).
    pub fn seen(&self, rider: &str, now: Millis) {
        if let Some(mut live) = self.live.get_mut(rider) {
            live.seen_at = now;
        }
    }

    /// Gives a task to an idle rider; false if the rider is no longer available.
    pub fn assign(&self, rider: &str, task: Task, now: Millis) -> bool {
        let Some(mut live) = self.live.get_mut(rider) else { return false };
        if !Self::available(&live, now, self.silence_ms) {
            return false;
        }
        live.task = Some(task);
        live.status = RiderStatus::ToStore;
        self.reindex(&mut live, now);
        true
    }

    /// Rebuilds, at start-up, a task from an order the database says the rider holds. The rider
    /// counts as just heard from, so if it never comes back the silence sweep hands the order back.
    pub fn restore(&self, rider: &str, order_id: &str, store_id: &str, picked_up: bool, now: Millis) {
        self.register(rider);
        let Some(mut live) = self.live.get_mut(rider) else { return };
        live.on_shift = true;
        live.seen_at = now;
        let task = live.task.get_or_insert_with(|| Task {
            id: format!("restored-{rider}"),
            store_id: store_id.to_owned(),
            orders: Vec::new(),
            picked: Vec::new(),
            free_at: now,
            end: (0.0, 0.0),
        });
        task.orders.push(order_id.to_owned());
        if picked_up {
            task.picked.push(order_id.to_owned());
        }
        live.status = if task.picked.is_empty() { RiderStatus::ToStore } else { RiderStatus::Delivering };
    }

    /// Removes one order from a rider's task (a failed assignment, a rejection, a cancellation);
    /// the rider is idle again when nothing is left.
    pub fn unassign(&self, rider: &str, order_id: &str, now: Millis) {
        let Some(mut live) = self.live.get_mut(rider) else { return };
        if let Some(task) = live.task.as_mut() {
            task.orders.retain(|o| o != order_id);
            task.picked.retain(|o| o != order_id);
            if task.orders.is_empty() {
                live.task = None;
                live.status = RiderStatus::Idle;
            }
        }
        self.reindex(&mut live, now);
    }

    /// Records an event's effect on the rider: arrival, pickup, delivery.
    pub fn progress(&self, rider: &str, kind: &str, order_id: &str, now: Millis) {
        let Some(mut live) = self.live.get_mut(rider) else { return };
        live.seen_at = now;
        match kind {
            "arrived_store" => live.status = RiderStatus::AtStore,
            "picked_up" => {
                if let Some(task) = live.task.as_mut()
                    && !task.picked.iter().any(|o| o == order_id)
                {
                    task.picked.push(order_id.to_owned());
                }
                live.status = RiderStatus::Delivering;
            }
            "delivered" => {
                if let Some(task) = live.task.as_mut() {
                    task.orders.retain(|o| o != order_id);
                    task.picked.retain(|o| o != order_id);
                    if task.orders.is_empty() {
                        live.task = None;
                        live.status = RiderStatus::Idle;
                    }
                }
            }
            _ => {}
        }
        self.reindex(&mut live, now);
    }

    /// Riders silent for longer than the silence limit: they leave the index, and the orders they
    /// had not picked up are returned for reassignment, as (rider, orders).
    pub fn sweep_silent(&self, now: Millis) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for mut entry in self.live.iter_mut() {
            let (id, live) = entry.pair_mut();
            if live.on_shift && now - live.seen_at > self.silence_ms {
                let unpicked = Self::drop_unpicked(live);
                if !unpicked.is_empty() {
                    out.push((id.clone(), unpicked));
                }
                self.index.lock().expect("index lock").remove(live.idx);
            }
        }
        out
    }

    /// Idle, available riders near the given partitions (each with its neighbours), and busy
    /// riders who will be free within `horizon_ms`: (rider id, position (lat, lng), free at).
    pub fn candidates(
        &self,
        partitions: &[PartitionKey],
        now: Millis,
        horizon_ms: Millis,
    ) -> Vec<(String, (f64, f64), Millis)> {
        let mut keys: Vec<PartitionKey> = Vec::new();
        for p in partitions {
            for cell in p.0.grid_disk::<Vec<_>>(1) {
                keys.push(PartitionKey(cell));
            }
        }
        keys.sort_by_key(|k| u64::from(k.0));
        keys.dedup();
        let idle = self.index.lock().expect("index lock").riders_in(&keys);
        let names = self.names.lock().expect("names lock").clone();
        let mut out: Vec<(String, (f64, f64), Millis)> = idle
            .into_iter()
            .filter_map(|(idx, at)| names.get(idx as usize).map(|n| (n.clone(), (at[1], at[0]), now)))
            .collect();
        for e in self.live.iter() {
            let l = e.value();
            if let Some(task) = &l.task
                && l.on_shift
                && now - l.seen_at <= self.silence_ms
                && task.free_at <= now + horizon_ms
            {
                out.push((e.key().clone(), task.end, task.free_at.max(now)));
            }
        }
        out
    }

    /// The `n` available riders nearest to (lat, lng), searching its partition and neighbours.
    pub fn nearest(&self, lat: f64, lng: f64, n: usize) -> Vec<String> {
        let Some(key) = partition_of(lat, lng) else { return Vec::new() };
        let keys: Vec<PartitionKey> = key.0.grid_disk::<Vec<_>>(1).into_iter().map(PartitionKey).collect();
        let found = self.index.lock().expect("index lock").nearest(&keys, lng, lat, n);
        let names = self.names.lock().expect("names lock");
        found.into_iter().filter_map(|i| names.get(i as usize).cloned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_800_000_000_000;

    fn loc(lat: f64, lng: f64, ts: i64) -> Location {
        Location { lat, lng, ts, speed_mps: None, heading_deg: None, accuracy_m: None }
    }

    #[test]
    fn position_checks_table() {
        let fleet = Fleet::new(30_000);
        fleet.register("r1");
        fleet.shift("r1", true, T0).unwrap();
        assert_eq!(fleet.location("r1", &loc(12.97, 77.64, T0), T0), Ok(()));
        // (what, rider, report, expected)
        let cases: Vec<(&str, &str, Location, Result<(), Drop>)> = vec![
            ("unknown rider", "ghost", loc(12.97, 77.64, T0 + 1000), Err(Drop::UnknownRider)),
            ("older than the last", "r1", loc(12.97, 77.64, T0 - 1), Err(Drop::Stale)),
            ("same timestamp", "r1", loc(12.97, 77.64, T0), Err(Drop::Stale)),
            ("latitude out of range", "r1", loc(91.0, 77.64, T0 + 1000), Err(Drop::Implausible)),
            ("NaN", "r1", loc(f64::NAN, 77.64, T0 + 1000), Err(Drop::Implausible)),
            ("an hour in the future", "r1", loc(12.97, 77.64, T0 + 3_600_000), Err(Drop::Implausible)),
            ("a 10 km jump in a second", "r1", loc(13.06, 77.64, T0 + 1000), Err(Drop::Implausible)),
            (
                "absurd reported speed",
                "r1",
                Location { speed_mps: Some(500.0), ..loc(12.97, 77.64, T0 + 1000) },
                Err(Drop::Implausible),
            ),
            ("10 m in a second", "r1", loc(12.97009, 77.64, T0 + 1000), Ok(())),
        ];
        for (what, rider, report, expected) in cases {
            assert_eq!(fleet.location(rider, &report, T0 + 1000), expected, "{what}");
        }
        assert_eq!(fleet.nearest(12.97, 77.64, 5), vec!["r1".to_owned()]);
    }

    #[test]
    fn only_idle_fresh_riders_on_shift_are_indexed() {
        let fleet = Fleet::new(30_000);
        for r in ["a", "b", "c"] {
            fleet.register(r);
            fleet.location(r, &loc(12.97, 77.64, T0), T0).unwrap();
        }
        assert!(fleet.nearest(12.97, 77.64, 5).is_empty(), "nobody is on shift");
        fleet.shift("a", true, T0).unwrap();
        fleet.shift("b", true, T0).unwrap();
        let task = Task {
            id: "t".into(),
            store_id: "s".into(),
            orders: vec!["o1".into()],
            picked: vec![],
            free_at: T0,
            end: (0.0, 0.0),
        };
        assert!(fleet.assign("b", task, T0));
        assert_eq!(fleet.nearest(12.97, 77.64, 5), vec!["a".to_owned()]);
        // b goes off shift before pickup: its order comes back; a falls silent.
        assert_eq!(fleet.shift("b", false, T0 + 1000).unwrap(), vec!["o1".to_owned()]);
        assert!(fleet.sweep_silent(T0 + 31_000).is_empty());
        assert!(fleet.nearest(12.97, 77.64, 5).is_empty());
    }

    #[test]
    fn picked_up_orders_stay_with_the_rider() {
        let fleet = Fleet::new(30_000);
        fleet.register("r");
        fleet.shift("r", true, T0).unwrap();
        fleet.location("r", &loc(12.97, 77.64, T0), T0).unwrap();
        let task = Task {
            id: "t".into(),
            store_id: "s".into(),
            orders: vec!["o1".into(), "o2".into()],
            picked: vec![],
            free_at: T0,
            end: (0.0, 0.0),
        };
        assert!(fleet.assign("r", task, T0));
        fleet.progress("r", "picked_up", "o1", T0 + 1);
        // Silent before picking up o2: only o2 goes back.
        let back = fleet.sweep_silent(T0 + 40_000);
        assert_eq!(back, vec![("r".to_owned(), vec!["o2".to_owned()])]);
        fleet.progress("r", "delivered", "o1", T0 + 50_000);
        assert_eq!(fleet.get("r").unwrap().status, RiderStatus::Idle);
    }
}
