//! Serialized availability pages, kept per store: the hottest read of the server builds its JSON
//! once per change of a store's stock instead of once per request.
//!
//! A page is kept with the [`PageStamp`] of the state it was read from and served again only
//! while `State::page_holds` says that state is unchanged (the store's stock version, the catalog
//! version, no lot on it expired). Only first pages (no `after`) are kept, at most
//! [`PAGES_PER_STORE`] per store.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;

use crate::state::{Availability, PageStamp, State, Store};
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
}

#[derive(Default)]
pub struct Pages {
    by_store: DashMap<u32, HashMap<PageKey, Arc<Kept>>, ahash::RandomState>,
}

/// Serializes a page of availability items.
pub fn serialize(found: &Availability) -> PageJson {
    let mut items = String::with_capacity(found.items.len() * 120);
    for (i, item) in found.items.iter().enumerate() {
        if i > 0 {
            items.push(',');
        }
        views::write_item(&mut items, &item.product, item.available);
    }
    PageJson { items: Arc::from(items), n_items: found.items.len(), next: found.next.clone() }
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
            && state.page_holds(store, &kept.stamp)
        {
            return kept.page.clone();
        }
        let found = state.availability_at(store, eta_minutes, category, after, limit);
        let page = serialize(&found);
        if after.is_none()
            && let Some(stamp) = found.stamp
        {
            let mut pages = self.by_store.entry(store.idx.0).or_default();
            if pages.len() >= PAGES_PER_STORE && !pages.contains_key(&key) {
                pages.clear();
            }
            pages.insert(key, Arc::new(Kept { stamp, page: page.clone() }));
        }
        page
    }
}
