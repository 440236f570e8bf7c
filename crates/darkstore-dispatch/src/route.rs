//! Pricing a route: when a rider through a bundle's orders picks up and drops each, what that
//! costs, and the best delivery sequence of a bundle — from scratch (`route`, `best_sequence`) or
//! with each sequence's legs computed once for every candidate rider (`Sequences`, the tick's
//! hot path; the two agree, see the tests). `Legs` keeps the travel times among a store and its
//! drops while bundling.

use crate::{Millis, OrderIn, Params, Plan, Pt, RiderIn, Travel};

/// Times of a route for `rider` through `orders` in sequence, or None when the pickup would fall
/// after the rider's shift.
pub fn route(travel: &impl Travel, params: &Params, rider: &RiderIn, orders: &[&OrderIn], now: Millis) -> Option<Plan> {
    let first = orders.first()?;
    let start_at = rider.free_at.max(now);
    let arrive_store_at = start_at + travel.ms(rider.pos, first.pickup);
    let ready = orders.iter().map(|o| o.ready_at).max().unwrap_or(now);
    let pickup_at = ready.max(arrive_store_at + params.pickup_service_ms / 2);
    if pickup_at > rider.off_at {
        return None;
    }
    let (drop_at, free_at) = drops_after(travel, params, orders, pickup_at);
    Some(Plan {
        rider: rider.key,
        orders: orders.iter().map(|o| o.key).collect(),
        store: first.store,
        start_at,
        arrive_store_at,
        pickup_at,
        drop_at,
        free_at,
        end: orders.last().map_or(first.pickup, |o| o.drop),
    })
}

/// Each drop's time, and when the rider is free after the last, for `orders` delivered in
/// sequence from a pickup at `pickup_at` (MDRP timing: half of each service before, half after).
fn drops_after(travel: &impl Travel, params: &Params, orders: &[&OrderIn], pickup_at: Millis) -> (Vec<Millis>, Millis) {
    let mut t = pickup_at + params.pickup_service_ms / 2;
    let mut at = orders.first().map(|o| o.pickup);
    let mut drop_at = Vec::with_capacity(orders.len());
    for o in orders {
        t += at.map_or(0, |at| travel.ms(at, o.drop));
        let dropped = t + params.dropoff_service_ms / 2;
        drop_at.push(dropped);
        t = dropped + params.dropoff_service_ms / 2;
        at = Some(o.drop);
    }
    (drop_at, t)
}

/// The delivery sequences tried for a bundle: both orders of two; for more, insertion order is
/// the sequence, and each rotation of it is tried.
fn sequences<'a>(orders: &[&'a OrderIn]) -> Vec<Vec<&'a OrderIn>> {
    match orders.len() {
        0 => Vec::new(),
        1 => vec![orders.to_vec()],
        2 => vec![vec![orders[0], orders[1]], vec![orders[1], orders[0]]],
        _ => (0..orders.len())
            .map(|k| {
                let mut seq = orders.to_vec();
                seq.rotate_left(k);
                seq
            })
            .collect(),
    }
}

/// The cost of a plan, in weighted milliseconds.
pub fn cost(params: &Params, plan: &Plan, orders: &[&OrderIn]) -> i64 {
    cost_of(params, orders.iter().copied().zip(plan.drop_at.iter().copied()), plan.free_at - plan.start_at)
}

/// [`cost`] from each order's drop time and the rider's time on the route.
fn cost_of<'a>(params: &Params, drops: impl Iterator<Item = (&'a OrderIn, Millis)>, rider_ms: Millis) -> i64 {
    let mut total = 0.0;
    for (o, dropped) in drops {
        total += (dropped - o.placed_at) as f64;
        total += params.late_weight * (dropped - o.deadline).max(0) as f64;
        total += params.promise_weight * (dropped - o.promise).max(0) as f64;
    }
    total += params.rider_time_weight * rider_ms as f64;
    total as i64
}

/// The delivery sequences [`best_sequence`] tries for a bundle, each with its drops' times after
/// the pickup: from any rider the route is then one ride to the store and a sum, the same plan
/// and cost `best_sequence` finds (checked against it in the tests).
pub(crate) struct Sequences<'a> {
    /// Each sequence: the bundle's orders in delivery order.
    pub(crate) seqs: Vec<Vec<&'a OrderIn>>,
    /// Per sequence, each drop's time after the pickup.
    drops: Vec<Vec<Millis>>,
    /// Per sequence, the time from the pickup to the last drop-off's end.
    free: Vec<Millis>,
    /// When the last of the bundle's orders is ready.
    ready: Option<Millis>,
}

impl<'a> Sequences<'a> {
    pub(crate) fn new(travel: &impl Travel, params: &Params, orders: &[&'a OrderIn]) -> Sequences<'a> {
        let seqs = sequences(orders);
        let (drops, free) = seqs.iter().map(|seq| drops_after(travel, params, seq, 0)).unzip();
        Sequences { seqs, drops, free, ready: orders.iter().map(|o| o.ready_at).max() }
    }

    /// The best sequence's index, when the rider reaches the store and its cost, or None when
    /// the pickup would fall after the rider's shift.
    #[cfg(test)]
    pub(crate) fn best(
        &self,
        travel: &impl Travel,
        params: &Params,
        rider: &RiderIn,
        now: Millis,
    ) -> Option<(usize, Millis, i64)> {
        let ride_ms = travel.ms(rider.pos, self.seqs.first()?[0].pickup);
        self.best_from(params, rider, ride_ms, now)
    }

    /// As `best`, the rider's ride to the store being `ride_ms`.
    pub(crate) fn best_from(
        &self,
        params: &Params,
        rider: &RiderIn,
        ride_ms: Millis,
        now: Millis,
    ) -> Option<(usize, Millis, i64)> {
        self.seqs.first()?;
        let start_at = rider.free_at.max(now);
        let arrive_store_at = start_at + ride_ms;
        let pickup_at = self.ready.unwrap_or(now).max(arrive_store_at + params.pickup_service_ms / 2);
        if pickup_at > rider.off_at {
            return None;
        }
        let mut best: Option<(usize, i64)> = None;
        for (i, seq) in self.seqs.iter().enumerate() {
            let drops = seq.iter().copied().zip(self.drops[i].iter().map(|d| pickup_at + d));
            let c = cost_of(params, drops, pickup_at + self.free[i] - start_at);
            if best.is_none_or(|(_, b)| c < b) {
                best = Some((i, c));
            }
        }
        best.map(|(i, c)| (i, arrive_store_at, c))
    }
}

/// The best of the delivery [`sequences`] of `orders` from their store.
pub(crate) fn best_sequence<'a>(
    travel: &impl Travel,
    params: &Params,
    courier_at_store: &RiderIn,
    orders: &[&'a OrderIn],
    now: Millis,
) -> Option<(Vec<&'a OrderIn>, Plan, i64)> {
    let mut best: Option<(Vec<&OrderIn>, Plan, i64)> = None;
    let mut consider = |seq: Vec<&'a OrderIn>| {
        if let Some(plan) = route(travel, params, courier_at_store, &seq, now) {
            let c = cost(params, &plan, &seq);
            if best.as_ref().is_none_or(|b| c < b.2) {
                best = Some((seq, plan, c));
            }
        }
    };
    for seq in sequences(orders) {
        consider(seq);
    }
    best
}

/// Travel times among a few points (a store and its drops), each computed once when first
/// asked; any other point is passed to `inner`.
pub(crate) struct Legs<'t, T> {
    inner: &'t T,
    pts: Vec<Pt>,
    /// `pts.len()²` times, row by origin; -1 until computed.
    ms: Vec<std::cell::Cell<Millis>>,
}

impl<'t, T: Travel> Legs<'t, T> {
    pub(crate) fn new(inner: &'t T, pts: Vec<Pt>) -> Legs<'t, T> {
        let ms = (0..pts.len() * pts.len()).map(|_| std::cell::Cell::new(-1)).collect();
        Legs { inner, pts, ms }
    }
}

impl<T: Travel> Travel for Legs<'_, T> {
    fn ms(&self, from: Pt, to: Pt) -> Millis {
        let n = self.pts.len();
        let (Some(i), Some(j)) = (self.pts.iter().position(|p| *p == from), self.pts.iter().position(|p| *p == to))
        else {
            return self.inner.ms(from, to);
        };
        let cell = &self.ms[i * n + j];
        if cell.get() < 0 {
            cell.set(self.inner.ms(from, to));
        }
        cell.get()
    }
}
