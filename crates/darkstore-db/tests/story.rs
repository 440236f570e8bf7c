//! The storage story, run on SQLite always and on PostgreSQL when `DARKSTORE_TEST_POSTGRES` is set.

use darkstore_db::scratch::ScratchDb;
use darkstore_db::{Committer, Db, LedgerRow, NewOrder, OrderStatusChange, Write};

/// The two tests of one scenario: on SQLite always, on PostgreSQL when `DARKSTORE_TEST_POSTGRES`
/// is set (each on a scratch database of its own, dropped after).
macro_rules! on_both_databases {
    ($sqlite:ident, $postgres:ident, $scenario:ident, $prefix:literal, $what:literal) => {
        #[tokio::test]
        async fn $sqlite() {
            let scratch = ScratchDb::sqlite($prefix);
            $scenario(&scratch.url).await;
            scratch.drop_database().await;
        }

        #[tokio::test]
        async fn $postgres() {
            let Some(scratch) = ScratchDb::postgres($prefix).await else {
                eprintln!(concat!("DARKSTORE_TEST_POSTGRES is not set: PostgreSQL ", $what, " skipped"));
                return;
            };
            $scenario(&scratch.url).await;
            scratch.drop_database().await;
        }
    };
}

fn ledger(
    store: &str,
    sku: &str,
    lot: i64,
    kind: &'static str,
    d_on_hand: i64,
    d_reserved: i64,
    order: Option<&str>,
) -> Write {
    Write::Ledger(LedgerRow {
        store_id: store.into(),
        sku: sku.into(),
        lot_id: lot,
        expires_at: if lot == 2 { Some(1_900_000_000_000) } else { None },
        kind,
        d_on_hand,
        d_reserved,
        order_id: order.map(str::to_owned),
        ts: 1_000,
    })
}

/// Store `s1`, plainly.
fn store_s1() -> Write {
    Write::Store {
        id: "s1".into(),
        name: "S".into(),
        lat: 12.97,
        lng: 77.64,
        timezone: None,
        hours: None,
        paused: None,
        ts: 0,
    }
}

fn order(id: &str, key: &str) -> NewOrder {
    NewOrder {
        id: id.into(),
        customer_id: "alice".into(),
        idempotency_key: key.into(),
        request_hash: "h".into(),
        store_id: "s1".into(),
        lat: 12.97,
        lng: 77.64,
        status: "confirmed",
        payment_status: "paid",
        total_minor: 12_000,
        delivery_code: Some("0420".into()),
        eta_minutes: 9,
        promised_by: 2_000 + 8 * 60_000 + 30_000,
        delivery_fee_minor: 2_500,
        created_at: 2_000,
        hold_expires_at: None,
        lines: vec![("milk".into(), 2, 4500), ("bread".into(), 1, 3000)],
    }
}

async fn story(url: &str) {
    let db = Db::connect(url).await.expect("connect");
    // Migrations are idempotent: connecting twice is fine.
    let db2 = Db::connect(url).await.expect("connect again");
    drop(db2);

    assert_eq!(db.setting_or_insert("jwt_secret", "first").await.unwrap(), "first");
    assert_eq!(db.setting_or_insert("jwt_secret", "second").await.unwrap(), "first");

    let (committer, task) = Committer::spawn(db.clone(), 256, 1024);
    committer
        .commit(vec![
            Write::Store {
                id: "s1".into(),
                name: "Old".into(),
                lat: 1.0,
                lng: 2.0,
                timezone: None,
                hours: None,
                paused: Some("inventory count".into()),
                ts: 1,
            },
            Write::Store {
                id: "s1".into(),
                name: "Indiranagar".into(),
                lat: 12.97,
                lng: 77.64,
                timezone: Some("Asia/Kolkata".into()),
                hours: Some(r#"{"mon":[["07:00","23:00"]]}"#.into()),
                paused: None,
                ts: 2,
            },
            Write::Product {
                sku: "milk".into(),
                name: "Milk".into(),
                category: "dairy".into(),
                price_minor: 4500,
                low_stock_threshold: 5,
                ts: 1,
            },
            Write::Product {
                sku: "bread".into(),
                name: "Bread".into(),
                category: "bakery".into(),
                price_minor: 3000,
                low_stock_threshold: 0,
                ts: 1,
            },
            Write::Rider { id: "r1".into(), name: "Ravi".into(), store_id: Some("s1".into()), ts: 1 },
            ledger("s1", "milk", 1, "restock", 10, 0, None),
            ledger("s1", "milk", 2, "restock", 5, 0, None),
            ledger("s1", "bread", 3, "restock", 4, 0, None),
        ])
        .await
        .unwrap();

    // Many orders at once: they share transactions.
    let mut waits = Vec::new();
    for i in 0..50 {
        let c = committer.clone();
        waits.push(tokio::spawn(async move {
            let id = format!("o{i}");
            let mut writes = vec![Write::Order(order(&id, &format!("k{i}")))];
            if i == 0 {
                writes.push(ledger("s1", "milk", 2, "reserve", 0, 2, Some(&id)));
                writes.push(ledger("s1", "bread", 3, "reserve", 0, 1, Some(&id)));
            }
            c.commit(writes).await
        }));
    }
    for w in waits {
        w.await.unwrap().unwrap();
    }
    // A duplicate idempotency key fails alone; the job committed with it still lands.
    let (a, b) = tokio::join!(
        committer.commit(vec![Write::Order(order("dup", "k1"))]),
        committer.commit(vec![Write::Order(order("o50", "k50"))])
    );
    assert!(a.is_err());
    assert!(b.is_ok());

    // o1 is cancelled; o0 is picked up: its reservation becomes a sale.
    committer
        .commit(vec![
            // A paid order cancelled: its refund is due, in the same row as its status.
            Write::Status(OrderStatusChange {
                store_id: "s1".into(),
                order_id: "o1".into(),
                status: "cancelled",
                payment_status: "refund_due",
                refund_minor: Some(12_000),
                rider_id: None,
                ts: 3_000,
            }),
            Write::Status(OrderStatusChange {
                store_id: "s1".into(),
                order_id: "o0".into(),
                status: "assigned",
                payment_status: "paid",
                refund_minor: None,
                rider_id: Some("r1".into()),
                ts: 3_000,
            }),
            Write::Status(OrderStatusChange {
                store_id: "s1".into(),
                order_id: "o0".into(),
                status: "picked_up",
                payment_status: "paid",
                refund_minor: None,
                rider_id: Some("r1".into()),
                ts: 3_001,
            }),
            ledger("s1", "milk", 2, "sale", -2, -2, Some("o0")),
            ledger("s1", "milk", 1, "damage", -1, 0, None),
        ])
        .await
        .unwrap();

    let snap = db.load().await.unwrap();
    assert_eq!(snap.stores.len(), 1);
    assert_eq!(snap.stores[0].name, "Indiranagar");
    assert_eq!(snap.stores[0].timezone.as_deref(), Some("Asia/Kolkata"));
    assert_eq!(snap.stores[0].hours.as_deref(), Some(r#"{"mon":[["07:00","23:00"]]}"#));
    assert_eq!(snap.stores[0].paused, None, "the later write wins, pause lifted");
    assert_eq!(snap.products.len(), 2);
    assert_eq!(snap.riders[0].store_id.as_deref(), Some("s1"));
    assert_eq!(snap.orders.len(), 51);
    let o0 = snap.orders.iter().find(|o| o.id == "o0").unwrap();
    assert_eq!(o0.status, "picked_up");
    assert_eq!(o0.rider_id.as_deref(), Some("r1"));
    assert_eq!(o0.lines.len(), 2);
    assert_eq!(o0.lines[0].sku, "milk");
    assert_eq!(snap.max_lot_id, 3);
    let lot = |id: i64| snap.lots.iter().find(|l| l.lot_id == id).map(|l| (l.on_hand, l.reserved, l.expires_at));
    assert_eq!(lot(1), Some((9, 0, None)));
    assert_eq!(lot(2), Some((3, 0, Some(1_900_000_000_000))));
    assert_eq!(lot(3), Some((4, 1, None)));
    // o0 was picked up, so it holds nothing; no other order reserved anything.
    assert!(snap.holds.is_empty(), "{:?}", snap.holds);
    let history: Vec<String> = db.order_events("o0").await.unwrap().into_iter().map(|e| e.0).collect();
    assert_eq!(history, ["confirmed", "assigned", "picked_up"]);
    let o1 = snap.orders.iter().find(|o| o.id == "o1").unwrap();
    assert_eq!((o1.status.as_str(), o1.payment_status.as_str()), ("cancelled", "refund_due"));
    assert_eq!((o1.total_minor, o1.refund_minor), (12_000, Some(12_000)));
    assert_eq!((o0.payment_status.as_str(), o0.refund_minor), ("paid", None));
    assert_eq!(o0.delivery_code.as_deref(), Some("0420"));
    assert_eq!((o0.promised_by, o0.delivery_fee_minor), (Some(2_000 + 8 * 60_000 + 30_000), 2_500));
    let payments: Vec<(String, Option<String>)> =
        db.payment_events("o1").await.unwrap().into_iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(payments, [("confirmed".into(), Some("paid".into())), ("cancelled".into(), Some("refund_due".into()))]);
    let totals = db.ledger_totals().await.unwrap();
    assert_eq!(totals, vec![("s1".into(), "bread".into(), 4, 1), ("s1".into(), "milk".into(), 12, 0)]);

    drop(committer);
    task.await.unwrap();
    db.close().await;
}

on_both_databases!(storage_story_on_sqlite, storage_story_on_postgres, story, "darkstore_story", "story");

#[tokio::test]
async fn a_bad_url_is_a_clear_error() {
    let err = Db::connect("mysql://nope").await.unwrap_err();
    assert!(err.to_string().contains("neither sqlite"), "{err}");
}

/// Fencing (cluster mode): a batch carrying a region's epoch commits only while no newer epoch
/// was committed for that region, and a fenced batch writes nothing at all.
async fn fencing(url: &str) {
    let db = Db::connect(url).await.expect("connect");
    let fence = |region: &str, epoch: i64| Write::Fence { region: region.into(), epoch };
    let restock = |lot: i64| ledger("s1", "milk", lot, "restock", 5, 0, None);
    db.write_batch(&[fence("r1", 10), restock(1)]).await.expect("first owner");
    db.write_batch(&[fence("r1", 10), restock(2)]).await.expect("the same epoch again");
    db.write_batch(&[fence("r1", 12), restock(3)]).await.expect("a newer owner");
    let stale = db.write_batch(&[restock(4), fence("r1", 11)]).await;
    assert!(matches!(stale, Err(darkstore_db::DbError::Fenced(ref r)) if r == "r1"), "{stale:?}");
    // Another region's epoch is its own.
    db.write_batch(&[fence("r2", 1), restock(5)]).await.expect("another region");
    let lots: Vec<i64> = db.load().await.unwrap().lots.iter().map(|l| l.lot_id).collect();
    assert_eq!(lots, vec![1, 2, 3, 5], "the fenced batch wrote nothing");
    // Through the committer, a fenced job fails alone; the others of its group commit.
    let (committer, task) = Committer::spawn(db.clone(), 256, 1024);
    let (a, b) = tokio::join!(
        committer.commit(vec![fence("r1", 11), restock(6)]),
        committer.commit(vec![fence("r2", 1), restock(7)])
    );
    assert!(matches!(a, Err(darkstore_db::DbError::Fenced(_))), "{a:?}");
    b.expect("the other region's job");
    drop(committer);
    task.await.unwrap();
    db.close().await;
}

on_both_databases!(fencing_on_sqlite, fencing_on_postgres, fencing, "darkstore_fence", "fencing");

/// A start reads the same lots whether the ledger was checkpointed or not, however the rows fall
/// around the checkpoints; the full ledger still sums to the same (the audit).
async fn checkpoints(url: &str) {
    let db = Db::connect(url).await.unwrap();
    db.write_batch(&[store_s1()]).await.unwrap();
    let lots = |snap: darkstore_db::Snapshot| {
        let mut l: Vec<(i64, i64, i64, Option<i64>)> =
            snap.lots.iter().map(|l| (l.lot_id, l.on_hand, l.reserved, l.expires_at)).collect();
        l.sort();
        (l, snap.max_lot_id)
    };
    let mut seed = 11u64;
    for round in 0..6 {
        // Restocks, reservations and sales over a few lots, with and without an expiry.
        let mut writes = Vec::new();
        for i in 0..40 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let lot = (seed >> 40) as i64 % 5 + 1;
            let (kind, d_on_hand, d_reserved) = match (seed >> 20) % 3 {
                0 => ("restock", 10, 0),
                1 => ("reserve", 0, 1),
                _ => ("sale", -1, -1),
            };
            writes.push(ledger("s1", &format!("sku{lot}"), lot, kind, d_on_hand + i % 2, d_reserved, None));
        }
        if round % 2 == 1 {
            writes.push(Write::Checkpoint);
        }
        db.write_batch(&writes).await.unwrap();
        let checkpointed = lots(db.load().await.unwrap());
        // The same lots summed from the whole ledger, as before there were checkpoints.
        let mut whole: Vec<(i64, i64, i64, Option<i64>)> = Vec::new();
        for (store, sku, on_hand, reserved) in db.ledger_totals().await.unwrap() {
            assert_eq!(store, "s1");
            let lot: i64 = sku.trim_start_matches("sku").parse().unwrap();
            whole.push((lot, on_hand, reserved, if lot == 2 { Some(1_900_000_000_000) } else { None }));
        }
        whole.retain(|l| l.1 != 0 || l.2 != 0);
        whole.sort();
        assert_eq!(checkpointed.0, whole, "round {round}");
        assert_eq!(checkpointed.1, 5, "round {round}");
        // A checkpoint with nothing new changes nothing.
        db.write_batch(&[Write::Checkpoint]).await.unwrap();
        assert_eq!(lots(db.load().await.unwrap()), checkpointed, "round {round}");
    }
}

on_both_databases!(checkpoints_on_sqlite, checkpoints_on_postgres, checkpoints, "darkstore_checkpoint", "checkpoints");

/// Top picks' units per day read the same whether the days were rolled up or not; a day rolled
/// up is read from the roll-up (an order of it committed later is not counted), the days after
/// from the orders; a roll-up moves a day at a time and never past the days that are over.
async fn roll_ups(url: &str) {
    const DAY: i64 = 86_400_000;
    let db = Db::connect(url).await.unwrap();
    let mut catalog = vec![store_s1()];
    for sku in ["milk", "bread"] {
        catalog.push(Write::Product {
            sku: sku.into(),
            name: sku.into(),
            category: "c".into(),
            price_minor: 100,
            low_stock_threshold: 0,
            ts: 0,
        });
    }
    db.write_batch(&catalog).await.unwrap();
    let d0 = 20_000;
    let placed = |n: usize, day: i64, milk: i64| {
        let mut o = order(&format!("o{day}-{n}"), &format!("k{day}-{n}"));
        o.created_at = day * DAY + 1_000 * n as i64;
        o.lines = vec![("milk".into(), milk, 100), ("bread".into(), 1, 100)];
        Write::Order(o)
    };
    // Three days of orders; a line of 9 milk counts as 5.
    let mut writes = Vec::new();
    for day in d0..d0 + 3 {
        for n in 0..4 {
            writes.push(placed(n, day, if n == 0 { 9 } else { 2 }));
        }
    }
    db.write_batch(&writes).await.unwrap();
    let sorted = |mut v: Vec<(String, String, i64, i64)>| {
        v.sort();
        v
    };
    let live = sorted(db.units_per_day_since(d0 * DAY).await.unwrap());
    let expected: Vec<(String, String, i64, i64)> = (d0..d0 + 3)
        .flat_map(|d| [("s1".to_owned(), "bread".to_owned(), d, 4), ("s1".to_owned(), "milk".to_owned(), d, 11)])
        .collect();
    assert_eq!(live, sorted(expected.clone()));
    // Days d0 and d0 + 1 are over: a roll-up a write, never past them.
    for _ in 0..4 {
        db.write_batch(&[Write::RollUp { complete_before: d0 + 2 }]).await.unwrap();
    }
    assert_eq!(db.setting("units_rolled_up_to").await.unwrap().as_deref(), Some("20002"));
    assert_eq!(sorted(db.units_per_day_since(d0 * DAY).await.unwrap()), live, "the same, rolled up");
    // Only days from `since` on.
    let later = sorted(db.units_per_day_since((d0 + 1) * DAY).await.unwrap());
    assert_eq!(later, live.iter().filter(|r| r.2 > d0).cloned().collect::<Vec<_>>());
    // An order of a rolled-up day committed after its roll-up is not read; one of a later day is.
    db.write_batch(&[placed(7, d0, 1), placed(8, d0 + 2, 1)]).await.unwrap();
    let after = sorted(db.units_per_day_since(d0 * DAY).await.unwrap());
    let bump = |mut v: Vec<(String, String, i64, i64)>| {
        for r in v.iter_mut().filter(|r| r.2 == d0 + 2) {
            r.3 += 1;
        }
        v
    };
    assert_eq!(after, bump(live.clone()));
}

on_both_databases!(roll_ups_on_sqlite, roll_ups_on_postgres, roll_ups, "darkstore_roll_up", "roll-ups");
