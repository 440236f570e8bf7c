//! What a point can buy: the store that serves it within the promise, and a page of what that
//! store can sell now. Every page comes with a [`PageStamp`] that says exactly which state it was
//! read from, so a reader that keeps pages (the HTTP views do) can tell cheaply whether a kept
//! page is still true.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use darkstore_geoinv::Millis;
use darkstore_geoinv::area::{InvalidPoint, StoreIdx};
use darkstore_geoinv::quote::Quote;

use super::{State, Store};
use crate::model::Product;

/// One item of an availability page.
#[derive(Debug, Clone)]
pub struct AvailableItem {
    pub product: Arc<Product>,
    pub available: i64,
}

/// What a page was read from. The page is still true while the store's stock version and the
/// catalog version are unchanged and no lot that decided it has expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageStamp {
    pub store: StoreIdx,
    pub stock_version: u64,
    pub catalog_version: u64,
    /// The page is stale from this time on (a lot on it expires).
    pub valid_until: Millis,
}

/// What became of a kept first page since its stamp ([`State::page_now`]).
#[derive(Debug, Clone)]
pub enum PageNow {
    /// Nothing on it moved: serve it as it is.
    Holds,
    /// Some lines moved: what they are now.
    Moved(PagePatch),
    /// Read it again.
    Stale,
}

/// The lines of a kept page that moved since its stamp, read from the stock at `stamp`.
#[derive(Debug, Clone)]
pub struct PagePatch {
    pub stamp: PageStamp,
    /// Items of the page whose line moved: (index on the page, available now; 0 or less: no
    /// longer for sale).
    pub moved: Vec<(usize, i64)>,
    /// Items for sale now within the page's range that were not on it, in SKU order.
    pub added: Vec<AvailableItem>,
    /// For a full page: the items after its last one, in SKU order, as many as it takes to fill
    /// it again and to tell whether a next page follows.
    pub after: Vec<AvailableItem>,
    /// A full page whose items are the same and after whose last item nothing moved: its next
    /// page is still there (`after` was not read).
    pub next_holds: bool,
}

/// The answer to "what can I get here?".
#[derive(Debug, Clone)]
pub struct Availability {
    pub store_id: Option<String>,
    pub eta_minutes: Option<i64>,
    pub items: Vec<AvailableItem>,
    pub next: Option<String>,
    pub stamp: Option<PageStamp>,
}

/// How many lines more than it needs [`State::page_now`] looks at to refill a full page before it
/// gives up and has the page read again (lines of other categories are skipped).
const NEXT_LOOKED_AT: usize = 16;

impl State {
    /// The store that serves (lat, lng) (the one that reaches it soonest by the map, within the
    /// promise), with its quote for an order placed now (from its queue and its riders).
    /// A store that is closed or paused serves only when no open store reaches the point (then
    /// [`State::open_state`] says why it takes no orders).
    pub fn serving(&self, lat: f64, lng: f64) -> Result<Option<(Arc<Store>, Quote)>, InvalidPoint> {
        let serving = {
            let area = self.area.read().expect("area lock");
            let stores = self.stores.read().expect("stores lock");
            let open = |idx: darkstore_geoinv::area::StoreIdx| {
                stores.get(idx.0 as usize).is_some_and(|s| self.open_state(s) == super::catalog::OpenState::Open)
            };
            // Stores with neither hours nor a pause (the usual case) cost nothing here.
            match self.any_restricted.load(std::sync::atomic::Ordering::Relaxed) {
                false => area.best_store(lat, lng)?,
                true => match area.best_store_where(lat, lng, open)? {
                    Some(s) => Some(s),
                    None => area.best_store(lat, lng)?,
                },
            }
        };
        Ok(serving.and_then(|s| self.store_at(s.store)).map(|store| {
            let q = self.quote(&store, lat, lng);
            (store, q)
        }))
    }

    /// What the store serving (lat, lng) can sell now, a page at a time.
    pub fn availability(
        &self,
        lat: f64,
        lng: f64,
        category: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Availability, InvalidPoint> {
        Ok(match self.serving(lat, lng)? {
            Some((store, q)) => self.availability_at(&store, q.eta_minutes(), category, after, limit),
            None => Availability { store_id: None, eta_minutes: None, items: Vec::new(), next: None, stamp: None },
        })
    }

    /// A page of what `store` can sell now.
    pub fn availability_at(
        &self,
        store: &Store,
        eta_minutes: i64,
        category: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Availability {
        let now = self.now();
        let mut items = Vec::with_capacity(limit.min(256));
        let mut next = None;
        let mut valid_until = Millis::MAX;
        // Lock order everywhere: a store's stock, then the catalog.
        let stock = store.stock.lock().expect("stock lock");
        let catalog = self.catalog.read().expect("catalog lock");
        let catalog_version = self.catalog_version.load(Ordering::Relaxed);
        for (sku, available, line) in stock.available_lines_after(after, now) {
            let Some(product) = catalog.get(&*sku) else {
                continue;
            };
            if category.is_some_and(|c| c != product.category) {
                continue;
            }
            // Every line that decides the page (including the one that says there is a next
            // page) bounds how long it stays true.
            if let Some(t) = line.available_until(now) {
                valid_until = valid_until.min(t);
            }
            if items.len() == limit {
                next = items.last().map(|i: &AvailableItem| i.product.sku.to_string());
                break;
            }
            items.push(AvailableItem { product: product.clone(), available });
        }
        let stamp = PageStamp { store: store.idx, stock_version: stock.version(), catalog_version, valid_until };
        Availability {
            store_id: Some(store.id.clone()),
            eta_minutes: Some(eta_minutes),
            items,
            next,
            stamp: Some(stamp),
        }
    }

    /// What `store` can sell now whose name matches `query` (word prefixes, small typos), best
    /// first, at most `limit` (see `darkstore_geoinv::search`). The index is built again when the
    /// catalog changed.
    pub fn search(&self, store: &Store, query: &str, limit: usize) -> Vec<AvailableItem> {
        let version = self.catalog_version.load(Ordering::Relaxed);
        let cached =
            self.search.read().expect("search lock").as_ref().filter(|(v, _)| *v == version).map(|(_, i)| i.clone());
        let index = match cached {
            Some(i) => i,
            None => {
                let catalog = self.catalog.read().expect("catalog lock");
                let version = self.catalog_version.load(Ordering::Relaxed);
                let index = Arc::new(darkstore_geoinv::search::SearchIndex::build(
                    catalog.values().map(|p| (&p.sku, p.name.as_str())),
                ));
                drop(catalog);
                *self.search.write().expect("search lock") = Some((version, index.clone()));
                index
            }
        };
        let ranked = index.query(query);
        self.available_of(store, ranked.iter().map(|(sku, _)| &**sku), limit)
    }

    /// Of `skus`, in their order, the ones `store` can sell now, at most `limit`.
    pub fn available_of<'a>(
        &self,
        store: &Store,
        skus: impl IntoIterator<Item = &'a str>,
        limit: usize,
    ) -> Vec<AvailableItem> {
        let now = self.now();
        let stock = store.stock.lock().expect("stock lock");
        let catalog = self.catalog.read().expect("catalog lock");
        let mut items = Vec::new();
        for sku in skus {
            if items.len() == limit {
                break;
            }
            let available = stock.line(sku).map_or(0, |l| l.available(now));
            if available <= 0 {
                continue;
            }
            if let Some(product) = catalog.get(sku) {
                items.push(AvailableItem { product: product.clone(), available });
            }
        }
        items
    }

    /// What became of a kept first page (`items`: its products in order; `full`: it has a next
    /// page) of `category` since it was read at `stamp`. The stock remembers the SKUs of its last
    /// few changes, so only those lines are read again: an item's units moved, an item sold out,
    /// one came back within the page's range, and for a full page the lines after its last item
    /// that refill it. A change the stock no longer remembers, the catalog or an expiry reads the
    /// page again ([`PageNow::Stale`]).
    pub fn page_now(
        &self,
        store: &Store,
        stamp: &PageStamp,
        items: &[Arc<Product>],
        limit: usize,
        full: bool,
        category: Option<&str>,
    ) -> PageNow {
        let now = self.now();
        let stock = store.stock.lock().expect("stock lock");
        if stamp.store != store.idx
            || stamp.catalog_version != self.catalog_version.load(Ordering::Relaxed)
            || now >= stamp.valid_until
        {
            return PageNow::Stale;
        }
        if stamp.stock_version == stock.version() {
            return PageNow::Holds;
        }
        let Some(touched) = stock.touched_since(stamp.stock_version) else { return PageNow::Stale };
        let catalog = self.catalog.read().expect("catalog lock");
        let listed = |sku: &str| catalog.get(sku).filter(|p| category.is_none_or(|c| c == p.category));
        let last = items.last().map(|p| &*p.sku);
        let mut patch =
            PagePatch { stamp: *stamp, moved: Vec::new(), added: Vec::new(), after: Vec::new(), next_holds: false };
        let mut valid_until = stamp.valid_until;
        let mut until = |line: Option<darkstore_geoinv::stock::StockLine>| {
            if let Some(t) = line.and_then(|l| l.available_until(now)) {
                valid_until = valid_until.min(t);
            }
        };
        let mut seen: Vec<darkstore_geoinv::stock::Sku> = Vec::new();
        // Whether a line past a full page's last item moved (only then can its next page have
        // come or gone without an item on it changing).
        let mut moved_past = false;
        for (sku, line) in touched {
            if seen.contains(&sku) {
                continue;
            }
            seen.push(sku);
            let available = line.map_or(0, |l| l.available(now));
            match items.binary_search_by(|p| (*p.sku).cmp(&*sku)) {
                Ok(i) => {
                    patch.moved.push((i, available));
                    until(line);
                }
                // Past a full page's last item: only the refill below can see it.
                Err(_) if full && last.is_some_and(|l| &*sku > l) => moved_past = true,
                // Within the page's range and not on it: on it now if it is for sale here.
                Err(_) => {
                    if let Some(product) = listed(&sku).filter(|_| available > 0) {
                        patch.added.push(AvailableItem { product: product.clone(), available });
                        until(line);
                    }
                }
            }
        }
        patch.added.sort_unstable_by(|a, b| a.product.sku.cmp(&b.product.sku));
        // A full page refills from the lines after its last item: enough to fill it again and to
        // tell whether a next page follows (looked for among a few lines only).
        let gone = patch.moved.iter().filter(|(_, a)| *a <= 0).count();
        let have = items.len() - gone + patch.added.len();
        // The same items and nothing past them moved: the next page is still there, no refill.
        patch.next_holds = full && gone == 0 && patch.added.is_empty() && !moved_past;
        if full && have <= limit && !patch.next_holds {
            let need = limit + 1 - have;
            let mut after = stock.available_lines_after(last, now);
            let mut looked = 0;
            while patch.after.len() < need {
                let Some((sku, available, line)) = after.next() else { break };
                looked += 1;
                if looked > need + NEXT_LOOKED_AT {
                    return PageNow::Stale;
                }
                if let Some(product) = listed(&sku) {
                    patch.after.push(AvailableItem { product: product.clone(), available });
                    until(Some(line));
                }
            }
        }
        patch.stamp = PageStamp { stock_version: stock.version(), valid_until, ..*stamp };
        PageNow::Moved(patch)
    }
}
