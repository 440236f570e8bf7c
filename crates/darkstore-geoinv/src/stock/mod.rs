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
mod tests;
