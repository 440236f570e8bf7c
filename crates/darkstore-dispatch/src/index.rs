//! A live spatial index of riders, partitioned by a caller-chosen key (the server uses the coarse
//! H3 parent cell of the geo-inventory).
//!
//! Position updates are the hottest writes of the server, so they only overwrite a slot and mark
//! the partition dirty; a partition's R-tree is rebuilt by bulk load on the next query that needs
//! it. Rebuilding costs O(n log n) for the partition, at most once per query burst (a dispatch
//! tick), while updates stay O(1).

use std::collections::HashMap;
use std::hash::Hash;

type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

use rstar::{AABB, PointDistance, RTree, RTreeObject};

#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    rider: u32,
    at: [f64; 2],
}

impl RTreeObject for Entry {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        AABB::from_point(self.at)
    }
}

impl PointDistance for Entry {
    fn distance_2(&self, p: &[f64; 2]) -> f64 {
        (self.at[0] - p[0]).powi(2) + (self.at[1] - p[1]).powi(2)
    }
}

#[derive(Debug, Default)]
struct Partition {
    /// rider → position
    slots: FastMap<u32, [f64; 2]>,
    tree: RTree<Entry>,
    dirty: bool,
}

impl Partition {
    fn fresh_tree(&mut self) -> &RTree<Entry> {
        if self.dirty {
            self.tree = RTree::bulk_load(self.slots.iter().map(|(&rider, &at)| Entry { rider, at }).collect());
            self.dirty = false;
        }
        &self.tree
    }
}

/// Riders by position, partitioned by `K`. Riders are dense `u32` ids chosen by the caller.
#[derive(Debug)]
pub struct RiderIndex<K> {
    partitions: FastMap<K, Partition>,
    /// rider → its partition
    where_is: FastMap<u32, K>,
}

impl<K: Hash + Eq + Copy> Default for RiderIndex<K> {
    fn default() -> Self {
        RiderIndex { partitions: FastMap::default(), where_is: FastMap::default() }
    }
}

impl<K: Hash + Eq + Copy> RiderIndex<K> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.where_is.len()
    }

    pub fn is_empty(&self) -> bool {
        self.where_is.is_empty()
    }

    /// Puts `rider` at (x, y) in partition `key`, moving it from wherever it was.
    pub fn upsert(&mut self, rider: u32, key: K, x: f64, y: f64) {
        match self.where_is.get(&rider) {
            Some(old) if *old == key => {}
            Some(old) => {
                let old = *old;
                self.remove_from(rider, old);
                self.where_is.insert(rider, key);
            }
            None => {
                self.where_is.insert(rider, key);
            }
        }
        let p = self.partitions.entry(key).or_default();
        p.slots.insert(rider, [x, y]);
        p.dirty = true;
    }

    /// Takes `rider` out of the index (off shift, busy, or silent).
    pub fn remove(&mut self, rider: u32) {
        if let Some(key) = self.where_is.remove(&rider) {
            self.remove_from(rider, key);
        }
    }

    fn remove_from(&mut self, rider: u32, key: K) {
        if let Some(p) = self.partitions.get_mut(&key) {
            p.slots.remove(&rider);
            p.dirty = true;
            if p.slots.is_empty() {
                self.partitions.remove(&key);
            }
        }
    }

    /// Riders of the given partitions, with positions.
    pub fn riders_in(&self, keys: &[K]) -> Vec<(u32, [f64; 2])> {
        keys.iter()
            .filter_map(|k| self.partitions.get(k))
            .flat_map(|p| p.slots.iter().map(|(&r, &at)| (r, at)))
            .collect()
    }

    /// The `n` riders nearest to (x, y) within the given partitions, nearest first (planar
    /// distance in the coordinates given, which is what candidate selection needs). Partitions
    /// are searched nearest first, and one whose bounding box is farther than the n-th rider found
    /// so far is skipped.
    pub fn nearest(&mut self, keys: &[K], x: f64, y: f64, n: usize) -> Vec<u32> {
        let point = [x, y];
        let mut parts: Vec<(f64, K)> = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(p) = self.partitions.get_mut(k) {
                let d = p.fresh_tree().root().envelope().distance_2(&point);
                parts.push((d, *k));
            }
        }
        parts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut found: Vec<(f64, u32)> = Vec::with_capacity(n + 1);
        for (box_distance, k) in parts {
            if found.len() == n && found.last().is_some_and(|f| f.0 < box_distance) {
                break;
            }
            let Some(p) = self.partitions.get(&k) else { continue };
            for e in p.tree.nearest_neighbor_iter(&point).take(n) {
                let d = e.distance_2(&point);
                if found.len() == n && found.last().is_some_and(|f| f.0 <= d) {
                    break;
                }
                let at = found.partition_point(|f| (f.0, f.1) < (d, e.rider));
                found.insert(at, (d, e.rider));
                found.truncate(n);
            }
        }
        found.into_iter().map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::RiderIndex;

    #[test]
    fn updates_moves_and_queries() {
        let mut index: RiderIndex<u8> = RiderIndex::new();
        index.upsert(1, 0, 0.0, 0.0);
        index.upsert(2, 0, 5.0, 0.0);
        index.upsert(3, 1, 1.0, 0.0);
        // (partitions, point, n, expected nearest first)
        type Case = (Vec<u8>, (f64, f64), usize, Vec<u32>);
        let cases: Vec<Case> = vec![
            (vec![0], (0.9, 0.0), 2, vec![1, 2]),
            (vec![0, 1], (0.9, 0.0), 2, vec![3, 1]),
            (vec![1], (100.0, 0.0), 5, vec![3]),
            (vec![7], (0.0, 0.0), 5, vec![]),
        ];
        for (keys, (x, y), n, expected) in &cases {
            assert_eq!(index.nearest(keys, *x, *y, *n), *expected, "{keys:?} ({x}, {y})");
        }
        // Rider 1 moves to partition 1, far away; rider 2 leaves.
        index.upsert(1, 1, 50.0, 0.0);
        index.remove(2);
        assert_eq!(index.nearest(&[0, 1], 0.0, 0.0, 5), vec![3, 1]);
        assert_eq!(index.len(), 2);
        assert_eq!(index.riders_in(&[0]), vec![]);
    }
}
