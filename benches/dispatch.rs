//! One dispatch tick with 1,000 open orders and 1,000 riders in one city, and, on the same
//! instance, the assignment alone: darkstore's sparse solver on the dense graph against a dense
//! Hungarian solve (`pathfinding::kuhn_munkres`).
//!
//! `cargo bench --bench dispatch`

mod common;

use common::Rng;
use std::hint::black_box;
use std::time::Instant;

use darkstore_dispatch::{GeoTravel, OrderIn, Params, Pt, RiderIn, Travel, assign, plan_tick, route};
use pathfinding::prelude::{Matrix, kuhn_munkres_min};

const N: usize = 1_000;
const N_STORES: usize = 60;
const MIN: i64 = 60_000;

fn main() {
    let mut rng = Rng(0x853c49e6748fea9b);
    let travel = GeoTravel { speed_mps: 5.0, detour: 1.4 };
    let now = 1_000 * MIN;
    // A 30 km city around Bengaluru: stores, and orders within 2 km of theirs.
    let stores: Vec<Pt> =
        (0..N_STORES).map(|_| Pt::new(77.59 + (rng.unit() - 0.5) * 0.28, 12.97 + (rng.unit() - 0.5) * 0.27)).collect();
    let orders: Vec<OrderIn> = (0..N)
        .map(|i| {
            let s = (rng.unit() * N_STORES as f64) as usize % N_STORES;
            let placed = now - (rng.unit() * 8.0 * MIN as f64) as i64;
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
    let riders: Vec<RiderIn> = (0..N)
        .map(|i| RiderIn {
            key: i,
            pos: Pt::new(77.59 + (rng.unit() - 0.5) * 0.28, 12.97 + (rng.unit() - 0.5) * 0.27),
            free_at: now - MIN,
            off_at: i64::MAX,
        })
        .collect();
    let params = Params::default();

    let mut times = Vec::new();
    let mut committed = 0;
    for _ in 0..20 {
        let t = Instant::now();
        let plans = plan_tick(now, &orders, &riders, &params, &travel);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        committed = plans.iter().map(|p| p.orders.len()).sum();
        black_box(plans);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "plan_tick, {N} orders × {N} riders, {N_STORES} stores: median {:.2} ms, max {:.2} ms over 20 ticks ({committed} orders committed)",
        times[10], times[19]
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
