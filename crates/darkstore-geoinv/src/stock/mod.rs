//! A dark store's stock: lines of lots, reservations, and the ledger deltas they produce.
//!
//! Stock of one SKU in one store is a set of lots. A lot has units on hand, units reserved by open
//! orders, and perhaps an expiry time. Units of an expired lot are never sold. Allocation (for a
//! reservation or a write-off) takes the first-expiring lot first; lots without expiry come last.
//!
//! Every change returns the [`LotDelta`]s it made. The caller writes them to the ledger; summing the
//! ledger per lot rebuilds the stock exactly ([`StoreStock::restore`]); applying a delta
//! ([`StoreStock::apply`]) is how releases and sales, computed from a reservation, take effect.
//!
//! Invariants, per lot: `0 <= reserved <= on_hand`. A reservation is all or nothing.
//!
//! Layout (a city holds about a million lines): a store's lines are one array sorted by SKU, 48
//! bytes a line: the interned SKU ([`Sku`], 8 bytes), the line's lot when it has one (most do),
//! where its lots are when it has several (an array of its own, by slot), and whether it was last
//! announced as available. A line is created by the first lot of its SKU and never removed.

use crate::Millis;
pub use crate::sku::Sku;

/// A server-assigned lot id, unique across all stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LotId(pub i64);

/// The expiry of a lot that never expires.
const NEVER: Millis = Millis::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lot {
    pub id: LotId,
    /// When it expires ([`NEVER`]: it does not); read with [`Lot::expires_at`].
    expires: Millis,
    pub on_hand: i64,
    pub reserved: i64,
}

impl Lot {
    pub fn new(id: LotId, expires_at: Option<Millis>, on_hand: i64, reserved: i64) -> Lot {
        Lot { id, expires: expires_at.unwrap_or(NEVER), on_hand, reserved }
    }

    pub fn expires_at(&self) -> Option<Millis> {
        (self.expires != NEVER).then_some(self.expires)
    }

    pub fn is_expired(&self, now: Millis) -> bool {
        self.expires != NEVER && self.expires <= now
    }

    /// Units on hand that no order holds.
    pub fn free(&self) -> i64 {
        self.on_hand - self.reserved
    }

    /// First-expiring first; no expiry last; then oldest lot first.
    fn fefo_key(&self) -> (Millis, LotId) {
        (self.expires, self.id)
    }

    fn is_empty(&self) -> bool {
        self.on_hand == 0 && self.reserved == 0
    }
}

/// One SKU's lots in one store, in first-expiry-first-out order (a view into [`StoreStock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockLine<'a> {
    lots: &'a [Lot],
}

/// The totals of a line, as the API reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTotals {
    pub on_hand: i64,
    pub reserved: i64,
    /// Unreserved units of unexpired lots: what can be sold now.
    pub available: i64,
}

impl<'a> StockLine<'a> {
    pub fn lots(&self) -> &'a [Lot] {
        self.lots
    }

    pub fn totals(&self, now: Millis) -> LineTotals {
        let mut t = LineTotals { on_hand: 0, reserved: 0, available: 0 };
        for lot in self.lots {
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
        self.lots.iter().filter(|l| !l.is_expired(now) && l.free() > 0).filter_map(Lot::expires_at).min()
    }

    /// The earliest expiry among lots that still have units, if any.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.lots.iter().filter(|l| l.on_hand > 0).filter_map(Lot::expires_at).min()
    }
}

/// A change to one lot: what the ledger records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LotDelta {
    pub sku: Sku,
    pub lot: LotId,
    pub expires_at: Option<Millis>,
    pub d_on_hand: i64,
    pub d_reserved: i64,
}

impl LotDelta {
    /// The delta that undoes this one.
    pub fn negated(&self) -> LotDelta {
        LotDelta { d_on_hand: -self.d_on_hand, d_reserved: -self.d_reserved, ..*self }
    }

    /// For a reservation: the delta that releases it (an order cancelled or expired).
    pub fn release(&self) -> LotDelta {
        LotDelta { d_on_hand: 0, d_reserved: -self.d_reserved, ..*self }
    }

    /// For a reservation: the delta that turns it into a sale (the units leave with the rider).
    pub fn sale(&self) -> LotDelta {
        LotDelta { d_on_hand: -self.d_reserved, d_reserved: -self.d_reserved, ..*self }
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

/// Where a line's lots are: none, its one lot in the line itself, or a slot of
/// [`StoreStock::many`].
const NO_LOT: u32 = u32::MAX;
const ONE_LOT: u32 = u32::MAX - 1;

/// One line of a store (48 bytes).
#[derive(Debug, Clone)]
struct Entry {
    sku: Sku,
    /// The lot, when `lots` is [`ONE_LOT`].
    one: Lot,
    /// [`NO_LOT`], [`ONE_LOT`], or the slot in [`StoreStock::many`] holding two lots or more.
    lots: u32,
    /// Last announced as available (see [`StoreStock::announce`]).
    announced: bool,
}

impl Entry {
    fn new(sku: Sku) -> Entry {
        Entry { sku, one: Lot::new(LotId(0), None, 0, 0), lots: NO_LOT, announced: false }
    }
}

/// The lots of `e`, in FEFO order.
fn lots_of<'a>(e: &'a Entry, many: &'a [Vec<Lot>]) -> &'a [Lot] {
    match e.lots {
        NO_LOT => &[],
        ONE_LOT => std::slice::from_ref(&e.one),
        slot => &many[slot as usize],
    }
}

fn lots_of_mut<'a>(e: &'a mut Entry, many: &'a mut [Vec<Lot>]) -> &'a mut [Lot] {
    match e.lots {
        NO_LOT => &mut [],
        ONE_LOT => std::slice::from_mut(&mut e.one),
        slot => &mut many[slot as usize],
    }
}

/// Stock of every SKU in one store, sorted by SKU.
#[derive(Debug, Clone, Default)]
pub struct StoreStock {
    lines: Vec<Entry>,
    /// The lots of lines with two or more, by slot; `free` lists the slots no line uses.
    many: Vec<Vec<Lot>>,
    free: Vec<u32>,
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
    /// (version, SKU, the index its line had then: a hint, checked before use).
    log: std::collections::VecDeque<(u64, Sku, u32)>,
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
    /// Each with its line as it is now (None: no line), found from where the change left it
    /// (one comparison of interned SKUs) rather than by a search of the store's lines.
    pub fn touched_since(&self, version: u64) -> Option<impl Iterator<Item = (Sku, Option<StockLine<'_>>)> + '_> {
        (version >= self.touched.floor && version <= self.version).then(|| {
            self.touched.log.iter().filter(move |(v, ..)| *v > version).map(|&(_, sku, at)| {
                let at = match self.lines.get(at as usize) {
                    Some(e) if e.sku == sku => Some(at as usize),
                    // Lines inserted since moved it.
                    _ => self.find(&sku).ok(),
                };
                (sku, at.map(|i| self.view(i)))
            })
        })
    }

    /// Records that the change that made the current version touched `sku`, whose line is at
    /// index `at`.
    fn touch(&mut self, sku: Sku, at: usize) {
        let t = &mut self.touched;
        if t.log.len() == TOUCHED_KEPT
            && let Some((v, ..)) = t.log.pop_front()
        {
            t.floor = t.floor.max(v);
        }
        t.log.push_back((self.version, sku, at as u32));
    }

    /// The index of `sku`'s line, or where it would go.
    fn find(&self, sku: &str) -> Result<usize, usize> {
        self.lines.binary_search_by(|e| e.sku.as_str().cmp(sku))
    }

    fn view(&self, i: usize) -> StockLine<'_> {
        StockLine { lots: lots_of(&self.lines[i], &self.many) }
    }

    fn lots_mut(&mut self, i: usize) -> &mut [Lot] {
        lots_of_mut(&mut self.lines[i], &mut self.many)
    }

    /// SKUs strictly after `after` (all when None) with units available now, in SKU order, each
    /// with its line.
    pub fn available_lines_after<'a>(
        &'a self,
        after: Option<&str>,
        now: Millis,
    ) -> impl Iterator<Item = (Sku, i64, StockLine<'a>)> + 'a {
        let from = after.map_or(0, |a| self.lines.partition_point(|e| e.sku.as_str() <= a));
        self.lines[from..]
            .iter()
            .map(move |e| {
                let line = StockLine { lots: lots_of(e, &self.many) };
                (e.sku, line.available(now), line)
            })
            .filter(|(_, available, _)| *available > 0)
    }

    pub fn line(&self, sku: &str) -> Option<StockLine<'_>> {
        self.find(sku).ok().map(|i| self.view(i))
    }

    pub fn lines(&self) -> impl Iterator<Item = (Sku, StockLine<'_>)> {
        self.lines.iter().map(|e| (e.sku, StockLine { lots: lots_of(e, &self.many) }))
    }

    /// SKUs strictly after `after` (all when None) with units available now, in SKU order.
    pub fn available_after<'a>(&'a self, after: Option<&str>, now: Millis) -> impl Iterator<Item = (Sku, i64)> + 'a {
        self.available_lines_after(after, now).map(|(sku, available, _)| (sku, available))
    }

    /// Records whether `sku` is now announced as available; returns what was announced before
    /// (false for a SKU with no line, which is never available).
    pub fn announce(&mut self, sku: &str, available: bool) -> bool {
        match self.find(sku) {
            Ok(i) => std::mem::replace(&mut self.lines[i].announced, available),
            Err(_) => false,
        }
    }

    /// Announces every line as it stands at `now` (start-up: what customers see is read then).
    pub fn announce_all(&mut self, now: Millis) {
        for e in &mut self.lines {
            e.announced = StockLine { lots: lots_of(e, &self.many) }.available(now) > 0;
        }
    }

    /// Bumps the version for a change to `sku` and returns its line's index, creating the line.
    fn line_entry(&mut self, sku: Sku) -> usize {
        self.version += 1;
        let i = match self.find(&sku) {
            Ok(i) => i,
            Err(i) => {
                self.lines.insert(i, Entry::new(sku));
                i
            }
        };
        self.touch(sku, i);
        i
    }

    /// Adds a lot to line `i`, in FEFO order.
    fn insert_lot(&mut self, i: usize, lot: Lot) {
        let e = &mut self.lines[i];
        match e.lots {
            NO_LOT => {
                e.one = lot;
                e.lots = ONE_LOT;
            }
            ONE_LOT => {
                let pair = if lot.fefo_key() < e.one.fefo_key() { vec![lot, e.one] } else { vec![e.one, lot] };
                e.lots = match self.free.pop() {
                    Some(slot) => {
                        self.many[slot as usize] = pair;
                        slot
                    }
                    None => {
                        self.many.push(pair);
                        (self.many.len() - 1) as u32
                    }
                };
            }
            slot => {
                let lots = &mut self.many[slot as usize];
                let at = lots.partition_point(|l| l.fefo_key() < lot.fefo_key());
                lots.insert(at, lot);
            }
        }
    }

    /// Drops line `i`'s empty lots; a line left with one lot keeps it in itself.
    fn drop_empty_lots(&mut self, i: usize) {
        let e = &mut self.lines[i];
        match e.lots {
            NO_LOT => {}
            ONE_LOT => {
                if e.one.is_empty() {
                    e.lots = NO_LOT;
                }
            }
            slot => {
                let lots = &mut self.many[slot as usize];
                lots.retain(|l| !l.is_empty());
                if lots.len() <= 1 {
                    let last = lots.pop();
                    *lots = Vec::new();
                    self.free.push(slot);
                    match last {
                        Some(l) => {
                            e.one = l;
                            e.lots = ONE_LOT;
                        }
                        None => e.lots = NO_LOT,
                    }
                }
            }
        }
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
            let available = self.line(want.sku).map_or(0, |l| l.available(now));
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
            let i = self.find(want.sku).expect("checked above");
            let sku = self.lines[i].sku;
            self.touch(sku, i);
            let mut left = want.qty;
            for lot in self.lots_mut(i).iter_mut().filter(|l| !l.is_expired(now)) {
                if left == 0 {
                    break;
                }
                let take = lot.free().min(left);
                if take > 0 {
                    lot.reserved += take;
                    left -= take;
                    deltas.push(LotDelta {
                        sku,
                        lot: lot.id,
                        expires_at: lot.expires_at(),
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
    /// a negative one is taken from free units, expired lots first, then first-expiring. The
    /// first lot of a SKU in this store interns the SKU (see [`Sku`]): the caller has checked it
    /// exists.
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
        if delta > 0 {
            let key = match self.find(sku) {
                Ok(i) => self.lines[i].sku,
                Err(_) => Sku::new(sku),
            };
            let i = self.line_entry(key);
            self.insert_lot(i, Lot::new(new_lot, expires_at, delta, 0));
            return Ok(vec![LotDelta { sku: key, lot: new_lot, expires_at, d_on_hand: delta, d_reserved: 0 }]);
        }
        let Ok(i) = self.find(sku) else {
            return Err(AdjustError::BelowReserved { on_hand: 0, reserved: 0 });
        };
        let totals = self.view(i).totals(now);
        let free: i64 = totals.on_hand - totals.reserved;
        if -delta > free {
            return Err(AdjustError::BelowReserved { on_hand: totals.on_hand, reserved: totals.reserved });
        }
        let key = self.lines[i].sku;
        self.version += 1;
        self.touch(key, i);
        let lots = self.lots_mut(i);
        let mut left = -delta;
        let mut deltas = Vec::new();
        // Expired lots first (their units cannot be sold anyway), then FEFO order.
        for expired in [true, false] {
            for lot in lots.iter_mut().filter(|l| l.is_expired(now) == expired) {
                if left == 0 {
                    break;
                }
                let take = lot.free().min(left);
                if take > 0 {
                    lot.on_hand -= take;
                    left -= take;
                    deltas.push(LotDelta {
                        sku: key,
                        lot: lot.id,
                        expires_at: lot.expires_at(),
                        d_on_hand: -take,
                        d_reserved: 0,
                    });
                }
            }
        }
        self.drop_empty_lots(i);
        Ok(deltas)
    }

    /// Writes off the free units of every lot that has expired at `now`.
    pub fn expire(&mut self, now: Millis) -> Vec<LotDelta> {
        let mut deltas: Vec<LotDelta> = Vec::new();
        let mut expired: Vec<usize> = Vec::new();
        for i in 0..self.lines.len() {
            let sku = self.lines[i].sku;
            let before = deltas.len();
            for lot in self.lots_mut(i).iter_mut().filter(|l| l.is_expired(now) && l.free() > 0) {
                deltas.push(LotDelta {
                    sku,
                    lot: lot.id,
                    expires_at: lot.expires_at(),
                    d_on_hand: -lot.free(),
                    d_reserved: 0,
                });
                lot.on_hand = lot.reserved;
            }
            if deltas.len() > before {
                self.drop_empty_lots(i);
                expired.push(i);
            }
        }
        if !deltas.is_empty() {
            self.version += 1;
            for i in expired {
                self.touch(self.lines[i].sku, i);
            }
        }
        deltas
    }

    /// Applies a ledger delta as it stands, creating the lot if needed. With negated deltas this
    /// undoes a change whose commit failed.
    pub fn apply(&mut self, d: &LotDelta) {
        let i = self.line_entry(d.sku);
        match self.lots_mut(i).iter_mut().find(|l| l.id == d.lot) {
            Some(lot) => {
                lot.on_hand += d.d_on_hand;
                lot.reserved += d.d_reserved;
            }
            None => self.insert_lot(i, Lot::new(d.lot, d.expires_at, d.d_on_hand, d.d_reserved)),
        }
        self.drop_empty_lots(i);
    }

    /// Rebuilds lots from ledger sums (start-up), beside the lines there are: `(sku, lot)` in any
    /// order; empty lots are skipped. One sort for all of them (a lot at a time would move the
    /// store's lines for every one).
    pub fn restore(&mut self, lots: impl IntoIterator<Item = (Sku, Lot)>) {
        let mut all: Vec<(Sku, Lot)> = Vec::new();
        for e in &self.lines {
            all.extend(lots_of(e, &self.many).iter().map(|l| (e.sku, *l)));
        }
        let had: Vec<Sku> = self.lines.iter().map(|e| e.sku).collect();
        all.extend(lots.into_iter().filter(|(_, l)| !l.is_empty()));
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.fefo_key().cmp(&b.1.fefo_key())));
        let mut lines: Vec<Entry> = Vec::with_capacity(all.len());
        self.many.clear();
        self.free.clear();
        let mut i = 0;
        while i < all.len() {
            let sku = all[i].0;
            let n = all[i..].iter().take_while(|(s, _)| *s == sku).count();
            let mut e = Entry::new(sku);
            if n == 1 {
                e.one = all[i].1;
                e.lots = ONE_LOT;
            } else {
                self.many.push(all[i..i + n].iter().map(|(_, l)| *l).collect());
                e.lots = (self.many.len() - 1) as u32;
            }
            lines.push(e);
            i += n;
        }
        // Lines left with no lot stay, empty (a line is never removed).
        let with_lots = lines.len();
        for sku in had {
            if lines[..with_lots].binary_search_by(|e| e.sku.cmp(&sku)).is_err() {
                lines.push(Entry::new(sku));
            }
        }
        lines.sort_unstable_by_key(|e| e.sku);
        lines.shrink_to_fit();
        self.lines = lines;
        self.version += 1;
        self.touched = Touched { log: Default::default(), floor: self.version };
    }
}

#[cfg(test)]
mod tests;
