//! Serialized availability pages, kept per store: the hottest read of the server builds its JSON
//! once per change of a store's stock instead of once per request.
//!
//! A page is kept with the [`PageStamp`] of the state it was read from and served again while
//! [`State::page_now`] says nothing on it moved. When only the available units of some of its
//! items moved (an order reserved one of them), the kept page is patched: those items are written
//! again and the rest copied, instead of reading and writing 200 items. Anything else (an item
//! sold out or back, the catalog, a lot expiring) reads the page again. Only first pages (no
//! `after`) are kept, at most [`PAGES_PER_STORE`] per store.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::model::Product;
use crate::state::{Availability, PageNow, PageStamp, State, Store};
use crate::views;

/// Most availability pages kept per store; the store's pages are dropped when it is full.
pub const PAGES_PER_STORE: usize = 16;

/// (category, limit) of a first page.
type PageKey = (Option<Box<str>>, usize);

/// A page of available items, serialized.
#[derive(Debug, Clone)]
pub struct PageJson {
    /// The items, comma-separated JSON objects (without the enclosing brackets).
    pub items: Arc<str>,
    pub n_items: usize,
    /// The cursor for the next page, when there is one.
    pub next: Option<String>,
}

#[derive(Debug)]
struct Kept {
    stamp: PageStamp,
    page: PageJson,
    /// The page's items, in order.
    products: Arc<[Arc<Product>]>,
    /// Where each item starts in `page.items` (with the comma before it), and the end.
    starts: Arc<[u32]>,
}

impl Kept {
    /// The page with the items in `moved` (index, available; ascending) written again and the
    /// others copied.
    fn patched(&self, stamp: PageStamp, moved: &[(usize, i64)]) -> Kept {
        if moved.is_empty() {
            return Kept {
                stamp,
                page: self.page.clone(),
                products: self.products.clone(),
                starts: self.starts.clone(),
            };
        }
        let (old, starts) = (&*self.page.items, &self.starts);
        let mut out = String::with_capacity(old.len() + 8 * moved.len());
        let mut new_starts = Vec::with_capacity(starts.len());
        let mut next = 0;
        let copy = |out: &mut String, new_starts: &mut Vec<u32>, from: usize, to: usize| {
            let shift = out.len() as i64 - i64::from(starts[from]);
            new_starts.extend(starts[from..to].iter().map(|&s| (i64::from(s) + shift) as u32));
            out.push_str(&old[starts[from] as usize..starts[to] as usize]);
        };
        for &(i, available) in moved {
            copy(&mut out, &mut new_starts, next, i);
            new_starts.push(out.len() as u32);
            if i > 0 {
                out.push(',');
            }
            views::write_item(&mut out, &self.products[i], available);
            next = i + 1;
        }
        copy(&mut out, &mut new_starts, next, self.products.len());
        new_starts.push(out.len() as u32);
        Kept {
            stamp,
            page: PageJson { items: Arc::from(out), ..self.page.clone() },
            products: self.products.clone(),
            starts: Arc::from(new_starts),
        }
    }
}

#[derive(Default)]
pub struct Pages {
    by_store: DashMap<u32, HashMap<PageKey, Arc<Kept>>, ahash::RandomState>,
    pub counters: PageCounters,
}

/// First pages served, by how (`darkstore_availability_pages_total{how}`).
#[derive(Debug, Default)]
pub struct PageCounters {
    /// Served as kept (nothing on it moved).
    pub kept: AtomicU64,
    /// Kept, with some items' units written again.
    pub patched: AtomicU64,
    /// Read from the stock and written (first pages only).
    pub read: AtomicU64,
}

/// Serializes a page of availability items.
pub fn serialize(found: &Availability) -> PageJson {
    serialize_at(found).0
}

/// Serializes a page, with where each item starts (and the end).
fn serialize_at(found: &Availability) -> (PageJson, Vec<u32>) {
    let mut items = String::with_capacity(found.items.len() * 120);
    let mut starts = Vec::with_capacity(found.items.len() + 1);
    for (i, item) in found.items.iter().enumerate() {
        starts.push(items.len() as u32);
        if i > 0 {
            items.push(',');
        }
        views::write_item(&mut items, &item.product, item.available);
    }
    starts.push(items.len() as u32);
    (PageJson { items: Arc::from(items), n_items: found.items.len(), next: found.next.clone() }, starts)
}

impl Pages {
    /// The page `GET /v1/availability` serves for `store`: kept, or read and kept.
    pub fn page(
        &self,
        state: &State,
        store: &Store,
        eta_minutes: i64,
        category: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> PageJson {
        let key = (category.map(Box::from), limit);
        if after.is_none()
            && let Some(kept) = self.by_store.get(&store.idx.0).and_then(|p| p.get(&key).cloned())
        {
            match state.page_now(store, &kept.stamp, &kept.products, kept.page.next.is_some(), category) {
                PageNow::Holds => {
                    self.counters.kept.fetch_add(1, Ordering::Relaxed);
                    return kept.page.clone();
                }
                PageNow::Moved(stamp, mut moved) => {
                    // Nothing on it moved (only lines past it): kept, with the newer stamp.
                    let counter = if moved.is_empty() { &self.counters.kept } else { &self.counters.patched };
                    counter.fetch_add(1, Ordering::Relaxed);
                    moved.sort_unstable();
                    let patched = kept.patched(stamp, &moved);
                    let page = patched.page.clone();
                    self.keep(store, key, patched);
                    return page;
                }
                PageNow::Stale => {}
            }
        }
        let found = state.availability_at(store, eta_minutes, category, after, limit);
        let (page, starts) = serialize_at(&found);
        if after.is_none()
            && let Some(stamp) = found.stamp
        {
            self.counters.read.fetch_add(1, Ordering::Relaxed);
            let products = found.items.iter().map(|i| i.product.clone()).collect();
            self.keep(store, key, Kept { stamp, page: page.clone(), products, starts: Arc::from(starts) });
        }
        page
    }

    fn keep(&self, store: &Store, key: PageKey, kept: Kept) {
        let mut pages = self.by_store.entry(store.idx.0).or_default();
        if pages.len() >= PAGES_PER_STORE && !pages.contains_key(&key) {
            pages.clear();
        }
        pages.insert(key, Arc::new(kept));
    }
}
