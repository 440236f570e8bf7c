//! The spatial index of riders who can take work, partitioned by the H3 parent cell: a thin
//! owner around `darkstore_dispatch::index::RiderIndex` that also maps its dense ids to names.

use std::sync::Mutex;

use darkstore_dispatch::index::RiderIndex;
pub(super) use darkstore_geoinv::area::PartitionKey;
use darkstore_geoinv::area::cell_of;

fn partition_of(lat: f64, lng: f64) -> Option<PartitionKey> {
    cell_of(lat, lng).ok().map(PartitionKey::of)
}

/// A partition and its neighbours (queries search them too, so a rider just across a border is
/// still found).
fn with_neighbours(keys: impl IntoIterator<Item = PartitionKey>) -> Vec<PartitionKey> {
    let mut out: Vec<PartitionKey> =
        keys.into_iter().flat_map(|p| p.0.grid_disk::<Vec<_>>(1)).map(PartitionKey).collect();
    out.sort_by_key(|k| u64::from(k.0));
    out.dedup();
    out
}

#[derive(Default)]
pub(super) struct Available {
    /// Dense id → rider id.
    names: Mutex<Vec<String>>,
    index: Mutex<RiderIndex<PartitionKey>>,
}

impl Available {
    /// A dense id for a new rider.
    pub fn new_id(&self, name: &str) -> u32 {
        let mut names = self.names.lock().expect("names lock");
        names.push(name.to_owned());
        (names.len() - 1) as u32
    }

    pub fn len(&self) -> usize {
        self.index.lock().expect("index lock").len()
    }

    /// Puts rider `idx` at `pos`, or takes it out (None). `part` memoizes its partition and the
    /// position it was computed at: recomputed only after a move of about a kilometre.
    pub fn place(&self, idx: u32, part: &mut Option<(PartitionKey, (f64, f64))>, pos: Option<(f64, f64)>) {
        let key = pos.and_then(|(lat, lng)| match *part {
            Some((key, (plat, plng))) if (plat - lat).abs() < 0.01 && (plng - lng).abs() < 0.01 => Some(key),
            _ => {
                let key = partition_of(lat, lng);
                *part = key.map(|k| (k, (lat, lng)));
                key
            }
        });
        let mut index = self.index.lock().expect("index lock");
        match (key, pos) {
            (Some(key), Some((lat, lng))) => index.upsert(idx, key, lng, lat),
            _ => index.remove(idx),
        }
    }

    /// Every indexed rider in the partitions of the given points and their neighbours:
    /// (rider id, (lat, lng)).
    pub fn around(&self, points: &[(f64, f64)]) -> Vec<(String, (f64, f64))> {
        let keys = with_neighbours(points.iter().filter_map(|&(lat, lng)| partition_of(lat, lng)));
        let found = self.index.lock().expect("index lock").riders_in(&keys);
        let names = self.names.lock().expect("names lock");
        found.into_iter().filter_map(|(idx, at)| Some((names.get(idx as usize)?.clone(), (at[1], at[0])))).collect()
    }

    /// The `n` indexed riders nearest to (lat, lng), searching its partition and neighbours.
    pub fn nearest(&self, lat: f64, lng: f64, n: usize) -> Vec<String> {
        let Some(key) = partition_of(lat, lng) else { return Vec::new() };
        let keys = with_neighbours([key]);
        let found = self.index.lock().expect("index lock").nearest(&keys, lng, lat, n);
        let names = self.names.lock().expect("names lock");
        found.into_iter().filter_map(|i| names.get(i as usize).cloned()).collect()
    }
}
