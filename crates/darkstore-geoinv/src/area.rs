//! Service areas: which dark stores reach which H3 cells within the promise.
//!
//! Every store covers the resolution-9 cells (about 0.1 km², 174 m edge) that a rider can reach
//! within the promise under the [`TravelModel`], widened by one cell edge so that no point of a
//! cell on the border is missed. The map from cell to candidate stores is only a filter: the best
//! store for a point is decided on the point's exact distance to each candidate.
//!
//! The map is partitioned by a coarse parent cell ([`PARTITION_RESOLUTION`], about 250 km² a
//! partition). A partition holds everything needed to answer for the points inside it, so a
//! partition can later be served by another machine; [`PartitionKey`] is that unit.

use std::collections::HashMap;

use h3o::{CellIndex, LatLng, Resolution};

use crate::travel::{TravelModel, distance_m};

/// Resolution of the cells stores cover.
pub const CELL_RESOLUTION: Resolution = Resolution::Nine;
/// Resolution of the parent cell that partitions the map.
pub const PARTITION_RESOLUTION: Resolution = Resolution::Five;

/// Index of a store in the map: dense, stable for the life of the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreIdx(pub u32);

/// The unit of partitioning: a coarse H3 parent cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionKey(pub CellIndex);

impl PartitionKey {
    /// The partition a fine cell belongs to.
    pub fn of(cell: CellIndex) -> PartitionKey {
        // A parent at a coarser resolution always exists.
        PartitionKey(cell.parent(PARTITION_RESOLUTION).unwrap_or(cell))
    }
}

/// A store as the map knows it.
#[derive(Debug, Clone)]
pub struct StoreSite {
    pub id: String,
    pub lat: f64,
    pub lng: f64,
    /// The cell the store itself stands in.
    pub cell: CellIndex,
}

/// The cells one partition covers and the stores that may reach each.
#[derive(Debug, Default)]
pub struct Partition {
    cells: HashMap<CellIndex, Vec<StoreIdx>>,
}

impl Partition {
    pub fn n_cells(&self) -> usize {
        self.cells.len()
    }
}

/// The store chosen for a point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Serving {
    pub store: StoreIdx,
    /// Great-circle distance from the store to the point.
    pub distance_m: f64,
    /// Predicted minutes from confirmation to the door.
    pub eta_minutes: f64,
}

/// Error for coordinates outside WGS84 ranges or not finite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPoint;

/// The service-area map of all stores.
#[derive(Debug)]
pub struct ServiceAreaMap {
    model: TravelModel,
    stores: Vec<StoreSite>,
    by_id: HashMap<String, StoreIdx>,
    /// Cells each store covers, to undo them when a store moves.
    covered: Vec<Vec<CellIndex>>,
    partitions: HashMap<PartitionKey, Partition>,
}

/// The H3 cell of a point at the map's resolution.
pub fn cell_of(lat: f64, lng: f64) -> Result<CellIndex, InvalidPoint> {
    if !crate::travel::valid_coordinates(lat, lng) {
        return Err(InvalidPoint);
    }
    LatLng::new(lat, lng).map(|p| p.to_cell(CELL_RESOLUTION)).map_err(|_| InvalidPoint)
}

impl ServiceAreaMap {
    pub fn new(model: TravelModel) -> ServiceAreaMap {
        ServiceAreaMap {
            model,
            stores: Vec::new(),
            by_id: HashMap::new(),
            covered: Vec::new(),
            partitions: HashMap::new(),
        }
    }

    pub fn model(&self) -> &TravelModel {
        &self.model
    }

    pub fn n_stores(&self) -> usize {
        self.stores.len()
    }

    pub fn store(&self, idx: StoreIdx) -> &StoreSite {
        &self.stores[idx.0 as usize]
    }

    pub fn store_idx(&self, id: &str) -> Option<StoreIdx> {
        self.by_id.get(id).copied()
    }

    pub fn partitions(&self) -> impl Iterator<Item = (&PartitionKey, &Partition)> {
        self.partitions.iter()
    }

    /// The cells a store covers.
    pub fn cells_of(&self, idx: StoreIdx) -> &[CellIndex] {
        &self.covered[idx.0 as usize]
    }

    /// Adds a store, or moves an existing one, and recomputes the cells it covers.
    pub fn upsert_store(&mut self, id: &str, lat: f64, lng: f64) -> Result<StoreIdx, InvalidPoint> {
        let cell = cell_of(lat, lng)?;
        let idx = match self.by_id.get(id) {
            Some(&idx) => {
                self.uncover(idx);
                self.stores[idx.0 as usize] = StoreSite { id: id.to_owned(), lat, lng, cell };
                idx
            }
            None => {
                let idx = StoreIdx(self.stores.len() as u32);
                self.stores.push(StoreSite { id: id.to_owned(), lat, lng, cell });
                self.covered.push(Vec::new());
                self.by_id.insert(id.to_owned(), idx);
                idx
            }
        };
        self.cover(idx);
        Ok(idx)
    }

    fn uncover(&mut self, idx: StoreIdx) {
        for cell in std::mem::take(&mut self.covered[idx.0 as usize]) {
            let key = PartitionKey::of(cell);
            if let Some(partition) = self.partitions.get_mut(&key) {
                if let Some(stores) = partition.cells.get_mut(&cell) {
                    stores.retain(|s| *s != idx);
                    if stores.is_empty() {
                        partition.cells.remove(&cell);
                    }
                }
                if partition.cells.is_empty() {
                    self.partitions.remove(&key);
                }
            }
        }
    }

    fn cover(&mut self, idx: StoreIdx) {
        let site = &self.stores[idx.0 as usize];
        let reach = self.model.reach_m();
        let edge = CELL_RESOLUTION.edge_length_m();
        // Neighbouring cell centres are √3 edges apart; one ring more covers the border.
        let k = ((reach + edge) / (edge * 3f64.sqrt())).ceil() as u32 + 1;
        let mut covered = Vec::new();
        for cell in site.cell.grid_disk::<Vec<_>>(k) {
            let centre = LatLng::from(cell);
            // A cell's circumradius is its edge length: keep cells any point of which may be in reach.
            if distance_m(site.lat, site.lng, centre.lat(), centre.lng()) <= reach + edge {
                covered.push(cell);
            }
        }
        for &cell in &covered {
            let partition = self.partitions.entry(PartitionKey::of(cell)).or_default();
            partition.cells.entry(cell).or_default().push(idx);
        }
        self.covered[idx.0 as usize] = covered;
    }

    /// The candidate stores for a cell (a superset of those that can serve points in it).
    pub fn candidates(&self, cell: CellIndex) -> &[StoreIdx] {
        self.partitions.get(&PartitionKey::of(cell)).and_then(|p| p.cells.get(&cell)).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The fastest store that reaches (lat, lng) within the promise, if any.
    pub fn best_store(&self, lat: f64, lng: f64) -> Result<Option<Serving>, InvalidPoint> {
        self.best_store_where(lat, lng, |_| true)
    }

    /// The fastest store that reaches (lat, lng) within the promise among those `allowed` accepts
    /// (e.g. the ones open now), if any.
    pub fn best_store_where(
        &self,
        lat: f64,
        lng: f64,
        allowed: impl Fn(StoreIdx) -> bool,
    ) -> Result<Option<Serving>, InvalidPoint> {
        let cell = cell_of(lat, lng)?;
        let mut best: Option<Serving> = None;
        for &idx in self.candidates(cell) {
            if !allowed(idx) {
                continue;
            }
            let site = &self.stores[idx.0 as usize];
            let d = distance_m(site.lat, site.lng, lat, lng);
            let eta = self.model.eta_minutes(d);
            if eta > self.model.promise_minutes {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => eta < b.eta_minutes || (eta == b.eta_minutes && idx < b.store),
            };
            if better {
                best = Some(Serving { store: idx, distance_m: d, eta_minutes: eta });
            }
        }
        Ok(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::travel::TravelModel;

    // Bengaluru, Indiranagar and Koramangala: about 3.6 km apart.
    const INDIRANAGAR: (f64, f64) = (12.9719, 77.6412);
    const KORAMANGALA: (f64, f64) = (12.9352, 77.6245);

    fn offset(p: (f64, f64), north_m: f64, east_m: f64) -> (f64, f64) {
        let dlat = north_m / 111_195.0;
        let dlng = east_m / (111_195.0 * p.0.to_radians().cos());
        (p.0 + dlat, p.1 + dlng)
    }

    fn two_store_map() -> ServiceAreaMap {
        let mut map = ServiceAreaMap::new(TravelModel::default());
        map.upsert_store("indiranagar", INDIRANAGAR.0, INDIRANAGAR.1).unwrap();
        map.upsert_store("koramangala", KORAMANGALA.0, KORAMANGALA.1).unwrap();
        map
    }

    #[test]
    fn best_store_table() {
        let map = two_store_map();
        let reach = map.model().reach_m();
        // (description, point, expected store id or None)
        let cases: Vec<(&str, (f64, f64), Option<&str>)> = vec![
            ("at the store", INDIRANAGAR, Some("indiranagar")),
            ("500 m north of Indiranagar", offset(INDIRANAGAR, 500.0, 0.0), Some("indiranagar")),
            ("500 m south of Koramangala", offset(KORAMANGALA, -500.0, 0.0), Some("koramangala")),
            ("just inside the reach", offset(KORAMANGALA, 0.0, -(reach - 5.0)), Some("koramangala")),
            ("just outside the reach", offset(KORAMANGALA, 0.0, -(reach + 5.0)), None),
            ("far away (Mumbai)", (19.0760, 72.8777), None),
        ];
        for (what, (lat, lng), expected) in cases {
            let got = map.best_store(lat, lng).unwrap().map(|s| map.store(s.store).id.clone());
            assert_eq!(got.as_deref(), expected, "{what}");
        }
    }

    #[test]
    fn the_fastest_store_wins_where_areas_overlap() {
        let mut map = ServiceAreaMap::new(TravelModel::default());
        let east = offset(INDIRANAGAR, 0.0, 2000.0);
        map.upsert_store("west", INDIRANAGAR.0, INDIRANAGAR.1).unwrap();
        map.upsert_store("east", east.0, east.1).unwrap();
        // (metres east of the west store, expected store): both reach every point between them.
        for (east_m, expected) in [(800.0, "west"), (999.0, "west"), (1001.0, "east"), (1200.0, "east")] {
            let p = offset(INDIRANAGAR, 0.0, east_m);
            let serving = map.best_store(p.0, p.1).unwrap().unwrap();
            assert_eq!(map.store(serving.store).id, expected, "{east_m} m east");
            assert!(serving.eta_minutes <= map.model().promise_minutes);
            assert_eq!(map.candidates(cell_of(p.0, p.1).unwrap()).len(), 2, "{east_m} m east");
        }
    }

    #[test]
    fn every_point_in_reach_is_covered() {
        // Sample a ring of points just inside the reach: the cell filter must never miss one.
        let map = two_store_map();
        let reach = map.model().reach_m() - 1.0;
        for i in 0..360 {
            let a = (i as f64).to_radians();
            let (lat, lng) = offset(INDIRANAGAR, reach * a.cos(), reach * a.sin());
            let s = map.best_store(lat, lng).unwrap();
            assert!(s.is_some(), "bearing {i}: not served");
        }
    }

    #[test]
    fn moving_a_store_moves_its_area() {
        let mut map = two_store_map();
        let near_old = offset(INDIRANAGAR, 300.0, 0.0);
        assert!(map.best_store(near_old.0, near_old.1).unwrap().is_some());
        map.upsert_store("indiranagar", 19.0760, 72.8777).unwrap();
        let got = map.best_store(near_old.0, near_old.1).unwrap().map(|s| map.store(s.store).id.clone());
        assert_eq!(got, None);
        assert_eq!(map.n_stores(), 2);
    }

    #[test]
    fn invalid_points_are_errors() {
        let map = two_store_map();
        for (lat, lng) in [(91.0, 0.0), (0.0, 181.0), (f64::NAN, 0.0)] {
            assert_eq!(map.best_store(lat, lng), Err(InvalidPoint));
        }
    }

    #[test]
    fn partition_key_is_the_coarse_parent() {
        let cell = cell_of(INDIRANAGAR.0, INDIRANAGAR.1).unwrap();
        let key = PartitionKey::of(cell);
        assert_eq!(key.0.resolution(), PARTITION_RESOLUTION);
        let map = two_store_map();
        let total: usize = map.partitions().map(|(_, p)| p.n_cells()).sum();
        assert!(total > 100, "two stores cover {total} cells");
    }
}
