//! The lifecycle with a fixed clock: hold expiry, payments in every order, retention, and a
//! restart, without sleeping. Real SQLite underneath.

use std::sync::Arc;

use darkstore_db::scratch::ScratchDb;
use darkstore_db::{Committer, Db};
use darkstore_geoinv::order::{OrderStatus, PaymentEvent as E, PaymentOutcome, PaymentStatus as P};
use darkstore_geoinv::travel::TravelModel;

use super::*;
use crate::changes::Changes;
use crate::clock::ManualClock;

const T0: Millis = 1_800_000_000_000;
const HOLD_MS: Millis = 15 * 60_000;

struct World {
    state: Arc<State>,
    clock: Arc<ManualClock>,
    scratch: ScratchDb,
}

async fn state_on(url: &str, clock: Arc<ManualClock>) -> State {
    state_loading(url, clock, |_| darkstore_db::Since::ALL).await
}

/// A state started from the database, reading back what `since` says of its finished orders.
async fn state_loading(
    url: &str,
    clock: Arc<ManualClock>,
    since: impl FnOnce(&StateConfig) -> darkstore_db::Since,
) -> State {
    let db = Db::connect(url).await.unwrap();
    let (committer, _task) = Committer::spawn(db.clone(), 64, 1024);
    let config = StateConfig {
        travel: TravelModel::default(),
        payment_hold_ms: Some(HOLD_MS),
        order_retention_ms: 60 * 60_000,
        key_retention_ms: 24 * 3_600_000,
        quote: darkstore_geoinv::quote::QuoteParams { pick_ms: 120_000, pickers: 1, handover_ms: 0, cycle_ms: 600_000 },
        max_eta_minutes: None,
        delivery_fee_minor: 0,
    };
    let snapshot = db.load_since(since(&config)).await.unwrap();
    State::from_snapshot(config, db, committer, snapshot, clock, Arc::new(Changes::new()))
}

async fn world(name: &str) -> World {
    world_on(ScratchDb::sqlite(name)).await
}

async fn world_on(scratch: ScratchDb) -> World {
    let clock = Arc::new(ManualClock::new(T0));
    let state = Arc::new(state_on(&scratch.url, clock.clone()).await);
    state.put_store("s1", "Indiranagar", 12.9719, 77.6412, Default::default()).await.unwrap();
    state.put_product(Product::new("milk", "Milk".into(), "dairy".into(), 4500, 5)).await.unwrap();
    state.adjust_stock("s1", "milk", 100, "restock", None).await.unwrap();
    World { state, clock, scratch }
}

impl World {
    async fn place(&self, key: &str, qty: i64) -> Order {
        let req = PlaceOrder {
            customer_id: "alice".into(),
            idempotency_key: key.into(),
            request_hash: key.into(),
            lat: 12.9729,
            lng: 77.6412,
            lines: vec![("milk".into(), qty)],
        };
        self.state.place_order(req).await.unwrap().order
    }

    fn available(&self) -> i64 {
        let store = self.state.store("s1").unwrap();
        self.state.stock_lines(&store)[0].totals.available
    }

    async fn pay(&self, id: &str, e: E) -> (OrderStatus, P, Option<i64>, PaymentOutcome) {
        let a = self.state.payment_event(id, e).await.unwrap();
        (a.order.status, a.order.payment_status, a.order.refund_minor, a.outcome)
    }
}

#[test]
fn order_ids_sort_by_time_and_cannot_be_counted() {
    let a = orders::new_order_id(T0);
    let b = orders::new_order_id(T0);
    let c = orders::new_order_id(T0 + 1);
    assert_eq!(a.len(), 19);
    assert!(darkstore_geoinv::ids::valid_id(&a), "{a}");
    assert_ne!(a, b, "two orders in the same millisecond differ");
    assert_eq!(a[..11], b[..11], "the time part is shared");
    assert!(a < c && b < c, "later orders sort later: {a} {b} {c}");
    let ids: std::collections::HashSet<String> = (0..10_000).map(|_| orders::new_order_id(T0)).collect();
    assert_eq!(ids.len(), 10_000);
}

#[tokio::test]
async fn a_hold_runs_out_by_the_clock_and_a_late_payment_is_owed_back() {
    let w = world("ds_state_hold").await;
    let o = w.place("k1", 2).await;
    assert_eq!((o.status, o.payment_status, o.total_minor), (OrderStatus::PendingPayment, P::Held, 9000));
    assert_eq!(w.available(), 98);
    w.clock.advance(HOLD_MS - 1);
    w.state.expire_holds().await;
    assert_eq!(w.state.order(&o.id).unwrap().lock().await.status, OrderStatus::PendingPayment, "not yet");
    w.clock.advance(1);
    w.state.expire_holds().await;
    assert_eq!(w.state.order(&o.id).unwrap().lock().await.status, OrderStatus::Expired);
    assert_eq!(w.available(), 100, "the hold's stock is back");
    // The provider captured the money after all: the order stays expired and the money is owed.
    let (status, payment, refund, outcome) = w.pay(&o.id, E::Succeeded).await;
    assert_eq!((status, payment, refund), (OrderStatus::Expired, P::RefundDue, Some(9000)));
    assert!(matches!(outcome, PaymentOutcome::Apply { refund: true, .. }));
    assert_eq!(w.pay(&o.id, E::Succeeded).await.3, PaymentOutcome::Duplicate);
    assert_eq!(w.available(), 100, "a late payment takes no stock");
    w.scratch.drop_database().await;
}

#[tokio::test]
async fn webhooks_in_any_order_never_undo_a_payment() {
    webhooks_in_any_order(world("ds_state_webhooks").await).await;
}

#[tokio::test]
async fn webhooks_in_any_order_never_undo_a_payment_on_postgres() {
    match ScratchDb::postgres("ds_state_webhooks").await {
        Some(scratch) => webhooks_in_any_order(world_on(scratch).await).await,
        None => eprintln!("DARKSTORE_TEST_POSTGRES is not set: skipped on PostgreSQL"),
    }
}

async fn webhooks_in_any_order(w: World) {
    // (events, final status, payment, refund)
    let cases: Vec<(&[E], OrderStatus, P, Option<i64>)> = vec![
        (&[E::Succeeded], OrderStatus::Confirmed, P::Paid, None),
        (&[E::Succeeded, E::Succeeded], OrderStatus::Confirmed, P::Paid, None),
        (&[E::Succeeded, E::Failed], OrderStatus::Confirmed, P::Paid, None),
        (&[E::Failed], OrderStatus::Cancelled, P::Failed, None),
        (&[E::Failed, E::Failed], OrderStatus::Cancelled, P::Failed, None),
        (&[E::Failed, E::Succeeded], OrderStatus::Cancelled, P::RefundDue, Some(4500)),
        (&[E::Failed, E::Succeeded, E::Refunded], OrderStatus::Cancelled, P::Refunded, Some(4500)),
        (&[E::Refunded], OrderStatus::PendingPayment, P::Held, None),
        (&[E::Succeeded, E::Refunded], OrderStatus::Confirmed, P::Paid, None),
    ];
    for (i, (events, status, payment, refund)) in cases.into_iter().enumerate() {
        let o = w.place(&format!("w{i}"), 1).await;
        for e in events {
            w.pay(&o.id, *e).await;
        }
        let got = w.state.order(&o.id).unwrap().lock().await.clone();
        assert_eq!((got.status, got.payment_status, got.refund_minor), (status, payment, refund), "{events:?}");
    }
    // A paid order cancelled by anyone owes its total back; a refund closes it; nothing reopens it.
    let o = w.place("paid-then-cancelled", 3).await;
    w.pay(&o.id, E::Succeeded).await;
    let c = w.state.transition(&o.id, OrderStatus::Cancelled, None, |_| true).await.unwrap();
    assert_eq!((c.payment_status, c.refund_minor), (P::RefundDue, Some(13_500)));
    assert_eq!(w.pay(&o.id, E::Failed).await.3, PaymentOutcome::Ignored);
    assert_eq!(w.pay(&o.id, E::Refunded).await.1, P::Refunded);
    assert_eq!(w.pay(&o.id, E::Refunded).await.3, PaymentOutcome::Duplicate);
    assert_eq!(w.pay(&o.id, E::Succeeded).await.3, PaymentOutcome::Ignored);
    // Unknown orders are not found.
    assert!(matches!(w.state.payment_event("o999", E::Succeeded).await, Err(TransitionError::NotFound)));

    // Everything above is durable: a restart reads the same payments back.
    let again = state_on(&w.scratch.url, w.clock.clone()).await;
    let back = again.order(&o.id).unwrap().lock().await.clone();
    assert_eq!(
        (back.status, back.payment_status, back.refund_minor, back.total_minor),
        (OrderStatus::Cancelled, P::Refunded, Some(13_500), 13_500)
    );
    let history = w.state.db.payment_events(&o.id).await.unwrap();
    let payments: Vec<&str> = history.iter().filter_map(|e| e.1.as_deref()).collect();
    assert_eq!(payments, ["held", "paid", "refund_due", "refunded"]);
    w.scratch.drop_database().await;
}

#[tokio::test]
async fn finished_orders_leave_memory_by_the_clock_and_are_read_back() {
    let w = world("ds_state_retention").await;
    let o = w.place("r1", 1).await;
    w.pay(&o.id, E::Succeeded).await;
    w.state.transition(&o.id, OrderStatus::Cancelled, None, |_| true).await.unwrap();
    w.clock.advance(59 * 60_000);
    assert_eq!(w.state.evict_finished_orders(), 0);
    w.clock.advance(2 * 60_000);
    assert_eq!(w.state.evict_finished_orders(), 1);
    assert!(w.state.order(&o.id).is_none());
    // A refund for an order no longer in memory still lands, once.
    assert_eq!(w.pay(&o.id, E::Refunded).await.1, P::Refunded);
    assert_eq!(w.pay(&o.id, E::Refunded).await.3, PaymentOutcome::Duplicate);
    let stored = w.state.db.order(&o.id).await.unwrap().unwrap();
    assert_eq!(stored.payment_status, "refunded");
    w.scratch.drop_database().await;
}

#[tokio::test]
async fn a_kept_page_patched_or_read_again_is_always_a_fresh_read() {
    use crate::http::pages::{Pages, serialize};
    use darkstore_geoinv::stock::{LotId, Want};
    let w = world("ds_state_pages").await;
    let store = w.state.store("s1").unwrap();
    let text = |p: &crate::http::pages::PageJson| {
        let mut s = String::new();
        p.write_to(&mut s);
        s
    };
    // 80 products: pages of more than one piece.
    let sku = |i: u64| format!("p{:02}", i % 80);
    for i in 0..80 {
        let category = if i % 3 == 0 { "fruit" } else { "dairy" };
        w.state.put_product(Product::new(&sku(i), format!("P{i}"), category.into(), 100, 5)).await.unwrap();
        if i % 4 != 3 {
            let expires = (i % 5 == 0).then_some(T0 + (i as i64 + 1) * 60_000);
            w.state.adjust_stock("s1", &sku(i), 3, "restock", expires).await.unwrap();
        }
    }
    let pages = Pages::default();
    // (category, limit): full pages, a full page of one category, a page with everything.
    let keys = [(None, 10), (None, 40), (Some("fruit"), 12), (None, 200)];
    let mut seed = 7u64;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for step in 0..600 {
        // The stock moves as orders, restocks, write-offs and time move it.
        let (s, op) = (sku(next(80)), next(10));
        if op == 8 {
            w.clock.advance(60_000);
        }
        let now = w.state.now();
        {
            let mut stock = store.stock.lock().unwrap();
            match op {
                0..=4 => _ = stock.reserve(&[Want { sku: &s, qty: 1 }], now),
                5..=6 => _ = stock.adjust(&s, 2, LotId(10_000 + step), None, now),
                7 => _ = stock.adjust(&s, -1, LotId(0), None, now),
                8 => _ = stock.expire(now),
                _ => {}
            }
        }
        if step == 300 {
            w.state.put_product(Product::new("p05", "P5 renamed".into(), "fruit".into(), 120, 5)).await.unwrap();
        }
        for (category, limit) in keys {
            let served = pages.page(&w.state, &store, 0, category, None, limit);
            let fresh = serialize(&w.state.availability_at(&store, 0, category, None, limit));
            assert_eq!(
                (text(&served), served.n_items, &served.next),
                (text(&fresh), fresh.n_items, &fresh.next),
                "step {step}, {category:?} {limit}"
            );
        }
    }
    let c = &pages.counters;
    let [kept, patched, read] = [&c.kept, &c.patched, &c.read].map(|n| n.load(std::sync::atomic::Ordering::Relaxed));
    // Read again only when time (a lot expiring) or the catalog moved; patched otherwise.
    assert!(
        kept > 0 && patched > 300 && read > 0 && read < patched / 10,
        "kept {kept}, patched {patched}, read {read}"
    );
    w.scratch.drop_database().await;
}

#[tokio::test]
async fn a_kept_page_loses_its_next_page_when_the_items_past_it_sell_out() {
    use crate::http::pages::{Pages, serialize};
    use darkstore_geoinv::stock::Want;
    let w = world("ds_state_page_next").await;
    let store = w.state.store("s1").unwrap();
    for sku in ["a", "b", "c"] {
        w.state.put_product(Product::new(sku, sku.to_uppercase(), "snacks".into(), 100, 5)).await.unwrap();
        w.state.adjust_stock("s1", sku, 2, "restock", None).await.unwrap();
    }
    let pages = Pages::default();
    // The world's other products are not snacks.
    let page = |pages: &Pages| pages.page(&w.state, &store, 0, Some("snacks"), None, 2);
    assert_eq!((page(&pages).n_items, page(&pages).next.as_deref()), (2, Some("b")));
    // An item on the page moves: kept, patched, the next page still there.
    _ = store.stock.lock().unwrap().reserve(&[Want { sku: "a", qty: 1 }], w.state.now());
    assert_eq!((page(&pages).n_items, page(&pages).next.as_deref()), (2, Some("b")));
    // The only item past it sells out: the same items, and no next page.
    _ = store.stock.lock().unwrap().reserve(&[Want { sku: "c", qty: 2 }], w.state.now());
    let served = page(&pages);
    assert_eq!((served.n_items, served.next.as_deref()), (2, None));
    let fresh = serialize(&w.state.availability_at(&store, 0, Some("snacks"), None, 2));
    assert_eq!(served.next, fresh.next);
    let patched = pages.counters.patched.load(std::sync::atomic::Ordering::Relaxed);
    assert!(patched >= 1, "served from the kept page, patched ({patched})");
    w.scratch.drop_database().await;
}

#[tokio::test]
async fn an_item_that_sells_out_leaves_the_pieces_after_it_shared() {
    use crate::http::pages::{PIECE, PageJson, Pages, serialize};
    use darkstore_geoinv::stock::Want;
    let w = world("ds_state_page_pieces").await;
    let store = w.state.store("s1").unwrap();
    for i in 0..100 {
        let sku = format!("q{i:03}");
        w.state.put_product(Product::new(&sku, format!("Q{i}"), "snacks".into(), 100, 5)).await.unwrap();
        w.state.adjust_stock("s1", &sku, 1, "restock", None).await.unwrap();
    }
    let pages = Pages::default();
    let page = || pages.page(&w.state, &store, 0, Some("snacks"), None, 200);
    let text = |p: &PageJson| {
        let mut s = String::new();
        p.write_to(&mut s);
        s
    };
    let sell_out = |sku: &str| store.stock.lock().unwrap().reserve(&[Want { sku, qty: 1 }], w.state.now()).unwrap();
    let before = page();
    assert_eq!((before.n_items, before.pieces.len()), (100, 100usize.div_ceil(PIECE)));
    sell_out("q005");
    let after = page();
    assert_eq!(after.n_items, 99);
    assert!(!Arc::ptr_eq(&before.pieces[0], &after.pieces[0]), "the sold-out item's piece is written again");
    for k in 1..before.pieces.len() {
        assert!(Arc::ptr_eq(&before.pieces[k], &after.pieces[k]), "piece {k} is shared");
    }
    // Items selling out one by one, the first ones included: always the fresh page, and the
    // pieces never more than about twice as many as full pieces would be.
    let mut sold = 1;
    for i in (0..100).step_by(3).filter(|i| *i != 5) {
        sell_out(&format!("q{i:03}"));
        sold += 1;
        let served = page();
        let fresh = serialize(&w.state.availability_at(&store, 0, Some("snacks"), None, 200));
        assert_eq!((text(&served), served.n_items), (text(&fresh), fresh.n_items), "after q{i:03}");
        assert!(served.pieces.len() <= 2 * served.n_items.div_ceil(PIECE) + 2, "{} pieces", served.pieces.len());
    }
    let c = &pages.counters;
    let [patched, read] = [&c.patched, &c.read].map(|n| n.load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!((patched, read), (sold, 1), "patched every time, read once");
    w.scratch.drop_database().await;
}

#[tokio::test]
async fn a_restart_reads_open_orders_and_recent_ones_not_the_whole_history() {
    let w = world("ds_state_history").await;
    let old = w.place("h1", 1).await;
    w.state.transition(&old.id, OrderStatus::Cancelled, None, |_| true).await.unwrap();
    let open = w.place("h2", 1).await;
    // A day and an hour later: past the key retention (24 h) and the order retention (1 h).
    w.clock.advance(25 * 3_600_000);
    let mid = w.place("h3", 1).await;
    w.state.transition(&mid.id, OrderStatus::Cancelled, None, |_| true).await.unwrap();
    // Two hours later: `mid` is past the order retention, within the key retention.
    w.clock.advance(2 * 3_600_000);
    let recent = w.place("h4", 1).await;
    w.state.transition(&recent.id, OrderStatus::Cancelled, None, |_| true).await.unwrap();
    let since = w.state.history_since();
    let snap = w.state.db.load_since(since).await.unwrap();
    let ids: Vec<&str> = snap.orders.iter().map(|o| o.id.as_str()).collect();
    assert!(ids.contains(&open.id.as_str()), "an open order is read back however old");
    assert!(ids.contains(&recent.id.as_str()), "a finished order within the retention is read back");
    assert!(!ids.contains(&old.id.as_str()), "a finished order past both retentions is not");
    assert!(!ids.contains(&mid.id.as_str()), "nor one past the order retention");
    let keys: Vec<&str> = snap.keys.iter().map(|k| k.order_id.as_str()).collect();
    assert_eq!(keys, vec![mid.id.as_str()], "only the key of the one within the key retention");
    assert_eq!(snap.orders.iter().find(|o| o.id == open.id).unwrap().lines.len(), 1, "with its lines");
    let all = w.state.db.load().await.unwrap();
    assert_eq!(all.orders.len(), ids.len() + 2);
    assert!(all.keys.is_empty(), "a whole read has every order whole");
    // The old one is still in the database for whoever asks.
    assert_eq!(w.state.db.order(&old.id).await.unwrap().unwrap().status, "cancelled");

    // A restart that reads only that: a retried placement of `mid` still answers with its order
    // (read from the database), and its key with another body is still refused.
    let restarted = state_loading(&w.scratch.url, w.clock.clone(), |_| since).await;
    assert!(restarted.order(&mid.id).is_none(), "not in memory");
    let retry = |key: &str, hash: &str| PlaceOrder {
        customer_id: "alice".into(),
        idempotency_key: key.into(),
        request_hash: hash.into(),
        lat: 12.9729,
        lng: 77.6412,
        lines: vec![("milk".into(), 1)],
    };
    let again = restarted.place_order(retry("h3", "h3")).await.unwrap();
    assert!(again.replayed);
    assert_eq!((again.order.id.as_str(), again.order.status), (mid.id.as_str(), OrderStatus::Cancelled));
    assert!(matches!(restarted.place_order(retry("h3", "other")).await, Err(PlaceError::KeyReused)));
    w.scratch.drop_database().await;
}

#[tokio::test]
async fn orders_confirmed_between_two_ticks_each_join_the_queue_they_are_quoted() {
    let w = world("ds_state_live_load").await;
    let store = w.state.store("s1").unwrap();
    let eta = || w.state.quote(&store, 12.9729, 77.6412).eta_ms;
    // The tick saw an idle store with five riders there.
    let tick = |w: &World| {
        let load = darkstore_geoinv::quote::StoreLoad { riders_at_store: vec![T0; 5], ..Default::default() };
        w.state.set_loads([(store.idx.0, load)].into_iter().collect());
    };
    tick(&w);
    let idle = eta();
    let a = w.place("a", 1).await;
    assert_eq!(eta(), idle, "an order waiting for its payment is not in the queue yet");
    w.pay(&a.id, E::Succeeded).await;
    let one = eta();
    // The quote's picking time is 2 minutes with one picker (no margin in this load).
    assert_eq!(one - idle, 2 * 60_000, "the confirmed order is picked first");
    let b = w.place("b", 1).await;
    w.pay(&b.id, E::Succeeded).await;
    assert_eq!(eta() - one, 2 * 60_000, "and the next after it");
    tick(&w);
    assert_eq!(eta(), idle, "a new tick's load counts them itself");
    w.scratch.drop_database().await;
}
