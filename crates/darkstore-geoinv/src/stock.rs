//! A dark store's stock: lines of lots, reservations, and the ledger deltas they produce.
//!
//! Stock of one SKU in one store is a set of lots. A lot has units on hand, units reserved by open
//! orders, and perhaps an expiry time. Units of an expired lot are never sold. Allocation (for a
//! reservation or a write-off) takes the first-expiring lot first; lots without expiry come last.
//!
//! Every change returns the [`LotDelta`]s it made. The caller writes them to the ledger; summing the
//! ledger per lot rebuilds the stock exactly ([`StoreStock::restore_lot`]); applying a delta
//! ([`StoreStock::apply`]) is how releases and sales, computed from a reservation, take effect.
//!
//! Invariants, per lot: `0 <= reserved <= on_hand`. A reservation is all or nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::Millis;

/// A server-assigned lot id, unique across all stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LotId(pub i64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lot {
    pub id: LotId,
    pub expires_at: Option<Millis>,
    pub on_hand: i64,
    pub reserved: i64,
}

impl Lot {
    pub fn is_expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Units on hand that no order holds.
    pub fn free(&self) -> i64 {
        self.on_hand - self.reserved
    }

    /// First-expiring first; no expiry last; then oldest lot first.
    fn fefo_key(&self) -> (Millis, LotId) {
        (self.expires_at.unwrap_or(Millis::MAX), self.id)
    }
}

/// One SKU's lots in one store, kept in first-expiry-first-out order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockLine {
    lots: Vec<Lot>,
}

/// The totals of a line, as the API reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTotals {
    pub on_hand: i64,
    pub reserved: i64,
    /// Unreserved units of unexpired lots: what can be sold now.
    pub available: i64,
}

impl StockLine {
    pub fn lots(&self) -> &[Lot] {
        &self.lots
    }

    pub fn totals(&self, now: Millis) -> LineTotals {
        let mut t = LineTotals { on_hand: 0, reserved: 0, available: 0 };
        for lot in &self.lots {
            t.on_hand += lot.on_hand;
            t.reserved += lot.reserved;
            if !lot.is_expired(now) {
                t.available += lot.free();
            }
        }
        t
    }

    pub fn available(&self, now: Millis) -> i64 {
        self.lots.iter().filter(|l| !l.is_expired(now)).map(Lot::free).sum()
    }

    /// When `available(now)` next drops by itself: the earliest expiry among unexpired lots with
    /// free units. None when no such lot expires.
    pub fn available_until(&self, now: Millis) -> Option<Millis> {
        self.lots.iter().filter(|l| !l.is_expired(now) && l.free() > 0).filter_map(|l| l.expires_at).min()
    }

    /// The earliest expiry among lots that still have units, if any.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.lots.iter().filter(|l| l.on_hand > 0).filter_map(|l| l.expires_at).min()
    }

    fn insert_lot(&mut self, lot: Lot) {
        let at = self.lots.partition_point(|l| l.fefo_key() < lot.fefo_key());
        self.lots.insert(at, lot);
    }

    fn lot_mut(&mut self, id: LotId) -> Option<&mut Lot> {
        self.lots.iter_mut().find(|l| l.id == id)
    }

    fn drop_empty_lots(&mut self) {
        self.lots.retain(|l| l.on_hand != 0 || l.reserved != 0);
    }
}

/// A change to one lot: what the ledger records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotDelta {
    pub sku: Arc<str>,
    pub lot: LotId,
    pub expires_at: Option<Millis>,
    pub d_on_hand: i64,
    pub d_reserved: i64,
}

impl LotDelta {
    /// The delta that undoes this one.
    pub fn negated(&self) -> LotDelta {
        LotDelta { d_on_hand: -self.d_on_hand, d_reserved: -self.d_reserved, ..self.clone() }
    }

    /// For a reservation: the delta that releases it (an order cancelled or expired).
    pub fn release(&self) -> LotDelta {
        LotDelta { d_on_hand: 0, d_reserved: -self.d_reserved, ..self.clone() }
    }

    /// For a reservation: the delta that turns it into a sale (the units leave with the rider).
    pub fn sale(&self) -> LotDelta {
        LotDelta { d_on_hand: -self.d_reserved, d_reserved: -self.d_reserved, ..self.clone() }
    }
}

/// One requested line of a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want<'a> {
    pub sku: &'a str,
    pub qty: i64,
}

/// A line a reservation could not fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub sku: String,
    pub requested: i64,
    pub available: i64,
}

/// Why a stock adjustment was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdjustError {
    /// The delta would take on-hand below what is reserved (or below zero).
    BelowReserved { on_hand: i64, reserved: i64 },
    /// A zero delta changes nothing and is refused.
    ZeroDelta,
}

/// Stock of every SKU in one store, sorted by SKU.
#[derive(Debug, Clone, Default)]
pub struct StoreStock {
    lines: BTreeMap<Arc<str>, StockLine>,
    /// Bumped by every change, so a view built from this stock can tell whether it is current.
    version: u64,
    /// Which lines the last changes touched, so a view can tell which of its lines moved.
    touched: Touched,
}

/// Most (version, SKU) pairs [`StoreStock`] remembers.
pub const TOUCHED_KEPT: usize = 32;

/// The SKUs of the last changes, oldest first: `(version, sku)`, where `version` is the stock
/// version the change made. Every change with a version above `floor` is in `log`.
#[derive(Debug, Clone, Default)]
struct Touched {
    log: std::collections::VecDeque<(u64, Arc<str>)>,
    floor: u64,
}

impl StoreStock {
    pub fn new() -> StoreStock {
        StoreStock::default()
    }

    /// Changes with every change to the stock (reservations, adjustments, expiry, ledger deltas).
    /// Availability also changes with time alone, as lots expire: see
    /// [`StockLine::available_until`].
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The SKUs changed since `version` (each change once per SKU it touched, oldest first), or
    /// None when that goes back further than the last [`TOUCHED_KEPT`] it remembers.
    pub fn touched_since(&self, version: u64) -> Option<impl Iterator<Item = &Arc<str>>> {
        (version >= self.touched.floor && version <= self.version)
            .then(|| self.touched.log.iter().filter(move |(v, _)| *v > version).map(|(_, sku)| sku))
    }

    /// Records that the change that made the current version touched `sku`.
    fn touch(&mut self, sku: Arc<str>) {
        let t = &mut self.touched;
        if t.log.len() == TOUCHED_KEPT
            && let Some((v, _)) = t.log.pop_front()
        {
            t.floor = t.floor.max(v);
        }
        t.log.push_back((self.version, sku));
    }

    /// SKUs strictly after `after` (all when None) with units available now, in SKU order, each
    /// with its line.
    pub fn available_lines_after<'a>(
        &'a self,
        after: Option<&str>,
        now: Millis,
    ) -> impl Iterator<Item = (&'a Arc<str>, i64, &'a StockLine)> + 'a {
        use std::ops::Bound;
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        self.lines
            .range::<str, _>((lower, Bound::Unbounded))
            .map(move |(sku, line)| (sku, line.available(now), line))
            .filter(|(_, available, _)| *available > 0)
    }

    pub fn line(&self, sku: &str) -> Option<&StockLine> {
        self.lines.get(sku)
    }

    pub fn lines(&self) -> impl Iterator<Item = (&Arc<str>, &StockLine)> {
        self.lines.iter()
    }

    /// SKUs strictly after `after` (all when None) with units available now, in SKU order.
    pub fn available_after<'a>(
        &'a self,
        after: Option<&str>,
        now: Millis,
    ) -> impl Iterator<Item = (&'a Arc<str>, i64)> + 'a {
        self.available_lines_after(after, now).map(|(sku, available, _)| (sku, available))
    }

    fn line_entry(&mut self, sku: &str) -> &mut StockLine {
        self.version += 1;
        let key = self.sku_key(sku);
        self.touch(key.clone());
        self.lines.entry(key).or_default()
    }

    fn sku_key(&self, sku: &str) -> Arc<str> {
        self.lines.get_key_value(sku).map(|(k, _)| k.clone()).unwrap_or_else(|| Arc::from(sku))
    }

    /// Reserves every line or none. Each line takes units from the first-expiring unexpired lots.
    /// Duplicate SKUs in `wants` are summed for the check.
    pub fn reserve(&mut self, wants: &[Want<'_>], now: Millis) -> Result<Vec<LotDelta>, Vec<Shortfall>> {
        let mut shortfalls = Vec::new();
        for (i, want) in wants.iter().enumerate() {
            if wants[..i].iter().any(|w| w.sku == want.sku) {
                continue;
            }
            let requested: i64 = wants.iter().filter(|w| w.sku == want.sku).map(|w| w.qty).sum();
            let available = self.lines.get(want.sku).map_or(0, |l| l.available(now));
            if requested > available {
                shortfalls.push(Shortfall { sku: want.sku.to_owned(), requested, available });
            }
        }
        if !shortfalls.is_empty() {
            return Err(shortfalls);
        }
        self.version += 1;
        let mut deltas = Vec::new();
        for want in wants {
            let key = self.sku_key(want.sku);
            self.touch(key.clone());
            let line = self.lines.get_mut(want.sku).expect("checked above");
            let mut left = want.qty;
            for lot in line.lots.iter_mut().filter(|l| !l.is_expired(now)) {
                if left == 0 {
                    break;
                }
                let take = lot.free().min(left);
                if take > 0 {
                    lot.reserved += take;
                    left -= take;
                    deltas.push(LotDelta {
                        sku: key.clone(),
                        lot: lot.id,
                        expires_at: lot.expires_at,
                        d_on_hand: 0,
                        d_reserved: take,
                    });
                }
            }
            debug_assert_eq!(left, 0);
        }
        Ok(deltas)
    }

    /// Changes on-hand stock. A positive delta arrives as a new lot `new_lot` (with `expires_at`);
    /// a negative one is taken from free units, expired lots first, then first-expiring.
    pub fn adjust(
        &mut self,
        sku: &str,
        delta: i64,
        new_lot: LotId,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<Vec<LotDelta>, AdjustError> {
        if delta == 0 {
            return Err(AdjustError::ZeroDelta);
        }
        let key = self.sku_key(sku);
        if delta > 0 {
            let line = self.line_entry(sku);
            line.insert_lot(Lot { id: new_lot, expires_at, on_hand: delta, reserved: 0 });
            return Ok(vec![LotDelta { sku: key, lot: new_lot, expires_at, d_on_hand: delta, d_reserved: 0 }]);
        }
        let totals = match self.lines.get(sku) {
            Some(line) => line.totals(now),
            None => {
                return Err(AdjustError::BelowReserved { on_hand: 0, reserved: 0 });
            }
        };
        let free: i64 = totals.on_hand - totals.reserved;
        if -delta > free {
            return Err(AdjustError::BelowReserved { on_hand: totals.on_hand, reserved: totals.reserved });
        }
        self.version += 1;
        self.touch(key.clone());
        let line = self.lines.get_mut(sku).expect("read above");
        let mut left = -delta;
        let mut deltas = Vec::new();
        // Expired lots first (their units cannot be sold anyway), then FEFO order.
        let mut order: Vec<usize> = (0..line.lots.len()).collect();
        order.sort_by_key(|&i| !line.lots[i].is_expired(now));
        for i in order {
            if left == 0 {
                break;
            }
            let lot = &mut line.lots[i];
            let take = lot.free().min(left);
            if take > 0 {
                lot.on_hand -= take;
                left -= take;
                deltas.push(LotDelta {
                    sku: key.clone(),
                    lot: lot.id,
                    expires_at: lot.expires_at,
                    d_on_hand: -take,
                    d_reserved: 0,
                });
            }
        }
        line.drop_empty_lots();
        Ok(deltas)
    }

    /// Writes off the free units of every lot that has expired at `now`.
    pub fn expire(&mut self, now: Millis) -> Vec<LotDelta> {
        let mut deltas: Vec<LotDelta> = Vec::new();
        for (sku, line) in self.lines.iter_mut() {
            for lot in line.lots.iter_mut().filter(|l| l.is_expired(now) && l.free() > 0) {
                deltas.push(LotDelta {
                    sku: sku.clone(),
                    lot: lot.id,
                    expires_at: lot.expires_at,
                    d_on_hand: -lot.free(),
                    d_reserved: 0,
                });
                lot.on_hand = lot.reserved;
            }
            line.drop_empty_lots();
        }
        if !deltas.is_empty() {
            self.version += 1;
            let mut last: Option<&Arc<str>> = None;
            for d in &deltas {
                if last != Some(&d.sku) {
                    self.touch(d.sku.clone());
                    last = Some(&d.sku);
                }
            }
        }
        deltas
    }

    /// Applies a ledger delta as it stands, creating the lot if needed. With negated deltas this
    /// undoes a change whose commit failed.
    pub fn apply(&mut self, d: &LotDelta) {
        let line = self.line_entry(&d.sku);
        match line.lot_mut(d.lot) {
            Some(lot) => {
                lot.on_hand += d.d_on_hand;
                lot.reserved += d.d_reserved;
            }
            None => line.insert_lot(Lot {
                id: d.lot,
                expires_at: d.expires_at,
                on_hand: d.d_on_hand,
                reserved: d.d_reserved,
            }),
        }
        line.drop_empty_lots();
    }

    /// Rebuilds a lot from ledger sums (start-up). Empty lots are skipped.
    pub fn restore_lot(&mut self, sku: &str, lot: LotId, expires_at: Option<Millis>, on_hand: i64, reserved: i64) {
        if on_hand == 0 && reserved == 0 {
            return;
        }
        self.line_entry(sku).insert_lot(Lot { id: lot, expires_at, on_hand, reserved });
    }
}

#[cfg(test)]
mod tests {
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
                    sku: sku.clone(),
                    lot: lot.id,
                    expires_at: lot.expires_at,
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
        type Sums = BTreeMap<(Arc<str>, LotId), (Option<Millis>, i64, i64)>;
        let mut sums = Sums::new();
        for d in &ledger {
            let e = sums.entry((d.sku.clone(), d.lot)).or_insert((d.expires_at, 0, 0));
            e.1 += d.d_on_hand;
            e.2 += d.d_reserved;
        }
        let mut rebuilt = StoreStock::new();
        for ((sku, lot), (exp, on_hand, reserved)) in sums {
            rebuilt.restore_lot(&sku, lot, exp, on_hand, reserved);
        }
        for (sku, line) in s.lines() {
            let rebuilt_lots = rebuilt.line(sku).map(|l| l.lots().to_vec()).unwrap_or_default();
            assert_eq!(rebuilt_lots, line.lots().to_vec(), "{sku}");
        }
        assert!(rebuilt.line("bread").is_none());
    }

    #[test]
    fn available_after_pages_in_sku_order() {
        let s = store(&[("c", 1, None, 1), ("a", 2, None, 1), ("b", 3, None, 1), ("d", 4, Some(-1), 1)]);
        let all: Vec<&str> = s.available_after(None, T0).map(|(k, _)| &**k).collect();
        assert_eq!(all, ["a", "b", "c"]);
        let after_a: Vec<&str> = s.available_after(Some("a"), T0).map(|(k, _)| &**k).collect();
        assert_eq!(after_a, ["b", "c"]);
    }

    #[test]
    fn every_change_says_which_lines_it_touched() {
        let mut s = store(&[("milk", 1, Some(2), 5), ("eggs", 2, None, 5), ("tea", 3, Some(2), 5)]);
        let v0 = s.version();
        let since = |s: &StoreStock, v| s.touched_since(v).map(|t| t.map(|k| k.to_string()).collect::<Vec<_>>());
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
        s.apply(&LotDelta { sku: Arc::from("milk"), lot: LotId(2), expires_at: None, d_on_hand: 0, d_reserved: 1 });
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
}
