//! Serialized availability pages, kept per store: the hottest read of the server builds its JSON
//! once per change of a store's stock instead of once per request.
//!
//! A page is kept with the [`PageStamp`] of the state it was read from and served again while
//! [`State::page_now`] says nothing on it moved. When lines moved since (an order took units of
//! an item, an item sold out or came back, a full page needs refilling), the kept page is
//! patched from those lines alone: a page is kept in pieces of up to [`PIECE`] items, and a patch
//! shares every piece whose items all stay, in order and unchanged, and writes the others again
//! (the items that moved written, the rest copied as bytes): an item that sells out rewrites its
//! own piece only. Short pieces left behind are merged by writing the page again in full pieces
//! once there are about twice as many as it needs. A change the stock no longer remembers, the
//! catalog or a lot expiring reads the page again. Only first pages (no `after`) are kept, at
//! most [`PAGES_PER_STORE`] per store.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::model::Product;
use crate::state::{Availability, AvailableItem, PageNow, PagePatch, PageStamp, State, Store};
use crate::views;

/// Most availability pages kept per store; the store's pages are dropped when it is full.
pub const PAGES_PER_STORE: usize = 16;

/// Items per piece of a serialized page, at most: a patch writes again only the pieces it
/// touches (an item that sold out leaves its piece one item shorter, later pieces shared).
pub const PIECE: usize = 32;

/// (category, limit) of a first page.
type PageKey = (Option<Box<str>>, usize);

/// A page of available items, serialized.
#[derive(Debug, Clone, Default)]
pub struct PageJson {
    /// The items as comma-separated JSON objects (without the enclosing brackets), in pieces of
    /// [`PIECE`] items: the pieces one after another are the list.
    pub pieces: Arc<[Arc<String>]>,
    pub n_items: usize,
    /// The cursor for the next page, when there is one.
    pub next: Option<String>,
}

impl PageJson {
    /// Bytes of the items.
    pub fn len(&self) -> usize {
        self.pieces.iter().map(|p| p.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.n_items == 0
    }

    /// Appends the items to `out`.
    pub fn write_to(&self, out: &mut String) {
        for piece in self.pieces.iter() {
            out.push_str(piece);
        }
    }
}

#[derive(Debug)]
struct Kept {
    stamp: PageStamp,
    page: PageJson,
    /// The page's items, in order.
    products: Arc<[Arc<Product>]>,
    /// Per piece, where each of its items starts in it (with the comma before it, which every
    /// item but the page's first has), and the piece's end.
    starts: Arc<[Arc<[u32]>]>,
    /// Per piece, the index on the page of its first item (pieces hold up to [`PIECE`] items).
    first: Arc<[u32]>,
}

/// Where a written page's items are: per piece, where each item starts (and the piece's end),
/// and each piece's first item (see [`Kept`]).
struct Layout {
    starts: Arc<[Arc<[u32]>]>,
    first: Arc<[u32]>,
}

/// Writes a page's items into pieces of up to [`PIECE`] items.
struct Writer {
    pieces: Vec<Arc<String>>,
    starts: Vec<Arc<[u32]>>,
    first: Vec<u32>,
    piece: String,
    piece_starts: Vec<u32>,
    n: usize,
}

impl Writer {
    fn new() -> Writer {
        Writer {
            pieces: Vec::new(),
            starts: Vec::new(),
            first: Vec::new(),
            piece: String::new(),
            piece_starts: Vec::new(),
            n: 0,
        }
    }

    /// Appends a whole piece of `len` items as it is (ending the piece being written).
    fn share(&mut self, piece: &Arc<String>, starts: &Arc<[u32]>, len: usize) {
        if !self.piece_starts.is_empty() {
            self.cut();
        }
        self.first.push(self.n as u32);
        self.pieces.push(piece.clone());
        self.starts.push(starts.clone());
        self.n += len;
    }

    /// Starts the next item (its comma written): write it into what this returns.
    fn item(&mut self) -> &mut String {
        if self.piece_starts.len() == PIECE {
            self.cut();
        }
        if self.piece_starts.is_empty() {
            self.first.push(self.n as u32);
        }
        if self.piece.capacity() == 0 {
            self.piece.reserve(PIECE * 128);
        }
        self.piece_starts.push(self.piece.len() as u32);
        if self.n > 0 {
            self.piece.push(',');
        }
        self.n += 1;
        &mut self.piece
    }

    fn cut(&mut self) {
        self.piece_starts.push(self.piece.len() as u32);
        // A short piece (cut before a shared one, or the last) keeps little more than it holds;
        // full pieces keep their capacity (shrinking them would copy every page read).
        if self.piece.len() < self.piece.capacity() / 4 {
            self.piece.shrink_to_fit();
        }
        self.pieces.push(Arc::new(std::mem::take(&mut self.piece)));
        self.starts.push(Arc::from(std::mem::take(&mut self.piece_starts)));
    }

    fn finish(mut self, next: Option<String>) -> (PageJson, Layout) {
        if !self.piece_starts.is_empty() {
            self.cut();
        }
        let layout = Layout { starts: Arc::from(self.starts), first: Arc::from(self.first) };
        (PageJson { pieces: Arc::from(self.pieces), n_items: self.n, next }, layout)
    }
}

/// An item of a patched page: copied from the kept page, or written.
enum Entry<'a> {
    Kept(usize),
    Written(&'a Arc<Product>, i64),
}

impl Entry<'_> {
    fn sku<'k>(&'k self, kept: &'k Kept) -> &'k str {
        match self {
            Entry::Kept(i) => &kept.products[*i].sku,
            Entry::Written(p, _) => &p.sku,
        }
    }
}

impl Kept {
    /// The piece item `i` is in, and its place there.
    fn place(&self, i: usize) -> (usize, usize) {
        let k = self.first.partition_point(|&f| f as usize <= i) - 1;
        (k, i - self.first[k] as usize)
    }

    /// Items in piece `k`.
    fn piece_len(&self, k: usize) -> usize {
        self.starts[k].len() - 1
    }

    /// Item `i`'s bytes, without its comma.
    fn item(&self, i: usize) -> &str {
        let (k, j) = self.place(i);
        let starts = &self.starts[k];
        let bytes = &self.page.pieces[k][starts[j] as usize..starts[j + 1] as usize];
        if i > 0 { &bytes[1..] } else { bytes }
    }

    /// The page with `patch` applied: items whose units moved written again, sold-out ones left
    /// out, new ones written in SKU order, a full page refilled from the items after it, at most
    /// `limit`; every other item's bytes copied.
    fn patched(&self, patch: &PagePatch, limit: usize) -> Kept {
        let stamp = patch.stamp;
        let mut moved = patch.moved.clone();
        moved.sort_unstable();
        // The same items (none sold out, none new, the next page still there or still not).
        let same_items = moved.iter().all(|(_, a)| *a > 0)
            && patch.added.is_empty()
            && (self.page.next.is_none() || patch.next_holds || !patch.after.is_empty());
        if same_items && moved.is_empty() {
            return Kept {
                stamp,
                page: self.page.clone(),
                products: self.products.clone(),
                starts: self.starts.clone(),
                first: self.first.clone(),
            };
        }
        if same_items {
            return self.rewritten(stamp, &moved);
        }
        // The items in order: the kept ones (moved or not, sold-out ones left out) merged with
        // the added ones, then the refill.
        let mut entries: Vec<Entry<'_>> =
            Vec::with_capacity(self.products.len() + patch.added.len() + patch.after.len());
        let mut added = patch.added.iter().peekable();
        let mut m = moved.iter().peekable();
        for (i, p) in self.products.iter().enumerate() {
            while let Some(a) = added.next_if(|a| a.product.sku < p.sku) {
                entries.push(Entry::Written(&a.product, a.available));
            }
            match m.next_if(|(j, _)| *j == i) {
                Some(&(_, available)) if available > 0 => entries.push(Entry::Written(p, available)),
                Some(_) => {}
                None => entries.push(Entry::Kept(i)),
            }
        }
        entries.extend(added.map(|a| Entry::Written(&a.product, a.available)));
        entries.extend(patch.after.iter().map(|a| Entry::Written(&a.product, a.available)));
        let next = (entries.len() > limit).then(|| entries[limit - 1].sku(self).to_owned());
        entries.truncate(limit);
        // A kept piece whose items all follow one another unchanged is shared whole (where its
        // first item's comma still fits: only the page's first item has none); every other item
        // is written again, its bytes copied when it is kept.
        let mut w = Writer::new();
        let mut products = Vec::with_capacity(entries.len());
        let mut at = 0;
        while at < entries.len() {
            if let Entry::Kept(i) = entries[at] {
                let (k, j) = self.place(i);
                let len = self.piece_len(k);
                let whole = j == 0
                    && (i == 0) == (w.n == 0)
                    && entries.len() - at >= len
                    && (1..len).all(|d| matches!(entries[at + d], Entry::Kept(x) if x == i + d));
                if whole {
                    w.share(&self.page.pieces[k], &self.starts[k], len);
                    products.extend_from_slice(&self.products[i..i + len]);
                    at += len;
                    continue;
                }
            }
            match entries[at] {
                Entry::Kept(i) => {
                    products.push(self.products[i].clone());
                    w.item().push_str(self.item(i));
                }
                Entry::Written(p, available) => {
                    products.push(p.clone());
                    views::write_item(w.item(), p, available);
                }
            }
            at += 1;
        }
        let (page, Layout { starts, first }) = w.finish(next);
        let kept = Kept { stamp, page, products: Arc::from(products), starts, first };
        // Sold-out items leave short pieces behind: written again whole once they are many.
        if kept.page.pieces.len() > 2 * kept.products.len().div_ceil(PIECE) + 2 { kept.compacted() } else { kept }
    }

    /// The same items with those in `moved` (index, available; ascending) written again: only
    /// their pieces are written, the others shared.
    fn rewritten(&self, stamp: PageStamp, moved: &[(usize, i64)]) -> Kept {
        let mut pieces: Vec<Arc<String>> = self.page.pieces.to_vec();
        let mut starts: Vec<Arc<[u32]>> = self.starts.to_vec();
        let mut m = moved.iter().peekable();
        while let Some(&&(first, _)) = m.peek() {
            let k = self.place(first).0;
            let (old, old_starts) = (&self.page.pieces[k], &self.starts[k]);
            let mut piece = String::with_capacity(old.len() + 16);
            let mut piece_starts = Vec::with_capacity(old_starts.len());
            for j in 0..old_starts.len() - 1 {
                let i = self.first[k] as usize + j;
                piece_starts.push(piece.len() as u32);
                match m.next_if(|(at, _)| *at == i) {
                    Some(&(_, available)) => {
                        if i > 0 {
                            piece.push(',');
                        }
                        views::write_item(&mut piece, &self.products[i], available);
                    }
                    None => piece.push_str(&old[old_starts[j] as usize..old_starts[j + 1] as usize]),
                }
            }
            piece_starts.push(piece.len() as u32);
            // Every index of this piece was met above (unique, ascending); never loop on one.
            while m.next_if(|(at, _)| self.place(*at).0 == k).is_some() {}
            pieces[k] = Arc::new(piece);
            starts[k] = Arc::from(piece_starts);
        }
        Kept {
            stamp,
            page: PageJson { pieces: Arc::from(pieces), ..self.page.clone() },
            products: self.products.clone(),
            starts: Arc::from(starts),
            first: self.first.clone(),
        }
    }

    /// The same page written again in full pieces.
    fn compacted(&self) -> Kept {
        let mut w = Writer::new();
        for i in 0..self.products.len() {
            w.item().push_str(self.item(i));
        }
        let (page, Layout { starts, first }) = w.finish(self.page.next.clone());
        Kept { stamp: self.stamp, page, products: self.products.clone(), starts, first }
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
    /// Kept, with some items written again.
    pub patched: AtomicU64,
    /// Read from the stock and written (first pages only).
    pub read: AtomicU64,
}

/// Serializes a page of availability items.
pub fn serialize(found: &Availability) -> PageJson {
    serialize_at(found).0
}

/// Serializes `items` as a page (no next page).
pub fn serialize_items<'a>(items: impl IntoIterator<Item = &'a AvailableItem>) -> PageJson {
    write_items(items, None).0
}

/// Serializes a page, with where each item starts in its piece and each piece's first item.
fn serialize_at(found: &Availability) -> (PageJson, Layout) {
    write_items(&found.items, found.next.clone())
}

fn write_items<'a>(items: impl IntoIterator<Item = &'a AvailableItem>, next: Option<String>) -> (PageJson, Layout) {
    let mut w = Writer::new();
    for item in items {
        views::write_item(w.item(), &item.product, item.available);
    }
    w.finish(next)
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
        // Pages of nothing (limit 0: HTTP refuses it) are never kept.
        if after.is_none()
            && limit > 0
            && let Some(kept) = self.by_store.get(&store.idx.0).and_then(|p| p.get(&key).cloned())
        {
            match state.page_now(store, &kept.stamp, &kept.products, limit, kept.page.next.is_some(), category) {
                PageNow::Holds => {
                    self.counters.kept.fetch_add(1, Ordering::Relaxed);
                    return kept.page.clone();
                }
                PageNow::Moved(patch) => {
                    let patched = kept.patched(&patch, limit);
                    // Lines past it moved, nothing on it: kept, with the newer stamp.
                    let same = Arc::ptr_eq(&patched.page.pieces, &kept.page.pieces);
                    let counter = if same { &self.counters.kept } else { &self.counters.patched };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let page = patched.page.clone();
                    self.keep(store, key, patched);
                    return page;
                }
                PageNow::Stale => {}
            }
        }
        let found = state.availability_at(store, eta_minutes, category, after, limit);
        let (page, Layout { starts, first }) = serialize_at(&found);
        if after.is_none()
            && limit > 0
            && let Some(stamp) = found.stamp
        {
            self.counters.read.fetch_add(1, Ordering::Relaxed);
            let products = found.items.iter().map(|i| i.product.clone()).collect();
            self.keep(store, key, Kept { stamp, page: page.clone(), products, starts, first });
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
