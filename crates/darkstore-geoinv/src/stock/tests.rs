//! Table tests of a store's stock: reservation, allocation, expiry, adjustments, the ledger's
//! deltas, the version and the change log.

use std::collections::BTreeMap;

use super::*;

const T0: Millis = 1_700_000_000_000;
const HOUR: Millis = 3_600_000;

/// Builds a store from `(sku, lot, expires_in_hours, on_hand)` rows.
fn store(rows: &[(&str, i64, Option<i64>, i64)]) -> StoreStock {
    let mut s = StoreStock::new();
    for &(sku, lot, exp, qty) in rows {
        s.adjust(sku, qty, LotId(lot), exp.map(|h| T0 + h * HOUR), T0).unwrap();
    }
    s
}

fn avail(s: &StoreStock, sku: &str, now: Millis) -> i64 {
    s.line(sku).map_or(0, |l| l.available(now))
}

#[test]
fn reservation_is_all_or_nothing() {
    // (wants, expect ok, milk available after, bread available after)
    type Case = (Vec<(&'static str, i64)>, bool, i64, i64);
    let cases: Vec<Case> = vec![
        (vec![("milk", 2), ("bread", 1)], true, 3, 1),
        (vec![("milk", 5), ("bread", 2)], true, 0, 0),
        (vec![("milk", 6), ("bread", 1)], false, 5, 2),
        (vec![("milk", 1), ("eggs", 1)], false, 5, 2),
        (vec![("milk", 3), ("milk", 3)], false, 5, 2),
        (vec![("milk", 3), ("milk", 2)], true, 0, 2),
    ];
    for (wants, ok, milk_after, bread_after) in cases {
        let mut s = store(&[("milk", 1, None, 5), ("bread", 2, None, 2)]);
        let wants: Vec<Want> = wants.iter().map(|&(sku, qty)| Want { sku, qty }).collect();
        let result = s.reserve(&wants, T0);
        assert_eq!(result.is_ok(), ok, "{wants:?}");
        assert_eq!(avail(&s, "milk", T0), milk_after, "{wants:?}");
        assert_eq!(avail(&s, "bread", T0), bread_after, "{wants:?}");
    }
}

#[test]
fn shortfall_reports_each_short_line() {
    let mut s = store(&[("milk", 1, None, 2)]);
    let err = s.reserve(&[Want { sku: "milk", qty: 3 }, Want { sku: "eggs", qty: 1 }], T0).unwrap_err();
    assert_eq!(
        err,
        vec![
            Shortfall { sku: "milk".into(), requested: 3, available: 2 },
            Shortfall { sku: "eggs".into(), requested: 1, available: 0 },
        ]
    );
}

#[test]
fn allocation_takes_first_expiring_lot_first() {
    // Lot 1 expires in 48 h, lot 2 in 24 h, lot 3 never: 2 then 1 then 3.
    let mut s = store(&[("milk", 1, Some(48), 2), ("milk", 2, Some(24), 2), ("milk", 3, None, 2)]);
    let deltas = s.reserve(&[Want { sku: "milk", qty: 5 }], T0).unwrap();
    let got: Vec<(i64, i64)> = deltas.iter().map(|d| (d.lot.0, d.d_reserved)).collect();
    assert_eq!(got, vec![(2, 2), (1, 2), (3, 1)]);
}

#[test]
fn expired_units_are_never_sold() {
    let s0 = store(&[("milk", 1, Some(1), 3), ("milk", 2, Some(10), 2)]);
    // (now, available, can reserve 3)
    let cases = [(T0, 5, true), (T0 + HOUR - 1, 5, true), (T0 + HOUR, 2, false), (T0 + 10 * HOUR, 0, false)];
    for (now, available, can) in cases {
        let mut s = s0.clone();
        assert_eq!(avail(&s, "milk", now), available, "now={now}");
        assert_eq!(s.reserve(&[Want { sku: "milk", qty: 3 }], now).is_ok(), can, "now={now}");
    }
}

#[test]
fn expire_writes_off_free_units_only() {
    let mut s = store(&[("milk", 1, Some(1), 3)]);
    s.reserve(&[Want { sku: "milk", qty: 1 }], T0).unwrap();
    let deltas = s.expire(T0 + HOUR);
    assert_eq!(deltas.len(), 1);
    assert_eq!(deltas[0].d_on_hand, -2);
    let t = s.line("milk").unwrap().totals(T0 + HOUR);
    assert_eq!((t.on_hand, t.reserved, t.available), (1, 1, 0));
    // Expiring again changes nothing.
    assert!(s.expire(T0 + 2 * HOUR).is_empty());
}

#[test]
fn release_and_sell() {
    let mut s = store(&[("milk", 1, None, 5)]);
    let held = s.reserve(&[Want { sku: "milk", qty: 2 }], T0).unwrap();
    let mut released = s.clone();
    held.iter().for_each(|h| released.apply(&h.release()));
    let t = released.line("milk").unwrap().totals(T0);
    assert_eq!((t.on_hand, t.reserved, t.available), (5, 0, 5));
    let sold: Vec<LotDelta> = held.iter().map(LotDelta::sale).collect();
    sold.iter().for_each(|d| s.apply(d));
    assert_eq!(sold[0].d_on_hand, -2);
    let t = s.line("milk").unwrap().totals(T0);
    assert_eq!((t.on_hand, t.reserved, t.available), (3, 0, 3));
}

#[test]
fn adjust_table() {
    // (delta, expected result ok, on_hand after) with 5 on hand and 3 reserved.
    let cases = [(2, true, 7), (-2, true, 3), (-3, false, 5), (0, false, 5), (-100, false, 5)];
    for (delta, ok, on_hand) in cases {
        let mut s = store(&[("milk", 1, None, 5)]);
        s.reserve(&[Want { sku: "milk", qty: 3 }], T0).unwrap();
        let r = s.adjust("milk", delta, LotId(9), None, T0);
        assert_eq!(r.is_ok(), ok, "delta {delta}");
        assert_eq!(s.line("milk").unwrap().totals(T0).on_hand, on_hand, "delta {delta}");
    }
}

#[test]
fn negated_deltas_undo_a_change() {
    let before = store(&[("milk", 1, Some(5), 4), ("milk", 2, None, 3)]);
    let mut s = before.clone();
    let held = s.reserve(&[Want { sku: "milk", qty: 5 }], T0).unwrap();
    let mut writeoff = s.adjust("milk", -2, LotId(0), None, T0).unwrap();
    writeoff.extend(held);
    for d in writeoff.iter().rev() {
        s.apply(&d.negated());
    }
    assert_eq!(s.line("milk").unwrap().lots(), before.line("milk").unwrap().lots());
}

#[test]
fn write_off_takes_expired_lots_first() {
    let mut s = store(&[("milk", 1, None, 2), ("milk", 2, Some(1), 2)]);
    let deltas = s.adjust("milk", -1, LotId(9), None, T0 + 2 * HOUR).unwrap();
    assert_eq!(deltas[0].lot, LotId(2));
}

#[test]
fn ledger_sums_rebuild_the_same_stock() {
    let mut s = store(&[("milk", 1, Some(5), 4), ("milk", 2, None, 3), ("bread", 3, None, 1)]);
    let mut ledger: Vec<LotDelta> = Vec::new();
    for (sku, line) in s.lines() {
        for lot in line.lots() {
            ledger.push(LotDelta {
                sku,
                lot: lot.id,
                expires_at: lot.expires_at(),
                d_on_hand: lot.on_hand,
                d_reserved: 0,
            });
        }
    }
    let held = s.reserve(&[Want { sku: "milk", qty: 5 }], T0).unwrap();
    ledger.extend(held.iter().cloned());
    let sale = held[0].sale();
    s.apply(&sale);
    ledger.push(sale);
    ledger.extend(s.adjust("bread", -1, LotId(0), None, T0).unwrap());
    type Sums = BTreeMap<(Sku, LotId), (Option<Millis>, i64, i64)>;
    let mut sums = Sums::new();
    for d in &ledger {
        let e = sums.entry((d.sku, d.lot)).or_insert((d.expires_at, 0, 0));
        e.1 += d.d_on_hand;
        e.2 += d.d_reserved;
    }
    let mut rebuilt = StoreStock::new();
    rebuilt.restore(
        sums.into_iter().map(|((sku, lot), (exp, on_hand, reserved))| (sku, Lot::new(lot, exp, on_hand, reserved))),
    );
    for (sku, line) in s.lines() {
        let rebuilt_lots = rebuilt.line(&sku).map(|l| l.lots().to_vec()).unwrap_or_default();
        assert_eq!(rebuilt_lots, line.lots().to_vec(), "{sku}");
    }
    assert!(rebuilt.line("bread").is_none());
}

#[test]
fn available_after_pages_in_sku_order() {
    let s = store(&[("c", 1, None, 1), ("a", 2, None, 1), ("b", 3, None, 1), ("d", 4, Some(-1), 1)]);
    let all: Vec<&str> = s.available_after(None, T0).map(|(k, _)| k.as_str()).collect();
    assert_eq!(all, ["a", "b", "c"]);
    let after_a: Vec<&str> = s.available_after(Some("a"), T0).map(|(k, _)| k.as_str()).collect();
    assert_eq!(after_a, ["b", "c"]);
}

#[test]
fn every_change_says_which_lines_it_touched() {
    // Quantities differ, so a line found at the wrong index would show.
    let mut s = store(&[("milk", 1, Some(2), 5), ("eggs", 2, None, 6), ("tea", 3, Some(2), 7)]);
    let v0 = s.version();
    // Each touched SKU comes with its line as it is now, wherever inserted lines moved it.
    let since = |s: &StoreStock, v| {
        s.touched_since(v).map(|t| {
            t.map(|(k, line)| {
                let found = s.line(&k).map(|l| (l.available(T0), l.totals(T0).on_hand));
                assert_eq!(line.map(|l| (l.available(T0), l.totals(T0).on_hand)), found, "{k}'s line");
                assert!(line.is_some(), "{k} has a line");
                k.to_string()
            })
            .collect::<Vec<_>>()
        })
    };
    assert_eq!(since(&s, v0), Some(vec![]));
    s.reserve(&[Want { sku: "milk", qty: 1 }, Want { sku: "eggs", qty: 1 }], T0).unwrap();
    let v1 = s.version();
    assert!(s.reserve(&[Want { sku: "tea", qty: 9 }], T0).is_err());
    s.adjust("tea", -1, LotId(0), None, T0).unwrap();
    s.adjust("bread", 3, LotId(4), None, T0).unwrap();
    assert_eq!(since(&s, v0), Some(vec!["milk".into(), "eggs".into(), "tea".into(), "bread".into()]));
    assert_eq!(since(&s, v1), Some(vec!["tea".into(), "bread".into()]));
    let v2 = s.version();
    // Expiry touches each expired line once.
    assert!(!s.expire(T0 + 3 * HOUR).is_empty());
    assert_eq!(since(&s, v2), Some(vec!["milk".into(), "tea".into()]));
    // Older than it remembers: unknown, never a wrong "nothing".
    for i in 0..TOUCHED_KEPT as i64 {
        s.adjust("eggs", 1, LotId(10 + i), None, T0).unwrap();
    }
    assert_eq!(since(&s, v2), None);
    assert_eq!(since(&s, s.version()), Some(vec![]));
    assert_eq!(since(&s, s.version() + 1), None);
}

#[test]
fn every_change_moves_the_version_and_a_refusal_does_not() {
    let mut s = store(&[("milk", 1, Some(2), 5)]);
    let mut v = s.version();
    let mut changed = |s: &StoreStock| {
        let moved = s.version() != v;
        v = s.version();
        moved
    };
    s.reserve(&[Want { sku: "milk", qty: 2 }], T0).unwrap();
    assert!(changed(&s));
    assert!(s.reserve(&[Want { sku: "milk", qty: 9 }], T0).is_err());
    assert!(!changed(&s));
    s.adjust("milk", -1, LotId(0), None, T0).unwrap();
    assert!(changed(&s));
    assert!(s.adjust("milk", -9, LotId(0), None, T0).is_err());
    assert!(!changed(&s));
    s.adjust("milk", 4, LotId(2), None, T0).unwrap();
    assert!(changed(&s));
    assert!(s.expire(T0).is_empty());
    assert!(!changed(&s));
    assert!(!s.expire(T0 + 3 * HOUR).is_empty());
    assert!(changed(&s));
    s.apply(&LotDelta { sku: Sku::new("milk"), lot: LotId(2), expires_at: None, d_on_hand: 0, d_reserved: 1 });
    assert!(changed(&s));
}

#[test]
fn available_until_is_the_first_expiry_that_lowers_availability() {
    let s = store(&[("milk", 1, Some(5), 2), ("milk", 2, Some(1), 3), ("milk", 3, None, 1), ("tea", 4, None, 1)]);
    let milk = s.line("milk").unwrap();
    assert_eq!(milk.available_until(T0), Some(T0 + HOUR));
    // Once the first lot has expired, the next one bounds it.
    assert_eq!(milk.available_until(T0 + 2 * HOUR), Some(T0 + 5 * HOUR));
    assert_eq!(s.line("tea").unwrap().available_until(T0), None);
    // A fully reserved lot cannot lower availability when it expires.
    let mut s = store(&[("milk", 1, Some(1), 2), ("milk", 2, Some(5), 2)]);
    s.reserve(&[Want { sku: "milk", qty: 2 }], T0).unwrap();
    assert_eq!(s.line("milk").unwrap().available_until(T0), Some(T0 + 5 * HOUR));
}

#[test]
fn a_lines_lots_move_between_the_line_and_a_slot_and_slots_are_reused() {
    let lots = |s: &StoreStock, sku: &str| s.line(sku).map(|l| l.lots().iter().map(|l| l.id.0).collect::<Vec<_>>());
    // (sku, lot, expires in hours, on hand): milk gets three lots, tea two.
    let mut s = store(&[("milk", 1, None, 1), ("milk", 2, Some(2), 1), ("milk", 3, Some(1), 1)]);
    assert_eq!(lots(&s, "milk"), Some(vec![3, 2, 1]));
    assert_eq!(s.many.len(), 1);
    // Write-offs empty lots 3 and 2: one lot left, back in the line; its slot is free.
    s.adjust("milk", -2, LotId(0), None, T0).unwrap();
    assert_eq!(lots(&s, "milk"), Some(vec![1]));
    assert_eq!(s.free, vec![0]);
    // A second line with two lots takes the free slot instead of a new one.
    s.adjust("tea", 1, LotId(4), None, T0).unwrap();
    s.adjust("tea", 1, LotId(5), Some(T0 + HOUR), T0).unwrap();
    assert_eq!(lots(&s, "tea"), Some(vec![5, 4]));
    assert_eq!((s.many.len(), s.free.len()), (1, 0));
    // Sold out: the line stays, with no lot.
    s.adjust("milk", -1, LotId(0), None, T0).unwrap();
    assert_eq!(lots(&s, "milk"), Some(vec![]));
    assert_eq!(std::mem::size_of::<Entry>(), 48);
}

#[test]
fn restore_merges_with_the_lines_there_are_in_sku_order() {
    let mut s = store(&[("milk", 1, None, 2), ("bread", 2, None, 1)]);
    s.adjust("bread", -1, LotId(0), None, T0).unwrap();
    let v = s.version();
    s.restore([
        (Sku::new("tea"), Lot::new(LotId(7), None, 3, 1)),
        (Sku::new("milk"), Lot::new(LotId(6), Some(T0 + HOUR), 1, 0)),
        (Sku::new("apple"), Lot::new(LotId(8), None, 0, 0)),
    ]);
    let skus: Vec<&str> = s.lines().map(|(sku, _)| sku.as_str()).collect();
    assert_eq!(skus, ["bread", "milk", "tea"], "an empty lot makes no line; an empty line stays");
    assert_eq!(s.line("milk").unwrap().lots().iter().map(|l| l.id.0).collect::<Vec<_>>(), [6, 1]);
    assert_eq!(s.line("tea").unwrap().totals(T0), LineTotals { on_hand: 3, reserved: 1, available: 2 });
    assert!(s.version() > v);
    assert!(s.touched_since(v).is_none(), "views read before a restore are stale");
}

#[test]
fn announcements_are_kept_per_line() {
    let mut s = store(&[("milk", 1, None, 2), ("eggs", 2, Some(-1), 2)]);
    s.announce_all(T0);
    assert!(s.announce("milk", false), "milk was available");
    assert!(!s.announce("eggs", true), "eggs had expired");
    assert!(s.announce("eggs", false));
    assert!(!s.announce("tea", true), "no line: never announced, and no line made");
    assert!(s.line("tea").is_none());
}
