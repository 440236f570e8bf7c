//! One dispatch tick with 1,000 open orders and 1,000 riders in one city, and, on the same
//! instance, the assignment alone: darkstore's sparse solver on the dense graph against a dense
//! Hungarian solve (`pathfinding::kuhn_munkres`). Then the tick as the city grows: 1k, 3k and
//! 10k open orders and riders over 60, 180 and 600 stores (the city's area growing with its
//! stores, so each store keeps the same orders and riders around it), with the server's knobs;
//! then the same city with riders scarce (a third as many, most still busy).
//!
//! `cargo bench --bench dispatch` (`BENCH_SCALES=1,3` runs only the growing city, at those thousands).

mod common;

use common::Rng;
use std::hint::black_box;
use std::time::Instant;

use darkstore_dispatch::{GeoTravel, OrderIn, Params, Pt, RiderIn, Travel, assign, plan_tick, route};
use pathfinding::prelude::{Matrix, kuhn_munkres_min};

const N: usize = 1_000;
const N_STORES: usize = 60;
const MIN: i64 = 60_000;
const NOW: i64 = 1_000 * MIN;

/// `n` open orders at `n_stores` stores and `n` idle riders in a city of `n_stores ÷ 60` times the
/// area of a 30 km one around Bengaluru; orders within 2 km of their store.
fn city(rng: &mut Rng, n: usize, n_stores: usize) -> (Vec<OrderIn>, Vec<RiderIn>) {
    city_with(rng, n, n_stores, false)
}

/// The same city; with `scarce`, a third as many riders, each busy for up to 10 more minutes.
fn city_with(rng: &mut Rng, n: usize, n_stores: usize, scarce: bool) -> (Vec<OrderIn>, Vec<RiderIn>) {
    let side = (n_stores as f64 / 60.0).sqrt();
    let (w, h) = (0.28 * side, 0.27 * side);
    let stores: Vec<Pt> =
        (0..n_stores).map(|_| Pt::new(77.59 + (rng.unit() - 0.5) * w, 12.97 + (rng.unit() - 0.5) * h)).collect();
    let orders: Vec<OrderIn> = (0..n)
        .map(|i| {
            let s = (rng.unit() * n_stores as f64) as usize % n_stores;
            let placed = NOW - (rng.unit() * 8.0 * MIN as f64) as i64;
            OrderIn {
                key: i,
                store: s as u32,
                pickup: stores[s],
                drop: Pt::new(stores[s].x + (rng.unit() - 0.5) * 0.036, stores[s].y + (rng.unit() - 0.5) * 0.036),
                placed_at: placed,
                ready_at: placed + 3 * MIN,
                deadline: placed + 10 * MIN,
                promise: placed + 10 * MIN,
            }
        })
        .collect();
    let n_riders = if scarce { n / 3 } else { n };
    let riders: Vec<RiderIn> = (0..n_riders)
        .map(|i| {
            let pos = Pt::new(77.59 + (rng.unit() - 0.5) * w, 12.97 + (rng.unit() - 0.5) * h);
            let free_at = if scarce { NOW + ((rng.unit() * 11.0 - 1.0) * MIN as f64) as i64 } else { NOW - MIN };
            RiderIn { key: i, pos, free_at, off_at: i64::MAX }
        })
        .collect();
    (orders, riders)
}

/// Median and max of `ticks` ticks, in ms, the orders committed by the last, and a digest of its
/// plans (which riders take which orders, when: equal digests, equal plans).
fn ticks(
    orders: &[OrderIn],
    riders: &[RiderIn],
    params: &Params,
    travel: &GeoTravel,
    ticks: usize,
) -> (f64, f64, usize, u64) {
    let mut times = Vec::new();
    let (mut committed, mut digest) = (0, 0);
    for _ in 0..ticks {
        let t = Instant::now();
        let plans = plan_tick(NOW, orders, riders, params, travel);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        committed = plans.iter().map(|p| p.orders.len()).sum();
        digest = plans.iter().fold(0xcbf29ce484222325u64, |h, p| {
            let words = [p.rider as u64, p.pickup_at as u64].into_iter().chain(p.orders.iter().map(|&o| o as u64));
            words.fold(h, |h, w| (h ^ w).wrapping_mul(0x100000001b3))
        });
        black_box(plans);
    }
    times.sort_by(f64::total_cmp);
    (times[ticks / 2], times[ticks - 1], committed, digest)
}

fn main() {
    let scales: Option<Vec<usize>> =
        std::env::var("BENCH_SCALES").ok().map(|s| s.split(',').filter_map(|k| k.trim().parse().ok()).collect());
    if scales.is_none() {
        one_city();
    }
    growing_city(scales.unwrap_or_else(|| vec![1, 3, 10]));
}

fn one_city() {
    let mut rng = Rng(0x853c49e6748fea9b);
    let travel = GeoTravel { speed_mps: 5.0, detour: 1.4 };
    let now = NOW;
    let (orders, riders) = city(&mut rng, N, N_STORES);
    let params = Params::default();

    let (median, max, committed, digest) = ticks(&orders, &riders, &params, &travel, 20);
    println!(
        "plan_tick, {N} orders × {N} riders, {N_STORES} stores: median {median:.2} ms, max {max:.2} ms over 20 ticks ({committed} orders committed, plans {digest:016x})"
    );

    // The assignment alone on the dense graph: every order alone with every rider.
    let t = Instant::now();
    let mut dense = vec![vec![0i64; N]; N];
    for (o, row) in orders.iter().zip(dense.iter_mut()) {
        for (r, cell) in riders.iter().zip(row.iter_mut()) {
            let plan = route(&travel, &params, r, &[o], now).expect("no shift ends");
            *cell = (plan.drop_at[0] - o.placed_at) / 1000 + (travel.ms(r.pos, o.pickup) / 2000);
        }
    }
    println!("dense cost matrix ({N} × {N} routes): {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);

    let edges: Vec<Vec<(usize, i64)>> = dense.iter().map(|row| row.iter().copied().enumerate().collect()).collect();
    let unassigned = vec![i64::MAX / 1_000_000; N];
    let t = Instant::now();
    let ours = assign::solve(N, &edges, &unassigned);
    let ours_ms = t.elapsed().as_secs_f64() * 1000.0;
    let ours_total: i64 = ours.iter().enumerate().map(|(o, r)| dense[o][r.expect("all assigned")]).sum();

    let matrix = Matrix::from_rows(dense.clone()).unwrap();
    let t = Instant::now();
    let (hungarian_total, _) = kuhn_munkres_min(&matrix);
    let hungarian_ms = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "assign::solve (sparse shortest augmenting paths) on the dense graph: {ours_ms:.1} ms, total cost {ours_total}"
    );
    println!(
        "pathfinding::kuhn_munkres_min (dense Hungarian):                  {hungarian_ms:.1} ms, total cost {hungarian_total}"
    );
    assert_eq!(ours_total, hungarian_total, "both are optimal");
}

/// The city grows: the server's knobs (promise and urgency weights on), 60 stores a thousand.
/// Then the same with riders scarce (a third as many, most still busy): bundling and the cost of
/// leaving orders unassigned carry the tick, as in the server's peaks.
/// Each on one thread and on every core (`threads`, as the server runs it): the plans must be
/// the same (equal digests).
fn growing_city(scales: Vec<usize>) {
    let travel = GeoTravel { speed_mps: 5.0, detour: 1.4 };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for scarce in [false, true] {
        if scarce {
            println!("\nriders scarce: a third as many, each busy for up to 10 more minutes");
        }
        println!(
            "| open orders × riders | stores | threads | median ms | max ms | ms per 1,000 orders | committed | plans |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        for &k in &scales {
            let mut rng = Rng(0x853c49e6748fea9b ^ k as u64);
            let (n, n_stores) = (k * 1_000, k * 60);
            let (orders, riders) = city_with(&mut rng, n, n_stores, scarce);
            for threads in [1, cores] {
                let server = Params { promise_weight: 8.0, urgency_weight: 6.0, threads, ..Params::default() };
                let (median, max, committed, digest) =
                    ticks(&orders, &riders, &server, &travel, if k >= 10 { 7 } else { 11 });
                println!(
                    "| {n} × {} | {n_stores} | {threads} | {median:.1} | {max:.1} | {:.2} | {committed} | `{digest:016x}` |",
                    riders.len(),
                    median / k as f64
                );
            }
        }
    }
}
