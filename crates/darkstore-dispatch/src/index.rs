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

use rstar::{AABB, ParentNode, PointDistance, RTree, RTreeNode, RTreeObject};

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
            nearest_in(p.tree.root(), &point, n, &mut found);
        }
        found.into_iter().map(|(_, r)| r).collect()
    }
}

/// Branch and bound over one tree: children nearest first, skipping every subtree whose box is
/// farther than the n-th rider found so far. `found` stays sorted by (distance², rider) and holds
/// at most `n`. No allocation: the children of a node (at most six with rstar's default
/// parameters) are ordered in a small array on the stack.
fn nearest_in(node: &ParentNode<Entry>, p: &[f64; 2], n: usize, found: &mut Vec<(f64, u32)>) {
    const MAX_CHILDREN: usize = 16;
    let children = node.children();
    let mut order = [(0.0_f64, 0_usize); MAX_CHILDREN];
    let m = children.len().min(MAX_CHILDREN);
    for (i, child) in children.iter().take(m).enumerate() {
        order[i] = (distance_2(child, p), i);
    }
    order[..m].sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    // Nodes wider than the array (not with the default parameters) are visited in stored order.
    let rest = children.iter().enumerate().skip(m).map(|(i, c)| (distance_2(c, p), i));
    for (d, i) in order[..m].iter().copied().chain(rest) {
        // Equal distances are still visited: ties go to the lower rider id.
        if n == 0 || found.len() == n && found[n - 1].0 < d {
            if i < m {
                break;
            }
            continue;
        }
        match &children[i] {
            RTreeNode::Leaf(e) => {
                let key = (d, e.rider);
                if found.len() < n || key < found[n - 1] {
                    let at = found.partition_point(|f| *f < key);
                    found.insert(at, key);
                    found.truncate(n);
                }
            }
            RTreeNode::Parent(q) => nearest_in(q, p, n, found),
        }
    }
}

fn distance_2(node: &RTreeNode<Entry>, p: &[f64; 2]) -> f64 {
    match node {
        RTreeNode::Leaf(e) => e.distance_2(p),
        RTreeNode::Parent(q) => q.envelope().distance_2(p),
    }
}

#[cfg(test)]
mod tests {
    use super::RiderIndex;

    /// Against a brute-force scan: random riders over a few partitions, random points and sizes,
    /// ties included (riders on a coarse grid).
    #[test]
    fn nearest_matches_brute_force() {
        let mut seed = 0x2545f4914f6cdd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut index: RiderIndex<u8> = RiderIndex::new();
        let mut at = std::collections::HashMap::new();
        for rider in 0..3000_u32 {
            let (x, y) = ((next() % 200) as f64 * 0.5, (next() % 200) as f64 * 0.5);
            let key = (next() % 4) as u8;
            index.upsert(rider, key, x, y);
            at.insert(rider, (key, x, y));
        }
        for _ in 0..300 {
            let (x, y) = ((next() % 1000) as f64 * 0.1, (next() % 1000) as f64 * 0.1);
            let n = (next() % 25) as usize;
            let keys: Vec<u8> = (0..4).filter(|_| next() % 3 > 0).collect();
            let mut all: Vec<(f64, u32)> = at
                .iter()
                .filter(|(_, (k, _, _))| keys.contains(k))
                .map(|(&r, &(_, rx, ry))| ((rx - x).powi(2) + (ry - y).powi(2), r))
                .collect();
            all.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let expected: Vec<u32> = all.iter().take(n).map(|&(_, r)| r).collect();
            assert_eq!(index.nearest(&keys, x, y, n), expected, "keys {keys:?} point ({x}, {y}) n {n}");
        }
    }

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
