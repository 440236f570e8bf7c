//! The quote: when an order placed now at a store would reach a point, from the state of the store
//! rather than the map alone.
//!
//! `quote = max(t_pick, t_rider) + t_ride + t_handover`:
//! - `t_pick`: the picking queue, `(orders to pick + 1) × pick time ÷ pickers`;
//! - `t_rider`: when a rider can be at the store for this order. Riders are listed by the time
//!   each can be there (0 for one idle at the store; the ride back for one idle elsewhere; the end
//!   of its task plus the ride back for a busy one). With `m` orders already waiting for a rider and
//!   `b` orders to a trip on average, this order gets the `k = ⌈(m + 1) ÷ b⌉`-th earliest; past the
//!   last of `n` riders, rider `k mod n` takes it after `k div n` more trip cycles;
//! - `t_ride` and `t_handover`: the ride to the point and the hand-over at the door.
//!
//! With no rider serving the store, the quote assumes one comes within a trip cycle and says it
//! has no rider (`no_rider`), so callers never call it within the promise. A quote never promises
//! the past: it is at least the ride and the hand-over. Pure: the snapshot of the store and `now`
//! are arguments.

use crate::Millis;

/// A store's state, as the quote needs it (refreshed by the server every dispatch tick).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreLoad {
    /// Orders placed and not yet packed: the picking queue.
    pub to_pick: u32,
    /// Orders waiting for a rider (confirmed or packed, not yet assigned).
    pub awaiting_rider: u32,
    /// When each rider who serves the store can be there, unix ms, ascending.
    pub riders_at_store: Vec<Millis>,
}

/// The settings of the quote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuoteParams {
    /// Time to pick one order, ms.
    pub pick_ms: Millis,
    /// Orders picked at once (at least 1).
    pub pickers: u32,
    /// Time at the door, ms.
    pub handover_ms: Millis,
    /// Orders per trip on average (at least 1).
    pub bundle: f64,
    /// A rider's round trip (to the door and back to the store), ms.
    pub cycle_ms: Millis,
}

/// A quote, in ms from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote {
    /// Until the order is picked.
    pub pick_ms: Millis,
    /// Until a rider can be at the store for it.
    pub rider_ms: Millis,
    /// Until the door.
    pub eta_ms: Millis,
    /// No rider serves the store: `rider_ms` is a guess of one trip cycle.
    pub no_rider: bool,
}

impl Quote {
    /// Whole minutes, rounded up.
    pub fn eta_minutes(&self) -> i64 {
        (self.eta_ms + 59_999).div_euclid(60_000)
    }
}

/// The quote for an order placed `now` at a store in state `load`, to a point `ride_ms` away.
pub fn quote(load: &StoreLoad, ride_ms: Millis, p: &QuoteParams, now: Millis) -> Quote {
    let pickers = i64::from(p.pickers.max(1));
    let pick_ms = (i64::from(load.to_pick) + 1).saturating_mul(p.pick_ms.max(0)) / pickers;
    let riders = &load.riders_at_store;
    let no_rider = riders.is_empty();
    let rider_ms = if no_rider {
        p.cycle_ms.max(0)
    } else {
        let bundle = if p.bundle.is_finite() { p.bundle.max(1.0) } else { 1.0 };
        // 0-based: the k-th earliest rider is this order's.
        let k = ((f64::from(load.awaiting_rider) + 1.0) / bundle).ceil().max(1.0) as usize - 1;
        // Past the last rider, rider `k mod n` takes it after `k div n` more trips.
        let n = riders.len();
        let (slot, rounds) = (k % n, (k / n) as i64);
        (riders[slot] - now).max(0).saturating_add(rounds.saturating_mul(p.cycle_ms.max(0)))
    };
    let door = ride_ms.max(0).saturating_add(p.handover_ms.max(0));
    let eta_ms = pick_ms.max(rider_ms).saturating_add(door);
    Quote { pick_ms, rider_ms, eta_ms, no_rider }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_800_000_000_000;
    const MIN: Millis = 60_000;

    fn params() -> QuoteParams {
        QuoteParams { pick_ms: 2 * MIN, pickers: 1, handover_ms: MIN / 2, bundle: 1.0, cycle_ms: 12 * MIN }
    }

    #[test]
    fn quotes_table() {
        let at = |mins: &[i64]| mins.iter().map(|m| NOW + m * MIN).collect::<Vec<_>>();
        let ride = 5 * MIN;
        // (what, load, params, expected eta in minutes)
        let cases: Vec<(&str, StoreLoad, QuoteParams, i64)> = vec![
            (
                "an idle rider at the store: picking, then the ride",
                StoreLoad { to_pick: 0, awaiting_rider: 0, riders_at_store: at(&[0]) },
                params(),
                8,
            ),
            (
                "three to pick before this one",
                StoreLoad { to_pick: 3, awaiting_rider: 0, riders_at_store: at(&[0]) },
                params(),
                14,
            ),
            (
                "two pickers halve the queue",
                StoreLoad { to_pick: 3, awaiting_rider: 0, riders_at_store: at(&[0]) },
                QuoteParams { pickers: 2, ..params() },
                10,
            ),
            (
                "the rider is back in 6 minutes",
                StoreLoad { to_pick: 0, awaiting_rider: 0, riders_at_store: at(&[6]) },
                params(),
                12,
            ),
            (
                "two orders wait for riders: the third rider",
                StoreLoad { to_pick: 0, awaiting_rider: 2, riders_at_store: at(&[0, 4, 9]) },
                params(),
                15,
            ),
            (
                "bundles of two: the second rider",
                StoreLoad { to_pick: 0, awaiting_rider: 2, riders_at_store: at(&[0, 4, 9]) },
                QuoteParams { bundle: 2.0, ..params() },
                10,
            ),
            (
                "more orders than riders: another round of trips",
                StoreLoad { to_pick: 0, awaiting_rider: 2, riders_at_store: at(&[1, 3]) },
                params(),
                19,
            ),
            (
                "eleven waiting, one rider: eleven rounds",
                StoreLoad { to_pick: 0, awaiting_rider: 11, riders_at_store: at(&[0]) },
                params(),
                138,
            ),
            (
                "no rider serves the store: one trip cycle",
                StoreLoad { to_pick: 0, awaiting_rider: 0, riders_at_store: vec![] },
                params(),
                18,
            ),
            (
                "a rider time in the past counts as now",
                StoreLoad { to_pick: 0, awaiting_rider: 0, riders_at_store: at(&[-30]) },
                params(),
                8,
            ),
            (
                "nonsense settings do not divide by zero",
                StoreLoad { to_pick: 0, awaiting_rider: 0, riders_at_store: at(&[0]) },
                QuoteParams { pickers: 0, bundle: f64::NAN, ..params() },
                8,
            ),
        ];
        for (what, load, p, expected) in cases {
            let q = quote(&load, ride, &p, NOW);
            assert_eq!(q.eta_minutes(), expected, "{what}");
            assert_eq!(q.no_rider, load.riders_at_store.is_empty(), "{what}");
        }
    }

    #[test]
    fn never_the_past_and_never_less_with_more_work() {
        let p = params();
        for to_pick in 0..5u32 {
            for awaiting in 0..5u32 {
                let load = StoreLoad { to_pick, awaiting_rider: awaiting, riders_at_store: vec![NOW - MIN, NOW + MIN] };
                let q = quote(&load, 0, &p, NOW + 10 * MIN);
                assert!(q.eta_ms >= p.handover_ms, "at least the hand-over");
                let more_pick = StoreLoad { to_pick: to_pick + 1, ..load.clone() };
                let more_wait = StoreLoad { awaiting_rider: awaiting + 1, ..load.clone() };
                assert!(quote(&more_pick, 0, &p, NOW).eta_ms >= quote(&load, 0, &p, NOW).eta_ms);
                assert!(quote(&more_wait, 0, &p, NOW).eta_ms >= quote(&load, 0, &p, NOW).eta_ms);
            }
        }
    }
}
