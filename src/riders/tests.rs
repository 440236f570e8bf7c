use super::*;

const T0: Millis = 1_800_000_000_000;

fn fix(lat: f64, lng: f64, ts: i64) -> Fix {
    Fix { lat, lng, ts, speed_mps: None }
}

fn riders() -> Riders {
    Riders::new(30_000, None, Arc::new(Changes::new()))
}

fn task(id: &str, orders: &[&str]) -> Task {
    Task {
        id: id.into(),
        store_id: "s".into(),
        pickup: (12.97, 77.64),
        orders: orders.iter().map(|o| TaskOrder { id: (*o).into(), lat: 12.98, lng: 77.64 }).collect(),
        picked: vec![],
        assigned_at: T0,
        pickup_eta: T0,
        free_at: T0,
        end: (0.0, 0.0),
        sent: false,
    }
}

#[test]
fn position_checks_table() {
    let fleet = riders();
    fleet.upsert("r1", "R1", None);
    fleet.shift("r1", true, T0).unwrap();
    assert_eq!(fleet.location("r1", fix(12.97, 77.64, T0), T0), Ok(()));
    // (what, rider, report, expected)
    let cases: Vec<(&str, &str, Fix, Result<(), Dropped>)> = vec![
        ("unknown rider", "ghost", fix(12.97, 77.64, T0 + 1000), Err(Dropped::UnknownRider)),
        ("older than the last", "r1", fix(12.97, 77.64, T0 - 1), Err(Dropped::Stale)),
        ("same timestamp", "r1", fix(12.97, 77.64, T0), Err(Dropped::Stale)),
        ("latitude out of range", "r1", fix(91.0, 77.64, T0 + 1000), Err(Dropped::Implausible)),
        ("NaN", "r1", fix(f64::NAN, 77.64, T0 + 1000), Err(Dropped::Implausible)),
        ("an hour in the future", "r1", fix(12.97, 77.64, T0 + 3_600_000), Err(Dropped::Implausible)),
        ("a 10 km jump in a second", "r1", fix(13.06, 77.64, T0 + 1000), Err(Dropped::Implausible)),
        (
            "absurd reported speed",
            "r1",
            Fix { speed_mps: Some(500.0), ..fix(12.97, 77.64, T0 + 1000) },
            Err(Dropped::Implausible),
        ),
        ("a timestamp before time began", "ghost", fix(12.97, 77.64, i64::MIN + 1), Err(Dropped::UnknownRider)),
        ("10 m in a second", "r1", fix(12.97009, 77.64, T0 + 1000), Ok(())),
    ];
    for (what, rider, report, expected) in cases {
        assert_eq!(fleet.location(rider, report, T0 + 1000), expected, "{what}");
    }
    assert_eq!(fleet.nearest(12.97, 77.64, 5), vec!["r1".to_owned()]);
    // Extreme client timestamps never overflow: a first fix from the far past, then a jump.
    fleet.upsert("r2", "R2", None);
    assert_eq!(fleet.location("r2", fix(12.97, 77.64, i64::MIN + 1), T0), Ok(()));
    assert_eq!(fleet.location("r2", fix(13.5, 77.64, T0), T0), Ok(()), "a jump over all of time is plausible");
}

#[test]
fn only_idle_fresh_riders_on_shift_are_indexed() {
    let fleet = riders();
    for r in ["a", "b", "c"] {
        fleet.upsert(r, r, None);
        fleet.location(r, fix(12.97, 77.64, T0), T0).unwrap();
    }
    assert!(fleet.nearest(12.97, 77.64, 5).is_empty(), "nobody is on shift");
    fleet.shift("a", true, T0).unwrap();
    fleet.shift("b", true, T0).unwrap();
    assert!(fleet.assign("b", task("t", &["o1"]), T0));
    assert_eq!(fleet.nearest(12.97, 77.64, 5), vec!["a".to_owned()]);
    // b goes off shift before pickup: its order must go back; a falls silent.
    assert_eq!(fleet.shift("b", false, T0 + 1000).unwrap(), vec!["o1".to_owned()]);
    assert!(fleet.leave_task("b", "o1", T0 + 1000));
    assert!(fleet.sweep_silent(T0 + 31_000).is_empty());
    assert!(fleet.nearest(12.97, 77.64, 5).is_empty());
}

#[test]
fn picked_up_orders_stay_with_the_rider() {
    let fleet = riders();
    fleet.upsert("r", "R", None);
    fleet.shift("r", true, T0).unwrap();
    fleet.location("r", fix(12.97, 77.64, T0), T0).unwrap();
    assert!(fleet.assign("r", task("t", &["o1", "o2"]), T0));
    fleet.progress("r", Progress::PickedUp, "o1", T0 + 1);
    // Silent before picking up o2: only o2 goes back.
    let back = fleet.sweep_silent(T0 + 40_000);
    assert_eq!(back, vec![("r".to_owned(), vec!["o2".to_owned()])]);
    assert!(fleet.leave_task("r", "o2", T0 + 40_000));
    fleet.progress("r", Progress::Delivered, "o1", T0 + 50_000);
    assert_eq!(fleet.get("r").unwrap().status, RiderStatus::Idle);
}

/// Records the tasks the riders are sent.
#[derive(Default)]
struct Sent(std::sync::Mutex<Vec<(String, Option<Vec<String>>)>>);

impl Observer for Sent {
    fn observe(&self, change: &Change<'_>, _hub: &Changes) {
        if let Change::Task { rider, task } = change {
            let orders = Some(task.order_ids().map(str::to_owned).collect::<Vec<_>>()).filter(|o| !o.is_empty());
            self.0.lock().unwrap().push(((*rider).to_owned(), orders));
        }
    }
}

#[test]
fn an_order_leaving_a_sent_task_sends_it_again_and_the_last_one_withdraws_it() {
    let changes = Arc::new(Changes::new());
    let sent = Arc::new(Sent::default());
    let fleet = Arc::new(Riders::new(30_000, None, changes.clone()));
    let observers: Vec<std::sync::Weak<dyn Observer>> = vec![
        Arc::downgrade(&fleet) as std::sync::Weak<dyn Observer>,
        Arc::downgrade(&sent) as std::sync::Weak<dyn Observer>,
    ];
    changes.attach(observers);
    fleet.upsert("r", "R", None);
    fleet.shift("r", true, T0).unwrap();
    fleet.location("r", fix(12.97, 77.64, T0), T0).unwrap();
    assert!(fleet.assign("r", task("t", &["o1", "o2"]), T0));
    // Not yet sent: leaving it tells nobody.
    assert!(fleet.leave_task("r", "o2", T0));
    assert!(fleet.leave_task("r", "o1", T0));
    assert!(!fleet.leave_task("r", "o1", T0), "an order leaves once");
    assert!(sent.0.lock().unwrap().is_empty());
    assert!(fleet.get("r").unwrap().task.is_none(), "the task ended with its last order");
    assert!(fleet.assign("r", task("t3", &["o1", "o2"]), T0));
    assert_eq!(fleet.send_task("r", "t3").map(|t| t.orders.len()), Some(2));
    // A cancelled order (assigned -> cancelled) leaves the task through the observer.
    let order = |id: &str, status, rider: Option<&str>| Order {
        id: id.into(),
        customer_id: "c".into(),
        idempotency_key: "k".into(),
        request_hash: "h".into(),
        store_id: "s".into(),
        lat: 0.0,
        lng: 0.0,
        status,
        payment_status: darkstore_geoinv::order::PaymentStatus::None,
        total_minor: 0,
        refund_minor: None,
        delivery_code: None,
        rider_id: rider.map(Into::into),
        eta_minutes: 0,
        promised_by: T0 + 600_000,
        quoted: None,
        delivery_fee_minor: 0,
        created_at: T0,
        updated_at: T0 + 5,
        hold_expires_at: None,
        lines: vec![],
        holds: vec![],
        packed_at: None,
    };
    let before = |rider: &str| {
        Some(crate::model::OrderBefore {
            status: OrderStatus::Assigned,
            payment_status: darkstore_geoinv::order::PaymentStatus::None,
            rider_id: Some(rider.into()),
        })
    };
    changes.emit(&Change::Order { order: &order("o1", OrderStatus::Cancelled, None), before: before("r") });
    // Picked up: still the rider's, nothing is sent.
    changes.emit(&Change::Order { order: &order("o2", OrderStatus::PickedUp, Some("r")), before: before("r") });
    changes.emit(&Change::Order { order: &order("o2", OrderStatus::Packed, None), before: before("r") });
    let log = sent.0.lock().unwrap().clone();
    assert_eq!(
        log,
        vec![
            ("r".to_owned(), Some(vec!["o1".to_owned(), "o2".to_owned()])),
            ("r".to_owned(), Some(vec!["o2".to_owned()])),
            ("r".to_owned(), None),
        ]
    );
    let r = fleet.get("r").unwrap();
    assert_eq!((r.status, r.task), (RiderStatus::Idle, None));
    assert_eq!(fleet.nearest(12.97, 77.64, 1), vec!["r".to_owned()], "free for the next tick");
}
