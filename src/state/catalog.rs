//! Stores (with their service areas) and the product catalog.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use darkstore_db::Write;
use darkstore_geoinv::area::{InvalidPoint, StoreIdx};
use darkstore_geoinv::stock::StoreStock;

use super::{PlaceError, State};
use crate::model::Product;

#[derive(Debug)]
pub struct Store {
    pub idx: StoreIdx,
    pub id: String,
    pub name: String,
    pub lat: f64,
    pub lng: f64,
    pub stock: Mutex<StoreStock>,
    /// Per SKU, whether it was last announced as available (for availability changes).
    pub(super) shown: Mutex<HashMap<Arc<str>, bool>>,
}

impl State {
    pub(super) fn put_store_in_memory(&self, id: &str, name: &str, lat: f64, lng: f64) -> Result<bool, InvalidPoint> {
        let mut area = self.area.write().expect("area lock");
        let idx = area.upsert_store(id, lat, lng)?;
        let mut stores = self.stores.write().expect("stores lock");
        let created = idx.0 as usize == stores.len();
        let (stock, shown) = match stores.get(idx.0 as usize) {
            // The stock stays with the store when it is renamed or moved.
            Some(old) => (
                std::mem::take(&mut *old.stock.lock().expect("stock lock")),
                std::mem::take(&mut *old.shown.lock().expect("shown lock")),
            ),
            None => (StoreStock::new(), HashMap::new()),
        };
        let store = Arc::new(Store {
            idx,
            id: id.to_owned(),
            name: name.to_owned(),
            lat,
            lng,
            stock: Mutex::new(stock),
            shown: Mutex::new(shown),
        });
        if created {
            stores.push(store);
        } else {
            stores[idx.0 as usize] = store;
        }
        Ok(created)
    }

    pub fn store(&self, id: &str) -> Option<Arc<Store>> {
        let idx = self.area.read().expect("area lock").store_idx(id)?;
        self.store_at(idx)
    }

    /// The store with this index.
    pub fn store_at(&self, idx: StoreIdx) -> Option<Arc<Store>> {
        self.stores.read().expect("stores lock").get(idx.0 as usize).cloned()
    }

    pub fn stores(&self) -> Vec<Arc<Store>> {
        self.stores.read().expect("stores lock").clone()
    }

    /// The H3 cells a store covers.
    pub fn store_cell_ids(&self, idx: StoreIdx) -> Vec<h3o::CellIndex> {
        self.area.read().expect("area lock").cells_of(idx).to_vec()
    }

    /// The number of H3 cells a store covers.
    pub fn store_cells(&self, idx: StoreIdx) -> usize {
        self.area.read().expect("area lock").cells_of(idx).len()
    }

    /// The store serving the centre of an H3 cell, if any.
    pub fn store_for_cell(&self, cell: h3o::CellIndex) -> Option<Arc<Store>> {
        let centre = h3o::LatLng::from(cell);
        let serving = self.area.read().expect("area lock").best_store(centre.lat(), centre.lng()).ok()??;
        self.store_at(serving.store)
    }

    /// Creates or updates a store; true when created.
    pub async fn put_store(&self, id: &str, name: &str, lat: f64, lng: f64) -> Result<bool, PlaceError> {
        let ts = self.now();
        self.committer
            .commit(vec![Write::Store { id: id.into(), name: name.into(), lat, lng, ts }])
            .await
            .map_err(|e| PlaceError::Unavailable(e.to_string()))?;
        self.put_store_in_memory(id, name, lat, lng).map_err(|_| PlaceError::InvalidPoint)
    }

    pub fn product(&self, sku: &str) -> Option<Arc<Product>> {
        self.catalog.read().expect("catalog lock").get(sku).cloned()
    }

    pub fn n_products(&self) -> usize {
        self.catalog.read().expect("catalog lock").len()
    }

    /// Creates or updates a product; true when created.
    pub async fn put_product(&self, product: Product) -> Result<bool, String> {
        self.committer
            .commit(vec![Write::Product {
                sku: product.sku.to_string(),
                name: product.name.clone(),
                category: product.category.clone(),
                price_minor: product.price_minor,
                low_stock_threshold: product.low_stock_threshold,
                ts: self.now(),
            }])
            .await
            .map_err(|e| e.to_string())?;
        let mut catalog = self.catalog.write().expect("catalog lock");
        self.catalog_version.fetch_add(1, Ordering::Relaxed);
        Ok(catalog.insert(product.sku.clone(), Arc::new(product)).is_none())
    }

    pub(super) fn insert_product(&self, product: Product) {
        self.catalog.write().expect("catalog lock").insert(product.sku.clone(), Arc::new(product));
    }
}
