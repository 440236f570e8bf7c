//! In-process availability lookups: 200 stores × 5,000 SKUs in one city.
//!
//! `cargo bench --bench availability` measures `Pages::page` after `State::serving` (the code behind
//! `GET /v1/availability`: point → H3 cell → candidate stores → fastest store → a page of in-stock
//! SKUs with catalog data, serialized, kept per store until its stock changes), the same with the
//! store's stock changed before every lookup, `State::availability` (the page built every time)
//! and, in the same run, a baseline that finds the store by scanning every store's distance
//! instead of the H3 service-area map.

mod common;

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

use common::Rng;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use darkstore::changes::Changes;
use darkstore::clock::SystemClock;
use darkstore::http::pages::{PageJson, Pages, serialize};
use darkstore::state::{State, StateConfig};
use darkstore_db::scratch::ScratchDb;
use darkstore_db::{Committer, Db, LotSum, ProductRow, Snapshot, StoreRow};
use darkstore_geoinv::quote::{Calibrated, StoreLoad};
use darkstore_geoinv::stock::Want;
use darkstore_geoinv::travel::{TravelModel, distance_m};
use hdrhistogram::Histogram;

const N_STORES: usize = 200;
const N_SKUS: usize = 5_000;
const N_LOOKUPS: usize = 200_000;

fn snapshot(rng: &mut Rng) -> (Snapshot, Vec<(f64, f64)>) {
    // A 40 km × 40 km city centred on Bengaluru.
    let (lat0, lng0) = (12.97, 77.59);
    let mut snap = Snapshot::default();
    let mut sites = Vec::new();
    for i in 0..N_STORES {
        let lat = lat0 + (rng.unit() - 0.5) * 0.36;
        let lng = lng0 + (rng.unit() - 0.5) * 0.37;
        sites.push((lat, lng));
        snap.stores.push(StoreRow {
            id: format!("store-{i:03}"),
            name: format!("Store {i}"),
            lat,
            lng,
            timezone: None,
            hours: None,
            paused: None,
        });
    }
    for s in 0..N_SKUS {
        snap.products.push(ProductRow {
            sku: format!("sku-{s:05}"),
            name: format!("Product {s}"),
            category: ["dairy", "snacks", "staples", "fruit_veg", "household"][s % 5].into(),
            price_minor: 1000 + s as i64,
            low_stock_threshold: 5,
        });
    }
    (snap, sites)
}

/// The stock lines of [`snapshot`]'s stores: about nine SKUs in ten in stock, a lot each.
fn lot_rows(rng: &mut Rng) -> Snapshot {
    let mut snap = Snapshot::default();
    let mut lot = 0;
    for i in 0..N_STORES {
        for s in 0..N_SKUS {
            lot += 1;
            // About one line in ten is out of stock.
            let on_hand = if rng.next().is_multiple_of(10) { 0 } else { 1 + (rng.next() % 50) as i64 };
            if on_hand > 0 {
                snap.lots.push(LotSum {
                    store_id: format!("store-{i:03}"),
                    sku: format!("sku-{s:05}"),
                    lot_id: lot,
                    expires_at: None,
                    on_hand,
                    reserved: 0,
                });
            }
        }
    }
    snap.max_lot_id = lot;
    snap
}

/// Runs `f`, records how long it took (ns) in `h`, and returns what it made (for `black_box`).
fn timed<T>(h: &mut Histogram<u64>, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    h.record((t.elapsed().as_nanos() as u64).max(1)).unwrap();
    out
}

fn report(name: &str, h: &Histogram<u64>) {
    println!(
        "{name:<44} p50 {:>6.2} µs  p99 {:>6.2} µs  p99.9 {:>6.2} µs  max {:>7.1} µs  ({} lookups)",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    );
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let (snap, sites) = snapshot(&mut rng);
    // The rows the lines are loaded from, and what they hold (loading frees them: the figures
    // below add them back).
    let (heap_r, rss_r) = (common::live_bytes(), common::trimmed_rss_bytes());
    let lots = lot_rows(&mut rng);
    let (rows_heap, rows_rss) = (common::live_bytes() - heap_r, common::trimmed_rss_bytes() as i64 - rss_r as i64);
    let n_lines = lots.lots.len();
    // Memory: the state is built from the stores and the catalog first, then the stock lines are
    // loaded into it as at start-up, each step measured as the heap it keeps (live bytes grown)
    // and the resident size grown (the allocator's overhead included; after returning free
    // memory to the system), both plus the rows the load read and freed.
    let (heap0, rss0) = (common::live_bytes(), common::trimmed_rss_bytes());
    let scratch = ScratchDb::sqlite("ds_bench_avail");
    let state = runtime.block_on(async {
        let db = Db::connect(&scratch.url).await.unwrap();
        let (committer, _task) = Committer::spawn(db.clone(), 16, 16);
        let config = StateConfig {
            travel: TravelModel::default(),
            payment_hold_ms: None,
            order_retention_ms: i64::MAX,
            key_retention_ms: i64::MAX,
            quote: darkstore_geoinv::quote::QuoteParams {
                pick_ms: 120_000,
                pickers: 2,
                handover_ms: 60_000,
                cycle_ms: 960_000,
            },
            max_eta_minutes: None,
            delivery_fee_minor: 2_500,
        };
        Arc::new(State::from_snapshot(config, db, committer, snap, Arc::new(SystemClock), Arc::new(Changes::new())))
    });
    // The SKU interner's table is allocated once, at its first SKU, whatever the number of lines.
    let (heap_interner, rss_interner) = (common::live_bytes(), common::trimmed_rss_bytes());
    black_box(darkstore_geoinv::stock::Sku::new("sku-00000"));
    let (heap1, rss1) = (common::live_bytes(), common::trimmed_rss_bytes());
    state.load_region(lots);
    let (heap2, rss2) = (common::live_bytes(), common::trimmed_rss_bytes());
    let per_line = |bytes: i64| bytes as f64 / n_lines as f64;
    println!(
        "memory: a stock line {:.1} B of heap, {:.1} B resident (its lot and its place in the store: \
         {n_lines} lines in {N_STORES} stores loaded into the state); the whole state {:.1} B of heap, \
         {:.1} B resident per line ({:.1} MiB resident, stores, catalog and service-area map included); \
         the SKU interner, once: {:.1} MiB of heap, {:.1} MiB resident",
        per_line(heap2 - heap1 + rows_heap),
        per_line(rss2 as i64 - rss1 as i64 + rows_rss),
        per_line(heap2 - heap0 + rows_heap),
        per_line(rss2 as i64 - rss0 as i64 + rows_rss),
        (rss2 as i64 - rss0 as i64 + rows_rss) as f64 / (1 << 20) as f64,
        (heap1 - heap_interner) as f64 / (1 << 20) as f64,
        (rss1 as i64 - rss_interner as i64) as f64 / (1 << 20) as f64,
    );
    // Customer points: within 1.5 km of a random store.
    let points: Vec<(f64, f64)> = (0..N_LOOKUPS)
        .map(|_| {
            let (lat, lng) = sites[(rng.next() % N_STORES as u64) as usize];
            (lat + (rng.unit() - 0.5) * 0.02, lng + (rng.unit() - 0.5) * 0.02)
        })
        .collect();
    let now = common::now_ms();
    let pages = Pages::default();
    println!("availability: {N_STORES} stores × {N_SKUS} SKUs, {N_LOOKUPS} lookups per case, one thread");

    // Every store busy as in a peak: a picking queue, orders waiting for riders, 12 riders with
    // their times, and what was learned (what the dispatch tick leaves for the quote).
    let mut loads = std::collections::HashMap::with_hasher(ahash::RandomState::new());
    for i in 0..N_STORES as u32 {
        let mut riders: Vec<i64> = (0..12).map(|_| now + (rng.next() % 900_000) as i64).collect();
        riders.sort_unstable();
        loads.insert(
            i,
            StoreLoad {
                to_pick: (rng.next() % 8) as u32,
                awaiting_rider: (rng.next() % 16) as u32,
                riders_at_store: riders,
                calibrated: Calibrated { pick: 0.8, ride: 1.2, door: 1.4, first: 1.3, margin: 0.3, bundle: 1.4 },
                delivery_fee_minor: 2_500,
            },
        );
    }
    state.set_loads(loads);
    // The serving store and its quote, as every availability request and placement computes it.
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for &(lat, lng) in &points {
        black_box(timed(&mut h, || state.serving(lat, lng).unwrap().expect("a serving store")));
    }
    report("serving store and its quote (busy stores)", &h);

    // What `GET /v1/availability` runs: the page kept per store, built again after each change.
    // With no stock changing during the run, every lookup after a store's first is served as kept.
    for (name, limit) in [("kept page, limit 200, stock unchanged", 200), ("kept page, limit 20", 20)] {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        let mut served = 0usize;
        for &(lat, lng) in &points {
            let page = timed(&mut h, || kept(&state, &pages, lat, lng, limit));
            served += page.1.n_items;
            black_box(page);
        }
        report(name, &h);
        println!("{:<44} {:.1} items per page on average", "", served as f64 / N_LOOKUPS as f64);
    }
    // The serving store's stock changed before every lookup (one unit of a SKU reserved, outside
    // the timed part): any SKU of the store's 5,000, or always one on the page (the worst case:
    // every lookup patches the kept page), or the page read again every time (the previous
    // version's cost, as when an item sells out).
    for (name, on_page, read_again) in [
        ("kept page, limit 200, stock changed", false, false),
        ("kept page, limit 200, an item on it changed", true, false),
        ("page of 200 read again after each change", false, true),
    ] {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        // The same lookups by how the page was served.
        let paths = ["  served as kept", "  patched", "  patched, the changed item sold out", "  read again"];
        let mut by_path: Vec<Histogram<u64>> =
            paths.iter().map(|_| Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap()).collect();
        for (i, &(lat, lng)) in points.iter().enumerate().take(N_LOOKUPS / 4) {
            let store_id = kept(&state, &pages, lat, lng, 1).0;
            let store = state.store(&store_id).unwrap();
            // A SKU the store has (on the page: the first 150 SKUs are on a page of 200).
            let mut sold_out = false;
            for j in i.. {
                let sku = format!("sku-{:05}", if on_page { j % 150 } else { j % N_SKUS });
                let mut stock = store.stock.lock().unwrap();
                if stock.reserve(&[Want { sku: &sku, qty: 1 }], now).is_ok() {
                    sold_out = stock.line(&sku).map_or(0, |l| l.available(now)) == 0;
                    break;
                }
            }
            if read_again {
                black_box(timed(&mut h, || {
                    let (store, quote) = state.serving(lat, lng).unwrap().expect("a serving store");
                    serialize(&state.availability_at(&store, quote.eta_minutes(), None, None, 200))
                }));
            } else {
                let c = &pages.counters;
                let counts = || [&c.kept, &c.patched, &c.read].map(|n| n.load(Ordering::Relaxed));
                let before = counts();
                let t = Instant::now();
                black_box(kept(&state, &pages, lat, lng, 200));
                let ns = (t.elapsed().as_nanos() as u64).max(1);
                let after = counts();
                let path = match (after[2] > before[2], after[1] > before[1]) {
                    (true, _) => 3,
                    (false, true) if sold_out => 2,
                    (false, true) => 1,
                    (false, false) => 0,
                };
                h.record(ns).unwrap();
                by_path[path].record(ns).unwrap();
            }
        }
        report(name, &h);
        for (path, h) in paths.iter().zip(&by_path) {
            if !h.is_empty() {
                report(path, h);
            }
        }
    }

    // A busy store as it is: 50 lookups for each stock change (an order placed there), all at
    // points the same store serves; only the lookups are timed.
    let busy = points[0];
    let busy_id = kept(&state, &pages, busy.0, busy.1, 1).0;
    let busy_store = state.store(&busy_id).unwrap();
    let near: Vec<(f64, f64)> = (0..10_000)
        .map(|_| (busy.0 + (rng.unit() - 0.5) * 0.004, busy.1 + (rng.unit() - 0.5) * 0.004))
        .filter(|&(lat, lng)| kept(&state, &pages, lat, lng, 1).0 == busy_id)
        .collect();
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for i in 0..N_LOOKUPS / 4 {
        if i % 51 == 0 {
            let sku = format!("sku-{:05}", (i / 51) % N_SKUS);
            let _ = busy_store.stock.lock().unwrap().reserve(&[Want { sku: &sku, qty: 1 }], now);
            continue;
        }
        let (lat, lng) = near[i % near.len()];
        black_box(timed(&mut h, || kept(&state, &pages, lat, lng, 200)));
    }
    report("kept page, limit 200, 50 lookups a change", &h);

    // The page built from scratch every time (the WebSocket snapshot's path).
    for (name, limit) in [("State::availability, limit 200 (default)", 200), ("State::availability, limit 20", 20)] {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        let mut served = 0usize;
        for &(lat, lng) in &points {
            let page = timed(&mut h, || state.availability(lat, lng, None, None, limit).unwrap());
            served += page.items.len();
            black_box(page);
        }
        report(name, &h);
        println!("{:<44} {:.1} items per page on average", "", served as f64 / N_LOOKUPS as f64);
    }

    // Baseline: the same page, but the store found by scanning all stores.
    let model = TravelModel::default();
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for &(lat, lng) in &points {
        let t = Instant::now();
        let mut best: Option<(usize, f64)> = None;
        for (i, &(slat, slng)) in sites.iter().enumerate() {
            let eta = model.eta_minutes(distance_m(slat, slng, lat, lng));
            if eta <= model.promise_minutes && best.is_none_or(|(_, b)| eta < b) {
                best = Some((i, eta));
            }
        }
        // Then the same page query on the chosen store's point (exactly at the store).
        if let Some((i, _)) = best {
            let (slat, slng) = sites[i];
            black_box(state.availability(slat, slng, None, None, 200).unwrap());
        }
        h.record((t.elapsed().as_nanos() as u64).max(1)).unwrap();
    }
    report("baseline: linear scan of stores, limit 200", &h);
    runtime.block_on(scratch.drop_database());
}

/// What `GET /v1/availability` runs in process: the serving store, then its page (kept, or built
/// and kept).
fn kept(state: &State, pages: &Pages, lat: f64, lng: f64, limit: usize) -> (String, PageJson) {
    let (store, quote) = state.serving(lat, lng).unwrap().expect("a serving store");
    let page = pages.page(state, &store, quote.eta_minutes(), None, None, limit);
    (store.id.clone(), page)
}
