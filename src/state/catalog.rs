//! Stores (with their service areas) and the product catalog.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use darkstore_db::Write;
use darkstore_geoinv::area::{InvalidPoint, StoreIdx};
use darkstore_geoinv::hours::{Days, Hours};
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
    /// Opening hours and pause, as set.
    pub settings: StoreSettings,
    /// The opening hours, read (None: always open).
    pub schedule: Option<Hours>,
    /// Its stock; each line also keeps whether it was last announced as available (for
    /// availability changes).
    pub stock: Mutex<StoreStock>,
}

/// A store's opening hours (in its time zone) and pause.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreSettings {
    /// An IANA time zone name (UTC when hours are given without one).
    pub timezone: Option<String>,
    /// Opening intervals by weekday; None: always open.
    pub hours: Option<Days>,
    /// Paused, with this reason.
    pub paused: Option<String>,
}

impl StoreSettings {
    /// The hours, read and checked (None: always open).
    pub fn schedule(&self) -> Result<Option<Hours>, String> {
        match &self.hours {
            None => Ok(None),
            Some(days) => Hours::new(self.timezone.as_deref().unwrap_or("UTC"), days).map(Some),
        }
    }
}

pub use crate::model::OpenState;

impl State {
    /// Whether `store` takes orders now: paused first, then its hours.
    pub fn open_state(&self, store: &Store) -> OpenState {
        if let Some(reason) = &store.settings.paused {
            return OpenState::Paused { reason: reason.clone() };
        }
        match &store.schedule {
            Some(h) => {
                let now = self.now();
                if h.is_open(now) { OpenState::Open } else { OpenState::Closed { opens_at: h.opens_at(now) } }
            }
            None => OpenState::Open,
        }
    }

    pub(super) fn put_store_in_memory(
        &self,
        id: &str,
        name: &str,
        lat: f64,
        lng: f64,
        settings: StoreSettings,
    ) -> Result<bool, InvalidPoint> {
        // Hours that no longer read (a time zone gone from the system's database) leave the
        // store always open, said loudly, rather than closed for good.
        let schedule = settings.schedule().unwrap_or_else(|e| {
            tracing::warn!(store = %id, error = %e, "store hours unreadable; treated as always open");
            None
        });
        let mut area = self.area.write().expect("area lock");
        let idx = area.upsert_store(id, lat, lng)?;
        let mut stores = self.stores.write().expect("stores lock");
        let created = idx.0 as usize == stores.len();
        let stock = match stores.get(idx.0 as usize) {
            // The stock stays with the store when it is renamed or moved.
            Some(old) => std::mem::take(&mut *old.stock.lock().expect("stock lock")),
            None => StoreStock::new(),
        };
        let store = Arc::new(Store {
            idx,
            id: id.to_owned(),
            name: name.to_owned(),
            lat,
            lng,
            settings,
            schedule,
            stock: Mutex::new(stock),
        });
        if created {
            stores.push(store);
        } else {
            stores[idx.0 as usize] = store;
        }
        let restricted = stores.iter().any(|s| s.schedule.is_some() || s.settings.paused.is_some());
        self.any_restricted.store(restricted, Ordering::Relaxed);
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

    /// Creates or updates a store; true when created. The settings are checked by the caller
    /// ([`StoreSettings::schedule`]).
    pub async fn put_store(
        &self,
        id: &str,
        name: &str,
        lat: f64,
        lng: f64,
        settings: StoreSettings,
    ) -> Result<bool, PlaceError> {
        let ts = self.now();
        let write = Write::Store {
            id: id.into(),
            name: name.into(),
            lat,
            lng,
            timezone: settings.timezone.clone(),
            hours: settings.hours.as_ref().map(darkstore_geoinv::hours::to_spec),
            paused: settings.paused.clone(),
            ts,
        };
        self.committer.commit(vec![write]).await.map_err(|e| PlaceError::Unavailable(e.to_string()))?;
        let created = self.put_store_in_memory(id, name, lat, lng, settings).map_err(|_| PlaceError::InvalidPoint)?;
        self.catalog_changed();
        Ok(created)
    }

    /// Tells whoever listens (cluster mode: the other nodes) that the catalog changed.
    fn catalog_changed(&self) {
        if let Some(hook) = self.catalog_hook.get() {
            hook();
        }
    }

    /// Calls `hook` after every change of the catalog committed here (set once).
    pub fn on_catalog_change(&self, hook: Box<dyn Fn() + Send + Sync>) {
        let _ = self.catalog_hook.set(hook);
    }

    /// Brings the catalog in memory up to `snap`'s stores and products (cluster mode: what
    /// another node changed). Stock and orders are left alone. Answers how many entries changed.
    pub fn sync_catalog(&self, snap: &darkstore_db::Snapshot) -> usize {
        let mut changed = 0;
        for s in &snap.stores {
            let hours = s.hours.as_deref().map(darkstore_geoinv::hours::from_spec).transpose().unwrap_or(None);
            let settings = StoreSettings { timezone: s.timezone.clone(), hours, paused: s.paused.clone() };
            let same = self.store(&s.id).is_some_and(|old| {
                old.name == s.name && old.lat == s.lat && old.lng == s.lng && old.settings == settings
            });
            if !same && self.put_store_in_memory(&s.id, &s.name, s.lat, s.lng, settings).is_ok() {
                changed += 1;
            }
        }
        for p in &snap.products {
            let product =
                Product::new(&p.sku, p.name.clone(), p.category.clone(), p.price_minor, p.low_stock_threshold);
            let same = self.product(&p.sku).is_some_and(|old| {
                old.name == product.name
                    && old.category == product.category
                    && old.price_minor == product.price_minor
                    && old.low_stock_threshold == product.low_stock_threshold
            });
            if !same {
                self.insert_product(product);
                changed += 1;
            }
        }
        if changed > 0 {
            self.catalog_version.fetch_add(1, Ordering::Relaxed);
        }
        changed
    }

    /// Pauses a store (with a reason) or lifts its pause; the store as it is now.
    pub async fn set_paused(&self, id: &str, paused: Option<String>) -> Result<Arc<Store>, PlaceError> {
        let store = self.store(id).ok_or(PlaceError::NotServiceable)?;
        let settings = StoreSettings { paused, ..store.settings.clone() };
        self.put_store(id, &store.name, store.lat, store.lng, settings).await?;
        self.store(id).ok_or(PlaceError::NotServiceable)
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
        let created = {
            let mut catalog = self.catalog.write().expect("catalog lock");
            self.catalog_version.fetch_add(1, Ordering::Relaxed);
            catalog.insert(product.sku.clone(), Arc::new(product)).is_none()
        };
        self.catalog_changed();
        Ok(created)
    }

    pub(super) fn insert_product(&self, product: Product) {
        self.catalog.write().expect("catalog lock").insert(product.sku.clone(), Arc::new(product));
    }
}
