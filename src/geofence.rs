//! Arrival by geofence: from a busy rider's positions, when it enters and leaves its store (the
//! task's pickup) and the door of each order it carries.
//!
//! A fence is entered within `radius_m` and left beyond 1.5 × `radius_m` (the gap keeps GPS noise
//! at the edge from flapping). The store's fence counts while the task has orders to pick up; a
//! door's while its order is picked up and on the task. Each entry and exit is told as a
//! `Change::Arrival` (the publisher puts it on the orders' and the store's feeds; the promises
//! time the store hand-over from it). State is per rider and task, in memory: a restart begins
//! again from the next position. Runs under the rider's entry lock: never calls into `Riders`.

use std::sync::Mutex;

use darkstore_geoinv::Millis;
use darkstore_geoinv::travel::distance_m;

use crate::changes::{Arrival, Change, Changes, Observer, Place};
use crate::model::Rider;

type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

#[derive(Debug, Default)]
struct Fences {
    task_id: String,
    at_store: bool,
    /// The order whose door the rider is at.
    at_door: Option<String>,
}

pub struct Geofences {
    radius_m: f64,
    riders: Mutex<FastMap<String, Fences>>,
}

impl Geofences {
    pub fn new(radius_m: f64) -> Geofences {
        Geofences { radius_m: radius_m.max(1.0), riders: Mutex::new(FastMap::default()) }
    }

    /// What crossing a fence this position makes, if any, as (place, order ids, entered).
    fn crossings(&self, rider: &Rider) -> Vec<(Place, Vec<String>, bool)> {
        let (Some(task), Some(pos)) = (&rider.task, rider.pos) else {
            self.riders.lock().expect("fences lock").remove(&rider.id);
            return Vec::new();
        };
        let (enter, leave) = (self.radius_m, self.radius_m * 1.5);
        let mut riders = self.riders.lock().expect("fences lock");
        let f = riders.entry(rider.id.clone()).or_default();
        if f.task_id != task.id {
            *f = Fences { task_id: task.id.clone(), ..Fences::default() };
        }
        let mut out = Vec::new();
        let unpicked: Vec<String> =
            task.order_ids().filter(|id| !task.picked.iter().any(|p| p == id)).map(str::to_owned).collect();
        let d_store = distance_m(pos.0, pos.1, task.pickup.0, task.pickup.1);
        if !f.at_store && !unpicked.is_empty() && d_store <= enter {
            f.at_store = true;
            out.push((Place::Store, unpicked, true));
        } else if f.at_store && d_store > leave {
            f.at_store = false;
            out.push((Place::Store, task.order_ids().map(str::to_owned).collect(), false));
        }
        if let Some(id) = f.at_door.clone() {
            let left = match task.orders.iter().find(|o| o.id == id) {
                Some(o) => distance_m(pos.0, pos.1, o.lat, o.lng) > leave,
                None => true,
            };
            if left {
                f.at_door = None;
                out.push((Place::Door, vec![id], false));
            }
        }
        if f.at_door.is_none() {
            let near = task
                .orders
                .iter()
                .filter(|o| task.picked.contains(&o.id))
                .map(|o| (o, distance_m(pos.0, pos.1, o.lat, o.lng)))
                .filter(|(_, d)| *d <= enter)
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((o, _)) = near {
                f.at_door = Some(o.id.clone());
                out.push((Place::Door, vec![o.id.clone()], true));
            }
        }
        out
    }
}

impl Observer for Geofences {
    fn observe(&self, change: &Change<'_>, hub: &Changes) {
        let Change::Rider { rider } = change else { return };
        let crossings = self.crossings(rider);
        if crossings.is_empty() {
            return;
        }
        let Some(task) = &rider.task else { return };
        // The rider's own clock dates the fix.
        let at: Millis = rider.ts;
        for (place, orders, entered) in crossings {
            hub.emit(&Change::Arrival(Arrival {
                rider: &rider.id,
                rider_task: &task.id,
                store_id: &task.store_id,
                orders: &orders,
                place,
                entered,
                at,
            }));
        }
    }
}
