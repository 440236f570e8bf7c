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
//! The store's hand-over (collecting the order) counts in the first mile:
//! `max(t_pick, t_rider) + t_handover` before the door leg.
//!
//! Calibrated: the pick time is multiplied by the store's observed picking ratio, the trip cycle
//! by its observed riding ratio, and the ride and hand-over by its observed door ratio (pickup to
//! door against the direct ride, so it includes the drops a bundle puts first; see
//! [`crate::calibrate`]), the first mile by its observed first-mile ratio; the riders' times are
//! calibrated by the caller. The promise adds a margin: `eta = estimate × (1 + margin)`, the
//! margin an observed quantile of the estimate's relative error, never below the ride itself.
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
    /// What the server has learned of this store.
    pub calibrated: Calibrated,
    /// The delivery fee an order placed now pays, surge included (minor units).
    pub delivery_fee_minor: i64,
}

/// Observed corrections of the priors, for one store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibrated {
    /// Observed ÷ modelled picking time.
    pub pick: f64,
    /// Observed ÷ modelled time from the store (or the last drop) to the door, hand-over included.
    pub ride: f64,
    /// Observed ÷ modelled time from pickup to this order's door (the direct ride and hand-over):
    /// the ride, the hand-over and the earlier drops of a bundle.
    pub door: f64,
    /// Observed ÷ estimated time from placement to pickup (the first mile: picking, the rider's
    /// way to the store, the hand-over there), on top of the picking and riding ratios: what the
    /// queue and rider model still misses.
    pub first: f64,
    /// The promise's margin over the estimate, relative (0.2: 20% more).
    pub margin: f64,
    /// Orders per trip, as the optimizer has been bundling them.
    pub bundle: f64,
}

impl Default for Calibrated {
    fn default() -> Self {
        Calibrated { pick: 1.0, ride: 1.0, door: 1.0, first: 1.0, margin: 0.0, bundle: 1.0 }
    }
}

fn positive(x: f64, or: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { or }
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
    /// Until the door, as expected (no margin).
    pub estimate_ms: Millis,
    /// Until the door, as promised: the estimate plus the margin.
    pub eta_ms: Millis,
    /// The picking time by the priors alone (what calibration compares the observed one with).
    pub pick_prior_ms: Millis,
    /// Placement to pickup before the first-mile ratio: `max(pick, rider) + hand-over at the
    /// store` (what calibration compares the observed first mile with).
    pub first_base_ms: Millis,
    /// The door leg as estimated: from pickup to this order's door, hand-over included.
    pub door_ms: Millis,
    /// No rider serves the store: `rider_ms` is a guess of one trip cycle.
    pub no_rider: bool,
    /// Which rider to come free the order was given (1-based: `k + 1` above, so past the last of
    /// `riders` it waits `(rider_rank − 1) div riders` more trip cycles), and how many riders
    /// serve the store.
    pub rider_rank: u32,
    pub riders: u32,
}

impl Quote {
    /// Whole minutes, rounded up.
    pub fn eta_minutes(&self) -> i64 {
        (self.eta_ms + 59_999).div_euclid(60_000)
    }
}

/// The quote for an order placed `now` at a store in state `load`, to a point `ride_ms` away.
pub fn quote(load: &StoreLoad, ride_ms: Millis, p: &QuoteParams, now: Millis) -> Quote {
    let c = &load.calibrated;
    let (pick_f, ride_f, door_f) = (positive(c.pick, 1.0), positive(c.ride, 1.0), positive(c.door, 1.0));
    let scale = |ms: Millis, f: f64| (ms.max(0) as f64 * f).min(i64::MAX as f64 / 4.0) as Millis;
    let pickers = i64::from(p.pickers.max(1));
    let pick_prior_ms = (i64::from(load.to_pick) + 1).saturating_mul(p.pick_ms.max(0)) / pickers;
    let pick_ms = scale(pick_prior_ms, pick_f);
    let cycle_ms = scale(p.cycle_ms, ride_f);
    let riders = &load.riders_at_store;
    let no_rider = riders.is_empty();
    let mut rider_rank = 1;
    let rider_ms = if no_rider {
        cycle_ms
    } else {
        let bundle = positive(c.bundle, 1.0).max(1.0);
        // 0-based: the k-th earliest rider is this order's.
        let k = ((f64::from(load.awaiting_rider) + 1.0) / bundle).ceil().max(1.0) as usize - 1;
        // Past the last rider, rider `k mod n` takes it after `k div n` more trips.
        let n = riders.len();
        rider_rank = u32::try_from(k + 1).unwrap_or(u32::MAX);
        let (slot, rounds) = (k % n, (k / n) as i64);
        (riders[slot] - now).max(0).saturating_add(rounds.saturating_mul(cycle_ms))
    };
    let door = scale(ride_ms.max(0).saturating_add(p.handover_ms.max(0)), door_f);
    let first_base_ms = pick_ms.max(rider_ms).saturating_add(scale(p.handover_ms, ride_f));
    let estimate_ms = scale(first_base_ms, positive(c.first, 1.0)).saturating_add(door);
    let margin = if c.margin.is_finite() { c.margin.clamp(-0.9, 10.0) } else { 0.0 };
    let eta_ms = scale(estimate_ms, 1.0 + margin).max(door);
    let riders = u32::try_from(riders.len()).unwrap_or(u32::MAX);
    Quote {
        pick_ms,
        rider_ms,
        estimate_ms,
        eta_ms,
        pick_prior_ms,
        first_base_ms,
        door_ms: door,
        no_rider,
        rider_rank,
        riders,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_800_000_000_000;
    const MIN: Millis = 60_000;

    fn params() -> QuoteParams {
        QuoteParams { pick_ms: 2 * MIN, pickers: 1, handover_ms: MIN / 2, cycle_ms: 12 * MIN }
    }

    #[test]
    fn quotes_table() {
        let at = |mins: &[i64]| mins.iter().map(|m| NOW + m * MIN).collect::<Vec<_>>();
        let ride = 5 * MIN;
        // (what, load, params, expected eta in minutes)
        let cases: Vec<(&str, StoreLoad, QuoteParams, i64)> = vec![
            (
                "an idle rider at the store: picking, then the ride",
                StoreLoad { to_pick: 0, awaiting_rider: 0, riders_at_store: at(&[0]), ..Default::default() },
                params(),
                8,
            ),
            (
                "three to pick before this one",
                StoreLoad { to_pick: 3, awaiting_rider: 0, riders_at_store: at(&[0]), ..Default::default() },
                params(),
                14,
            ),
            (
                "two pickers halve the queue",
                StoreLoad { to_pick: 3, awaiting_rider: 0, riders_at_store: at(&[0]), ..Default::default() },
                QuoteParams { pickers: 2, ..params() },
                10,
            ),
            (
                "the rider is back in 6 minutes",
                StoreLoad { to_pick: 0, awaiting_rider: 0, riders_at_store: at(&[6]), ..Default::default() },
                params(),
                12,
            ),
            (
                "two orders wait for riders: the third rider",
                StoreLoad { to_pick: 0, awaiting_rider: 2, riders_at_store: at(&[0, 4, 9]), ..Default::default() },
                params(),
                15,
            ),
            (
                "bundles of two: the second rider",
                StoreLoad {
                    to_pick: 0,
                    awaiting_rider: 2,
                    riders_at_store: at(&[0, 4, 9]),
                    calibrated: Calibrated { bundle: 2.0, ..Calibrated::default() },
                    ..Default::default()
                },
                params(),
                10,
            ),
            (
                "more orders than riders: another round of trips",
                StoreLoad { to_pick: 0, awaiting_rider: 2, riders_at_store: at(&[1, 3]), ..Default::default() },
                params(),
                19,
            ),
            (
                "eleven waiting, one rider: eleven rounds",
                StoreLoad { to_pick: 0, awaiting_rider: 11, riders_at_store: at(&[0]), ..Default::default() },
                params(),
                138,
            ),
            (
                "no rider serves the store: one trip cycle",
                StoreLoad { to_pick: 0, awaiting_rider: 0, riders_at_store: vec![], ..Default::default() },
                params(),
                18,
            ),
            (
                "a rider time in the past counts as now",
                StoreLoad { to_pick: 0, awaiting_rider: 0, riders_at_store: at(&[-30]), ..Default::default() },
                params(),
                8,
            ),
            (
                "nonsense settings do not divide by zero",
                StoreLoad {
                    to_pick: 0,
                    awaiting_rider: 0,
                    riders_at_store: at(&[0]),
                    calibrated: Calibrated {
                        pick: f64::NAN,
                        ride: -1.0,
                        door: 0.0,
                        first: -2.0,
                        margin: f64::INFINITY,
                        bundle: f64::NAN,
                    },
                    ..Default::default()
                },
                QuoteParams { pickers: 0, ..params() },
                8,
            ),
            (
                "riders twice as slow as configured: the door leg doubles",
                StoreLoad {
                    to_pick: 0,
                    awaiting_rider: 0,
                    riders_at_store: at(&[0]),
                    calibrated: Calibrated { door: 2.0, ..Calibrated::default() },
                    ..Default::default()
                },
                params(),
                14,
            ),
            (
                "picking observed three times slower",
                StoreLoad {
                    to_pick: 1,
                    awaiting_rider: 0,
                    riders_at_store: at(&[0]),
                    calibrated: Calibrated { pick: 3.0, ..Calibrated::default() },
                    ..Default::default()
                },
                params(),
                18,
            ),
            (
                "a margin of 20% on an 8-minute estimate",
                StoreLoad {
                    to_pick: 0,
                    awaiting_rider: 0,
                    riders_at_store: at(&[0]),
                    calibrated: Calibrated { margin: 0.2, ..Calibrated::default() },
                    ..Default::default()
                },
                params(),
                10,
            ),
            (
                "the first mile observed half as long again",
                StoreLoad {
                    to_pick: 0,
                    awaiting_rider: 0,
                    riders_at_store: at(&[0]),
                    calibrated: Calibrated { first: 1.5, ..Calibrated::default() },
                    ..Default::default()
                },
                params(),
                10,
            ),
            (
                "a negative margin never promises less than the ride",
                StoreLoad {
                    to_pick: 0,
                    awaiting_rider: 0,
                    riders_at_store: at(&[0]),
                    calibrated: Calibrated { margin: -0.9, ..Calibrated::default() },
                    ..Default::default()
                },
                params(),
                6,
            ),
        ];
        for (what, load, p, expected) in cases {
            let q = quote(&load, ride, &p, NOW);
            assert_eq!(q.eta_minutes(), expected, "{what}");
            assert_eq!(q.no_rider, load.riders_at_store.is_empty(), "{what}");
        }
    }

    #[test]
    fn the_quote_says_which_rider_it_counted_on() {
        let at = |mins: &[i64]| mins.iter().map(|m| NOW + m * MIN).collect::<Vec<_>>();
        // (waiting orders, bundle, riders' times, expected rank, riders)
        let cases: Vec<(u32, f64, Vec<Millis>, u32, u32)> = vec![
            (0, 1.0, at(&[0, 4]), 1, 2),
            (2, 1.0, at(&[0, 4, 9]), 3, 3),
            (2, 2.0, at(&[0, 4, 9]), 2, 3),
            // Past the last rider: the rank says how many more trips (rank 3 of 2: one round).
            (2, 1.0, at(&[1, 3]), 3, 2),
            (0, 1.0, vec![], 1, 0),
        ];
        for (awaiting, bundle, riders, rank, n) in cases {
            let load = StoreLoad {
                awaiting_rider: awaiting,
                riders_at_store: riders,
                calibrated: Calibrated { bundle, ..Calibrated::default() },
                ..Default::default()
            };
            let q = quote(&load, 5 * MIN, &params(), NOW);
            assert_eq!((q.rider_rank, q.riders), (rank, n), "{awaiting} waiting, bundles of {bundle}");
        }
    }

    #[test]
    fn never_the_past_and_never_less_with_more_work() {
        let p = params();
        for to_pick in 0..5u32 {
            for awaiting in 0..5u32 {
                let load = StoreLoad {
                    to_pick,
                    awaiting_rider: awaiting,
                    riders_at_store: vec![NOW - MIN, NOW + MIN],
                    ..Default::default()
                };
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
