use super::*;

const T0: Millis = 1_800_000_000_000;

/// An open order started at `start` with a 10-minute estimate.
fn open(start: Millis, warm: bool, in_task: (usize, usize)) -> Open {
    Open {
        store_id: "s1".into(),
        start,
        pick_prior_ms: 0,
        pick_ms: 0,
        rider_ms: 0,
        rider_rank: 1,
        riders: 1,
        first_base_ms: 0,
        door_ms: 0,
        warm,
        in_task,
        packed_at: None,
        assigned_at: None,
        picked_at: None,
        planned_pickup_at: None,
        estimate_ms: 600_000,
        promised_by: start + 1_200_000,
        ready_by: start,
        eta_at: start + 600_000,
        told: None,
        assigned: in_task.0 > 0,
        pending: None,
    }
}

#[test]
fn the_margin_counts_open_orders_already_in_its_tail_and_only_those() {
    // Open orders (warm, place on a route, how far past their estimate now) → the margin.
    let late = |warm, pos| (1..=5).map(move |i| (warm, pos, 1.15 + 0.05 * f64::from(i))).collect::<Vec<_>>();
    type Case = (&'static str, Vec<(bool, usize, f64)>, f64);
    let cases: Vec<Case> = vec![
        ("none open: the delivered orders' 97th percentile", vec![], 0.97),
        ("five first on their routes past 1.2: in the tail (rank 102 of 105)", late(true, 1), 1.25),
        ("five waiting for a rider past 1.2", late(true, 0), 1.25),
        ("quoted cold: not counted", late(false, 1), 0.97),
        ("second on a route: the optimizer's to keep", late(true, 2), 0.97),
        ("running late but within the margin: never lowers it", vec![(true, 1, 0.5); 20], 0.97),
    ];
    let now = T0 + 3_600_000;
    for (what, orders, want) in cases {
        let p = Promises::new(TravelModel::default(), 60_000);
        {
            let mut l = p.learned.lock().unwrap();
            (1..=100).for_each(|i| l.margin.observe(f64::from(i) / 100.0));
        }
        for (i, (warm, pos, past)) in orders.into_iter().enumerate() {
            // Started (1 + past) estimates ago.
            let start = now - ((1.0 + past) * 600_000.0) as Millis;
            p.open.insert(format!("o{i}"), open(start, warm, (pos, pos.max(1))));
        }
        p.refresh_margin(now);
        let margin = p.learned.lock().unwrap().margin_now;
        assert!((margin - want).abs() < 1e-6, "{what}: {margin}");
    }
    // Nothing warm delivered yet: the margin is left to the cold quotes.
    let p = Promises::new(TravelModel::default(), 60_000);
    p.open.insert("o".into(), open(T0, true, (1, 1)));
    p.refresh_margin(now);
    assert_eq!(p.learned.lock().unwrap().margin_now, MARGIN_PRIOR);
}
