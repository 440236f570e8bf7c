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
        planned_at: None,
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
        ("none open: the delivered orders' 98th percentile", vec![], 0.98),
        ("five first on their routes past 1.2: in the tail (rank 103 of 105)", late(true, 1), 1.3),
        ("five waiting for a rider past 1.2", late(true, 0), 1.3),
        ("quoted cold: not counted", late(false, 1), 0.98),
        ("second on a route: the optimizer's to keep", late(true, 2), 0.98),
        ("running late but within the margin: never lowers it", vec![(true, 1, 0.5); 20], 0.98),
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

/// An order of a test, as delivered at `at` by rider `r`.
fn delivered_order(id: &str, at: Millis) -> Order {
    Order {
        id: id.into(),
        customer_id: "c".into(),
        idempotency_key: "k".into(),
        request_hash: "h".into(),
        store_id: "s1".into(),
        lat: 12.97,
        lng: 77.64,
        status: OrderStatus::Delivered,
        payment_status: darkstore_geoinv::order::PaymentStatus::None,
        total_minor: 0,
        refund_minor: None,
        delivery_code: None,
        rider_id: Some("r".into()),
        eta_minutes: 0,
        promised_by: 0,
        quoted: None,
        delivery_fee_minor: 0,
        created_at: T0,
        updated_at: at,
        hold_expires_at: None,
        lines: vec![],
        holds: vec![],
        packed_at: None,
    }
}

#[test]
fn a_bundle_keeps_what_its_plans_have_been_seen_to_slip() {
    let p = Promises::new(TravelModel::default(), 60_000);
    // Orders delivered (ordinal, place on its route, seconds later than planned at assignment).
    let deliver = |p: &Promises, i: usize, in_task: (usize, usize), slip_s: i64| {
        let planned = T0 + 600_000;
        let mut o = open(T0, true, in_task);
        o.planned_at = Some(planned);
        p.open.insert(format!("o{i}"), o);
        p.delivered(&delivered_order(&format!("o{i}"), planned + slip_s * 1000), planned + slip_s * 1000);
    };
    for i in 0..(MARGIN_MIN - 1) {
        deliver(&p, i, (1, 2), 30);
    }
    assert_eq!(p.bundle_slack_ms(), None, "too few seen: the dispatcher keeps half the margin");
    // Lone orders say nothing of a bundle's plan.
    (100..200).for_each(|i| deliver(&p, i, (1, 1), 600));
    assert_eq!(p.bundle_slack_ms(), None);
    // One more bundled order: ten seen, slipping 30 s; then 1..=100 s over the window.
    deliver(&p, 9, (2, 2), 30);
    assert_eq!(p.bundle_slack_ms(), Some(30_000));
    (1..=100).for_each(|s| deliver(&p, 1000 + s as usize, (2, 3), s));
    assert_eq!(p.bundle_slack_ms(), Some(98_000), "the 98th percentile of the last hundred");
    // Bundles that arrive early leave the whole promise to bundling, never more.
    (0..100).for_each(|i| deliver(&p, 2000 + i, (1, 2), -120));
    assert_eq!(p.bundle_slack_ms(), Some(0));
}

#[test]
fn the_first_mile_never_shortens_an_estimate_and_the_margin_never_cuts_one() {
    let p = Promises::new(TravelModel::default(), 60_000);
    {
        let mut l = p.learned.lock().unwrap();
        let b = Bounds::default();
        (0..50).for_each(|_| l.city_first.observe(0.7, &b));
    }
    assert_eq!(p.calibrated("s1").first, 1.0, "a first mile shorter than modelled is not trusted");
    {
        let mut l = p.learned.lock().unwrap();
        let b = Bounds::default();
        (0..50).for_each(|_| l.city_first.observe(1.5, &b));
    }
    assert!(p.calibrated("s1").first > 1.3, "a longer one is: {}", p.calibrated("s1").first);
    // Cold quotes from priors far too slow: every error negative, the margin 0, not below.
    for i in 0..20 {
        let mut o = open(T0, false, (1, 1));
        o.estimate_ms = 3_000_000;
        p.open.insert(format!("c{i}"), o);
        p.delivered(&delivered_order(&format!("c{i}"), T0 + 300_000), T0 + 300_000);
    }
    assert_eq!(p.calibrated("s1").margin, 0.0);
}

#[test]
fn the_city_speed_starts_from_a_median_not_from_one_device() {
    let p = Promises::new(TravelModel::default(), 60_000);
    let fix = |ts: Millis, lat: f64| Rider {
        id: "r".into(),
        name: "R".into(),
        store_id: None,
        pos: Some((lat, 77.64)),
        ts,
        seen_at: ts,
        on_shift: true,
        status: crate::model::RiderStatus::Idle,
        task: None,
    };
    // 111 m a step: first 1.4 s apart by a clock that jumped (twenty times the priors' speed),
    // then four at the priors' pace (31 s for 111 m at 5 m/s and a detour of 1.4 — just over
    // the 30 s a pair may span, so 25 s: a ratio of about 0.8).
    let mut ts = T0;
    p.observe_speed(&fix(ts, 12.970));
    ts += 1_400;
    p.observe_speed(&fix(ts, 12.971));
    assert_eq!(p.summary().observed[3], 0, "one observation starts nothing");
    for i in 2..=5 {
        ts += 25_000;
        p.observe_speed(&fix(ts, 12.970 + 0.001 * f64::from(i)));
    }
    let s = p.summary();
    assert_eq!(s.observed[3], 1, "five observations start the ratio with their median");
    assert!((0.7..0.9).contains(&s.speed), "the median, not the jump: {}", s.speed);
}
