//! Table-driven tests of the optimizer on a planar city (320 m a minute, as in MDRP).

use super::*;

const MIN: Millis = 60_000;

fn travel() -> PlanarTravel {
    PlanarTravel { metres_per_minute: 320.0 }
}

fn params() -> Params {
    Params { pickup_service_ms: 2 * MIN, dropoff_service_ms: 2 * MIN, tick_ms: MIN, ..Params::default() }
}

/// An order of store 0 at the origin, dropped at (x, y) metres, placed at 0, ready at `ready`
/// minutes, due 40 minutes after placement.
fn order(key: usize, x: f64, y: f64, ready: i64) -> OrderIn {
    OrderIn {
        key,
        store: 0,
        pickup: Pt::new(0.0, 0.0),
        drop: Pt::new(x, y),
        placed_at: 0,
        ready_at: ready * MIN,
        deadline: 40 * MIN,
        promise: 40 * MIN,
    }
}

/// The same order, picked up at store `store` at (x, 0).
fn at_store(mut o: OrderIn, store: u32, x: f64) -> OrderIn {
    o.store = store;
    o.pickup = Pt::new(x, 0.0);
    o
}

/// The same order, promised `minutes` after placement.
fn promised(mut o: OrderIn, minutes: i64) -> OrderIn {
    o.promise = minutes * MIN;
    o
}

fn rider(key: usize, x: f64, y: f64, free: i64) -> RiderIn {
    RiderIn { key, pos: Pt::new(x, y), free_at: free * MIN, off_at: Millis::MAX }
}

fn keys(plans: &[Plan]) -> Vec<(usize, Vec<usize>)> {
    let mut k: Vec<(usize, Vec<usize>)> = plans.iter().map(|p| (p.rider, p.orders.clone())).collect();
    k.sort();
    k
}

#[test]
fn decisions_table() {
    // (what, now in minutes, orders, riders, expected (rider, orders in sequence) committed now)
    type Case = (&'static str, i64, Vec<OrderIn>, Vec<RiderIn>, Vec<(usize, Vec<usize>)>);
    let cases: Vec<Case> = vec![
        (
            "bundling wins: one rider, two drops on the same street",
            0,
            vec![order(1, 1000.0, 0.0, 0), order(2, 1300.0, 0.0, 0)],
            vec![rider(10, 0.0, 0.0, 0)],
            vec![(10, vec![1, 2])],
        ),
        (
            "bundling pays even with riders to spare: two drops at one address",
            0,
            vec![order(1, 2000.0, 0.0, 0), order(2, 2000.0, 50.0, 0)],
            vec![rider(10, 0.0, 0.0, 0), rider(11, 10.0, 0.0, 0), rider(12, 20.0, 0.0, 0)],
            vec![(10, vec![1, 2])],
        ),
        (
            "no bundle with riders to spare and drops in opposite directions",
            0,
            vec![order(1, 3000.0, 0.0, 0), order(2, -3000.0, 0.0, 0)],
            vec![rider(10, 0.0, 0.0, 0), rider(11, 10.0, 0.0, 0)],
            vec![(10, vec![1]), (11, vec![2])],
        ),
        (
            "no bundle that breaks a promise, even with one rider",
            0,
            vec![order(1, 6000.0, 0.0, 0), order(2, -6100.0, 0.0, 0)],
            vec![rider(10, 0.0, 0.0, 0)],
            vec![(10, vec![1])],
        ),
        (
            "no bundle that breaks a shorter promise: either second drop would be at 10 minutes, 9 promised",
            0,
            vec![promised(order(1, 1000.0, 0.0, 0), 9), promised(order(2, 1300.0, 0.0, 0), 9)],
            vec![rider(10, 0.0, 0.0, 0)],
            vec![(10, vec![1])],
        ),
        (
            "an order late whatever happens may join a bundle, first: promised 3 minutes, 6 alone",
            0,
            vec![promised(order(1, 1000.0, 0.0, 0), 3), order(2, 1300.0, 0.0, 0)],
            vec![rider(10, 0.0, 0.0, 0)],
            vec![(10, vec![1, 2])],
        ),
        (
            "nor goes behind another, later than alone: the near drop first would be cheaper",
            0,
            vec![promised(order(1, 3000.0, 0.0, 0), 3), order(2, 300.0, 0.0, 0)],
            vec![rider(10, 0.0, 0.0, 0)],
            vec![(10, vec![2])],
        ),
        (
            "but it never breaks another's promise: the second drop at 9 minutes, 8 promised, 7 alone",
            0,
            vec![promised(order(1, 1000.0, 0.0, 0), 3), promised(order(2, 1300.0, 0.0, 0), 8)],
            vec![rider(10, 0.0, 0.0, 0)],
            vec![(10, vec![1])],
        ),
        (
            "a bundle is judged from when a rider can be at the store: 10 minutes away, both promised 18",
            0,
            vec![promised(order(1, 1000.0, 0.0, 0), 18), promised(order(2, 1300.0, 0.0, 0), 18)],
            vec![rider(10, 3200.0, 0.0, 0)],
            vec![(10, vec![1])],
        ),
        (
            "the same bundle with the rider at the store",
            0,
            vec![promised(order(1, 1000.0, 0.0, 0), 18), promised(order(2, 1300.0, 0.0, 0), 18)],
            vec![rider(10, 0.0, 0.0, 0)],
            vec![(10, vec![1, 2])],
        ),
        (
            "hold back: the order is ready in 20 minutes and the rider is 1 minute away",
            0,
            vec![order(1, 1000.0, 0.0, 20)],
            vec![rider(10, 300.0, 0.0, 0)],
            vec![],
        ),
        (
            "hold back ends in time: leaving a tick later would be late for the ready time",
            18,
            vec![order(1, 1000.0, 0.0, 20)],
            vec![rider(10, 300.0, 0.0, 0)],
            vec![(10, vec![1])],
        ),
        (
            "a ready order leaves at once",
            5,
            vec![order(1, 1000.0, 0.0, 5)],
            vec![rider(10, 3000.0, 0.0, 0)],
            vec![(10, vec![1])],
        ),
        (
            "the optimal assignment is not first come, first served",
            0,
            // Store 0 at the origin, store 1 at x = 3000; rider 10 between them, rider 11 west.
            vec![order(1, 0.0, 500.0, 0), at_store(order(2, 3000.0, 500.0, 0), 1, 3000.0)],
            vec![rider(10, 1400.0, 0.0, 0), rider(11, -1600.0, 0.0, 0)],
            vec![(10, vec![2]), (11, vec![1])],
        ),
        (
            "a busy rider who is better is waited for, not replaced by a worse one",
            0,
            vec![order(1, 500.0, 0.0, 10)],
            vec![rider(10, 0.0, 0.0, 3), rider(11, 9000.0, 0.0, 0)],
            vec![],
        ),
        (
            "no pickups after the end of a shift",
            0,
            vec![order(1, 500.0, 0.0, 0)],
            vec![RiderIn { key: 10, pos: Pt::new(3000.0, 0.0), free_at: 0, off_at: 5 * MIN }],
            vec![],
        ),
    ];
    for (what, now, orders, riders, expected) in cases {
        let plans = plan_tick(now * MIN, &orders, &riders, &params(), &travel());
        assert_eq!(keys(&plans), expected, "{what}");
    }
}

#[test]
fn a_lone_order_near_its_promise_outranks_a_pair_with_slack() {
    // One rider between two stores: a pair at store 0 promised at 60 minutes, a lone order at
    // store 1 promised at 30; at 23 minutes more than three quarters of the lone order's time
    // has passed, under half of the pair's.
    let orders = vec![
        promised(order(1, 1000.0, 0.0, 0), 60),
        promised(order(2, 1300.0, 0.0, 0), 60),
        at_store(promised(order(3, 600.0, 500.0, 0), 30), 1, 600.0),
    ];
    let riders = vec![rider(10, 300.0, 0.0, 23)];
    let now = 23 * MIN;
    let plain = plan_tick(now, &orders, &riders, &params(), &travel());
    assert_eq!(keys(&plain), vec![(10, vec![1, 2])], "without urgency the pair wins the rider");
    let urgent = Params { urgency_weight: 6.0, ..params() };
    let plans = plan_tick(now, &orders, &riders, &urgent, &travel());
    assert_eq!(keys(&plans), vec![(10, vec![3])], "the lone order near its promise goes first");
    // Early in its time it does not: the pair still wins.
    let early = plan_tick(10 * MIN, &orders, &[rider(10, 300.0, 0.0, 10)], &urgent, &travel());
    assert_eq!(keys(&early), vec![(10, vec![1, 2])]);
}

#[test]
fn urgency_counts_to_the_latest_pickup_not_the_promise() {
    // The same pair at store 0 and a lone order at store 1 promised at 30 minutes, now 3 km from
    // its store: a 10-minute ride and 2 of service, so a pickup after 18 minutes breaks its
    // promise. At 13 minutes the rider (free then, a minute from store 1) could pick it up at 15:
    // five sixths of its time to its latest pickup, though under half of its time to its promise.
    let orders = vec![
        promised(order(1, 1000.0, 0.0, 0), 60),
        promised(order(2, 1300.0, 0.0, 0), 60),
        at_store(promised(order(3, 600.0, 3000.0, 0), 30), 1, 600.0),
    ];
    let urgent = Params { urgency_weight: 6.0, ..params() };
    let plans = plan_tick(13 * MIN, &orders, &[rider(10, 300.0, 0.0, 13)], &urgent, &travel());
    assert_eq!(keys(&plans), vec![(10, vec![3])], "the far order goes before its time runs out");
    // The same order next door to its store still has time: the pair goes first.
    let mut near = orders.clone();
    near[2].drop = Pt::new(600.0, 300.0);
    let plans = plan_tick(13 * MIN, &near, &[rider(10, 300.0, 0.0, 13)], &urgent, &travel());
    assert_eq!(keys(&plans), vec![(10, vec![1, 2])]);
    // Counted from the earliest pickup: with the only rider free now but 10 minutes from the
    // store, the far order is urgent already at 6 minutes (a pickup at 17 of its 18).
    let far_rider = rider(10, 600.0, -3200.0, 6);
    let plans = plan_tick(6 * MIN, &orders, std::slice::from_ref(&far_rider), &urgent, &travel());
    assert_eq!(keys(&plans), vec![(10, vec![3])]);
}

#[test]
fn bundling_and_holding_back_can_be_turned_off() {
    let orders = vec![order(1, 1000.0, 0.0, 20), order(2, 1300.0, 0.0, 20)];
    let riders = vec![rider(10, 0.0, 0.0, 0), rider(11, 0.0, 0.0, 0)];
    let p = Params { max_bundle: 1, hold_back: false, ..params() };
    let plans = plan_tick(0, &orders, &riders, &p, &travel());
    assert_eq!(plans.len(), 2);
    assert!(plans.iter().all(|p| p.orders.len() == 1));
}

#[test]
fn routes_follow_the_mdrp_timing_rules() {
    // Travel 1000 m = ceil(3.125) = 4 minutes; service 2 minutes (half before, half after).
    let o = order(1, 1000.0, 0.0, 10);
    let r = rider(10, 1000.0, 0.0, 0);
    let plan = route(&travel(), &params(), &r, &[&o], 0).unwrap();
    assert_eq!(plan.arrive_store_at, 4 * MIN);
    assert_eq!(plan.pickup_at, 10 * MIN, "waits for the ready time");
    assert_eq!(plan.drop_at, vec![(10 + 1 + 4 + 1) * MIN]);
    assert_eq!(plan.free_at, 17 * MIN);
    assert_eq!(plan.end, Pt::new(1000.0, 0.0));
}

#[test]
fn greedy_serves_first_come_first_served() {
    let orders = vec![order(1, 0.0, 500.0, 0), at_store(order(2, 3000.0, 500.0, 0), 1, 3000.0)];
    // Order 1 (placed first; ties by key) goes to the rider who picks it up earliest, rider 10,
    // which leaves rider 11 the long way to store 1: what the optimizer avoids (decisions_table).
    let riders = vec![rider(10, 1400.0, 0.0, 0), rider(11, -1600.0, 0.0, 0)];
    let plans = greedy_tick(0, &orders, &riders, &params(), &travel());
    assert_eq!(keys(&plans), vec![(10, vec![1]), (11, vec![2])]);
    // With only the far rider, greedy still sends it at once.
    let plans = greedy_tick(0, &orders[..1], &riders[1..], &params(), &travel());
    assert_eq!(keys(&plans), vec![(11, vec![1])]);
}

#[test]
fn sequences_price_every_rider_as_best_sequence_does() {
    // Random bundles of 1 to 3 orders and riders near and far, busy and free, some off shift
    // soon: the precomputed sequences pick the same sequence at the same cost, and arrive when
    // `route` does.
    let mut seed: u64 = 0x9E3779B97F4A7C15;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let p = Params { promise_weight: 8.0, ..params() };
    for case in 0..2_000 {
        let n = 1 + rand(3) as usize;
        let orders: Vec<OrderIn> = (0..n)
            .map(|k| {
                let o = order(k, rand(4000) as f64 - 2000.0, rand(4000) as f64 - 2000.0, rand(15) as i64);
                promised(o, 10 + rand(40) as i64)
            })
            .collect();
        let bundle: Vec<&OrderIn> = orders.iter().collect();
        let sequences = Sequences::new(&travel(), &p, &bundle);
        for _ in 0..8 {
            let mut r = rider(0, rand(8000) as f64 - 4000.0, rand(8000) as f64 - 4000.0, rand(20) as i64);
            if rand(4) == 0 {
                r.off_at = rand(30) as i64 * MIN;
            }
            let now = rand(10) as i64 * MIN;
            let slow = best_sequence(&travel(), &p, &r, &bundle, now);
            let fast = sequences.best(&travel(), &p, &r, now);
            match (slow, fast) {
                (None, None) => {}
                (Some((seq, plan, c)), Some((i, arrive, fc))) => {
                    let keys: Vec<usize> = sequences.seqs[i].iter().map(|o| o.key).collect();
                    assert_eq!(keys, plan.orders, "case {case}: the same sequence");
                    assert_eq!(seq.len(), keys.len());
                    assert_eq!(fc, c, "case {case}: the same cost");
                    assert_eq!(arrive, plan.arrive_store_at, "case {case}");
                }
                (slow, fast) => panic!("case {case}: {slow:?} against {fast:?}"),
            }
        }
    }
}

#[test]
fn a_tick_on_several_threads_makes_the_plans_of_one() {
    // 120 stores on a line 3 km apart (enough to split across threads), 4–9 orders each, riders
    // scarce and some still busy: bundles, contention and waiting all occur.
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut orders = Vec::new();
    let mut riders = Vec::new();
    for s in 0..120u32 {
        let x = s as f64 * 3000.0;
        for _ in 0..4 + next(6) {
            let o = order(orders.len(), x + next(2000) as f64 - 1000.0, next(2000) as f64 - 1000.0, next(12) as i64);
            orders.push(promised(at_store(o, s, x), 20 + next(20) as i64));
        }
        for _ in 0..2 + next(4) {
            riders.push(rider(riders.len(), x + next(1500) as f64, next(1500) as f64, next(8) as i64));
        }
    }
    let one = plan_tick(4 * MIN, &orders, &riders, &Params { urgency_weight: 6.0, ..params() }, &travel());
    assert!(one.len() > 100 && one.iter().any(|p| p.orders.len() > 1), "a busy city: {} plans", one.len());
    for threads in [2, 3, 8] {
        let many =
            plan_tick(4 * MIN, &orders, &riders, &Params { urgency_weight: 6.0, threads, ..params() }, &travel());
        assert_eq!(many, one, "{threads} threads");
    }
}
