//! The dispatch optimizer of darkstore: which rider takes which orders, and when.
//!
//! Pure: no IO, no clock, no async. Time is the `now` argument (milliseconds), so the real-time
//! server and the simulated-time MDRP replay run this same code.
//!
//! Every tick ([`plan_tick`]) sees the open orders (placed, not yet assigned) and the riders that
//! are idle or will be free soon, and:
//! 1. **bundles** orders of the same store: greedy insertion in ready-time order, into a bundle of
//!    at most `max_bundle` orders, when the bundle still meets every order's deadline and either
//!    riders are scarce near the store (more orders than riders that can be there in time) or the
//!    bundle saves rider time (the insertion costs less than `bundle_saving` of a separate trip);
//! 2. finds **candidate riders** per bundle from an R-tree of rider positions (`candidates`
//!    nearest to the store that can make the pickup before their shift ends);
//! 3. solves a **min-cost assignment** of bundles to riders on that candidate graph
//!    ([`assign::solve`], optimal for the graph), where a route's cost is the click-to-door time
//!    of its orders, plus `late_weight` × lateness past the deadline, plus `rider_time_weight` ×
//!    the rider's time on the route;
//! 4. **holds back** an assignment when waiting can still improve it: the rider is not free yet,
//!    or its orders are not ready and the rider could still leave a tick later and be at the
//!    store when they are. It never holds past that point, so holding back never breaks a
//!    promise the plan would have kept, and a ready order with a free rider leaves at once.
//!
//! [`greedy_tick`] is the baseline: first come, first served, each order alone to the rider who
//! can pick it up earliest, committed at once.

pub mod assign;
pub mod index;
mod route;

use route::{Legs, Sequences, best_sequence};
pub use route::{cost, route};

use rstar::{AABB, PointDistance, RTree, RTreeObject};

/// Milliseconds (of the unix epoch in the server, of the instance day in the replay).
pub type Millis = i64;

/// A point: planar metres (x, y) in the replay; (lng, lat) degrees in the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pt {
    pub x: f64,
    pub y: f64,
}

impl Pt {
    pub fn new(x: f64, y: f64) -> Pt {
        Pt { x, y }
    }
}

/// Travel time between two points.
pub trait Travel {
    fn ms(&self, from: Pt, to: Pt) -> Millis;
}

/// The MDRP rule: `ceil(euclidean metres / metres_per_minute)` whole minutes.
#[derive(Debug, Clone, Copy)]
pub struct PlanarTravel {
    pub metres_per_minute: f64,
}

impl Travel for PlanarTravel {
    fn ms(&self, a: Pt, b: Pt) -> Millis {
        let d = ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt();
        (d / self.metres_per_minute).ceil() as Millis * 60_000
    }
}

/// The server's rule: great-circle distance × detour at a rider speed; points are (lng, lat).
#[derive(Debug, Clone, Copy)]
pub struct GeoTravel {
    pub speed_mps: f64,
    pub detour: f64,
}

impl Travel for GeoTravel {
    fn ms(&self, a: Pt, b: Pt) -> Millis {
        use geo::{Distance, Haversine, Point};
        let d = Haversine.distance(Point::new(a.x, a.y), Point::new(b.x, b.y));
        (d * self.detour / self.speed_mps * 1000.0).ceil() as Millis
    }
}

/// An order waiting for a rider.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderIn {
    /// The caller's key, returned in plans.
    pub key: usize,
    /// Orders of one store may be bundled.
    pub store: u32,
    pub pickup: Pt,
    pub drop: Pt,
    pub placed_at: Millis,
    /// When it is (or is expected to be) packed and ready to leave.
    pub ready_at: Millis,
    /// The service goal: delivered by then (lateness past it costs `late_weight`).
    pub deadline: Millis,
    /// The time promised to the customer. A bundle never makes an order later than this, and
    /// lateness past it costs `promise_weight` more (the replay, which has no promise but its
    /// target, sets it to `deadline` and leaves `promise_weight` at 0).
    pub promise: Millis,
}

/// A rider who is free, or will be.
#[derive(Debug, Clone, PartialEq)]
pub struct RiderIn {
    pub key: usize,
    /// Where the rider is (or will be when free).
    pub pos: Pt,
    /// When the rider is free (≤ now when idle).
    pub free_at: Millis,
    /// No pickups after this time (end of shift); `Millis::MAX` when none.
    pub off_at: Millis,
}

/// The knobs of the optimizer (documented in ARCHITECTURE.md).
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub pickup_service_ms: Millis,
    pub dropoff_service_ms: Millis,
    /// Most orders in a bundle (1 turns bundling off).
    pub max_bundle: usize,
    /// A bundle also forms when adding an order costs less than this share of a separate trip.
    pub bundle_saving: f64,
    /// Candidate riders per bundle.
    pub candidates: usize,
    /// The period between ticks: how long holding back delays a decision.
    pub tick_ms: Millis,
    /// Weight of lateness past the deadline, on top of click-to-door.
    pub late_weight: f64,
    /// Weight of lateness past the promise, on top of `late_weight` (0 by default; the server
    /// sets it).
    pub promise_weight: f64,
    /// Weight of the rider's time on the route.
    pub rider_time_weight: f64,
    /// Hold back commitments while waiting can still improve them.
    pub hold_back: bool,
    /// Weight of the time an order has already waited, when it is left unassigned: older orders
    /// go first when riders are scarce.
    pub age_weight: f64,
    /// How much more than an order it costs to leave one unassigned once the earliest any
    /// candidate rider could pick it up is past half of its time from placement to its latest
    /// pickup (its promise less the ride to its door alone and the service times there):
    /// `urgency_weight × (share − ½)`, in orders, capped at half the weight. With riders scarce,
    /// leaving a bundle of `n` costs `n` orders, so a lone order running out of time outranks a
    /// pair (at 6: from two thirds of its time on) and a triple (from five sixths). Counted to the
    /// pickup, not the promise, so an order with a long ride to its door is urgent sooner than
    /// one next door promised alike. 0 turns it off (the replay's default).
    pub urgency_weight: f64,
    /// Threads a tick may use (1: the caller's alone). The plans are the same whatever it is:
    /// each store's bundles and prices, and each plan, are computed apart and put back in order;
    /// the assignment between them runs on the caller's thread.
    pub threads: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            pickup_service_ms: 60_000,
            dropoff_service_ms: 60_000,
            max_bundle: 3,
            bundle_saving: 0.6,
            candidates: 32,
            tick_ms: 10_000,
            late_weight: 4.0,
            promise_weight: 0.0,
            rider_time_weight: 0.5,
            hold_back: true,
            age_weight: 5.0,
            urgency_weight: 0.0,
            threads: 1,
        }
    }
}

/// A route for one rider: to the store, then each drop-off in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The rider's key.
    pub rider: usize,
    /// Order keys, in delivery sequence.
    pub orders: Vec<usize>,
    pub store: u32,
    pub start_at: Millis,
    pub arrive_store_at: Millis,
    pub pickup_at: Millis,
    /// Per order, in delivery sequence.
    pub drop_at: Vec<Millis>,
    /// When the rider is free again, at the last drop-off.
    pub free_at: Millis,
    pub end: Pt,
}

/// The cost of leaving an order without a rider this tick: more than any route costs, so the
/// assignment serves as many orders as riders allow.
const UNASSIGNED_COST: i64 = 1_000_000_000;

/// How many orders' worth more it costs to leave `o` unassigned when a rider could pick it up at
/// `pickup` at the earliest ([`Params::urgency_weight`]). An order whose promise cannot be kept
/// even by a pickup at its placement is as urgent as any.
fn urgency(travel: &impl Travel, params: &Params, o: &OrderIn, pickup: Millis) -> f64 {
    if params.urgency_weight <= 0.0 {
        return 0.0;
    }
    let door = travel.ms(o.pickup, o.drop) + params.pickup_service_ms / 2 + params.dropoff_service_ms / 2;
    let span = o.promise.saturating_sub(door).saturating_sub(o.placed_at);
    let share = if span <= 0 { 1.0 } else { pickup.saturating_sub(o.placed_at) as f64 / span as f64 };
    params.urgency_weight * (share - 0.5).clamp(0.0, 0.5)
}

struct RiderPoint {
    idx: usize,
    at: [f64; 2],
}

impl RTreeObject for RiderPoint {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        AABB::from_point(self.at)
    }
}

impl PointDistance for RiderPoint {
    fn distance_2(&self, p: &[f64; 2]) -> f64 {
        (self.at[0] - p[0]).powi(2) + (self.at[1] - p[1]).powi(2)
    }
}

/// Groups orders of one store into bundles (each a list of indices into `group`). `rider_at` is
/// the earliest a rider can be at the store: a bundle is judged on the route from there.
fn bundle_store(
    travel: &impl Travel,
    params: &Params,
    group: &[&OrderIn],
    riders_in_time: usize,
    rider_at: Millis,
    now: Millis,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..group.len()).collect();
    order.sort_by_key(|&i| (group[i].ready_at, group[i].placed_at, group[i].key));
    if params.max_bundle <= 1 || group.len() == 1 {
        return order.into_iter().map(|i| vec![i]).collect();
    }
    // Bundling asks for the same legs among the store and its drops many times over.
    let travel = &Legs::new(travel, std::iter::once(group[0].pickup).chain(group.iter().map(|o| o.drop)).collect());
    // A courier at the store as early as any rider can be: bundling is judged on the store-side
    // route from then.
    let at_store = RiderIn { key: usize::MAX, pos: group[0].pickup, free_at: rider_at.max(now), off_at: Millis::MAX };
    let scarce = group.len() > riders_in_time;
    let target = if scarce { (group.len().div_ceil(riders_in_time.max(1))).clamp(1, params.max_bundle) } else { 1 };
    // Each order alone: its route's time, and when it would be dropped.
    let alone: Vec<Option<(Millis, Millis)>> = group
        .iter()
        .map(|o| {
            best_sequence(travel, params, &at_store, &[o], now)
                .map(|(_, plan, _)| (plan.free_at - plan.start_at, plan.drop_at[0]))
        })
        .collect();
    let mut bundles: Vec<Vec<usize>> = Vec::new();
    for i in order {
        let o = group[i];
        let mut best: Option<(usize, i64)> = None;
        for (b, members) in bundles.iter().enumerate() {
            if members.len() >= params.max_bundle {
                continue;
            }
            let mut with: Vec<&OrderIn> = members.iter().map(|&m| group[m]).collect();
            let before = best_sequence(travel, params, &at_store, &with, now);
            with.push(o);
            let Some((seq, plan, c)) = best_sequence(travel, params, &at_store, &with, now) else { continue };
            // A bundle never breaks a promise, nor makes an order that is late whatever happens
            // later than it would be alone: such an order may join a bundle (first), else it would
            // always take a rider to itself and, with riders scarce, wait ever longer.
            let alone_drop = |s: &OrderIn| {
                let j = members.iter().copied().chain([i]).find(|&j| std::ptr::eq(group[j], s));
                j.and_then(|j| alone[j]).map_or(Millis::MIN, |(_, drop)| drop)
            };
            if seq.iter().zip(&plan.drop_at).any(|(s, &d)| d > s.promise.max(alone_drop(s))) {
                continue;
            }
            let extra_time = plan.free_at - plan.start_at - before.map_or(0, |b| b.1.free_at - b.1.start_at);
            let pays = alone[i].is_some_and(|(a, _)| (extra_time as f64) < params.bundle_saving * a as f64);
            let wanted = members.len() < target;
            if (pays || wanted) && best.is_none_or(|(_, bc)| c < bc) {
                best = Some((b, c));
            }
        }
        match best {
            Some((b, _)) => bundles[b].push(i),
            None => bundles.push(vec![i]),
        }
    }
    bundles
}

/// One tick of the optimizer: the plans to commit now. Orders not in a returned plan wait for a
/// later tick.
pub fn plan_tick(
    now: Millis,
    orders: &[OrderIn],
    riders: &[RiderIn],
    params: &Params,
    travel: &(impl Travel + Sync),
) -> Vec<Plan> {
    if orders.is_empty() || riders.is_empty() {
        return Vec::new();
    }
    let tree = RTree::bulk_load(
        riders.iter().enumerate().map(|(idx, r)| RiderPoint { idx, at: [r.pos.x, r.pos.y] }).collect(),
    );
    // Orders by store (in the order given within each).
    let mut by_store: Vec<&OrderIn> = orders.iter().collect();
    by_store.sort_by_key(|o| o.store);
    let groups: Vec<&[&OrderIn]> = by_store.chunk_by(|a, b| a.store == b.store).collect();
    // Each store's bundles, their candidate edges and their costs of staying unassigned.
    let per_store = par_map(&groups, params.threads, |group| store_rows(now, group, riders, &tree, params, travel));
    let mut rows: Vec<Vec<&OrderIn>> = Vec::with_capacity(orders.len());
    let mut edges: Vec<Vec<(usize, i64)>> = Vec::with_capacity(orders.len());
    let mut unassigned = Vec::with_capacity(orders.len());
    for (group, store) in groups.iter().zip(per_store) {
        for (bundle, row, cost) in store {
            rows.push(bundle.into_iter().map(|i| group[i]).collect());
            edges.push(row);
            unassigned.push(cost);
        }
    }
    let solution = assign::solve(riders.len(), &edges, &unassigned);
    let chosen: Vec<(&Vec<&OrderIn>, usize)> =
        rows.iter().zip(solution).filter_map(|(bundle, col)| col.map(|r| (bundle, r))).collect();
    let plans = par_map(&chosen, params.threads, |&(bundle, r)| {
        let rider = &riders[r];
        let (_, plan, _) = best_sequence(travel, params, rider, bundle, now)?;
        if rider.free_at > now {
            // The best rider is still busy: wait for it (the plan holds until it is free).
            return None;
        }
        if params.hold_back {
            let ready = bundle.iter().map(|o| o.ready_at).max().unwrap_or(now);
            let to_store = travel.ms(rider.pos, bundle[0].pickup) + params.pickup_service_ms / 2;
            // Leaving a tick later still reaches the store before the orders are ready.
            if now + params.tick_ms + to_store <= ready {
                return None;
            }
        }
        Some(plan)
    });
    plans.into_iter().flatten().collect()
}

/// A bundle (indices into its store's orders), its candidate edges `(rider, cost)` and its cost
/// of staying unassigned.
type Row = (Vec<usize>, Vec<(usize, i64)>, i64);

/// One store's part of a tick: its bundles (as indices into `group`), each with its candidate
/// riders' costs and its cost of staying unassigned.
fn store_rows(
    now: Millis,
    group: &[&OrderIn],
    riders: &[RiderIn],
    tree: &RTree<RiderPoint>,
    params: &Params,
    travel: &impl Travel,
) -> Vec<Row> {
    let latest_ready = group.iter().map(|o| o.ready_at).max().unwrap_or(now).max(now);
    // Riders who can be at the store by the time its orders are ready, and the earliest any
    // rider can be there. The riders nearest the store and their rides to it, nearest first, are
    // shared by that count and by its bundles' candidates.
    let store_pt = group[0].pickup;
    let mut nearest: Vec<(usize, Millis)> = tree
        .nearest_neighbor_iter(&[store_pt.x, store_pt.y])
        .take(params.candidates * 2)
        .map(|p| (p.idx, travel.ms(riders[p.idx].pos, store_pt)))
        .collect();
    let (mut in_time, mut rider_at) = (0, Millis::MAX);
    for &(idx, ride_ms) in &nearest {
        let at = riders[idx].free_at.max(now) + ride_ms;
        rider_at = rider_at.min(at);
        if at <= latest_ready + params.tick_ms {
            in_time += 1;
        }
    }
    let rider_at = if rider_at == Millis::MAX { now } else { rider_at };
    let mut out = Vec::new();
    for b in bundle_store(travel, params, group, in_time, rider_at, now) {
        let bundle: Vec<&OrderIn> = b.iter().map(|&i| group[i]).collect();
        let mut row = Vec::with_capacity(params.candidates);
        // The earliest any candidate could pick the bundle up, were its orders ready.
        let mut earliest = Millis::MAX;
        let sequences = Sequences::new(travel, params, &bundle);
        let mut next = 0;
        while row.len() < params.candidates {
            if next == nearest.len() {
                // More of them, in the same order (the search is deterministic).
                let more = tree.nearest_neighbor_iter(&[store_pt.x, store_pt.y]).skip(next).take(params.candidates);
                nearest.extend(more.map(|p| (p.idx, travel.ms(riders[p.idx].pos, store_pt))));
                if next == nearest.len() {
                    break;
                }
            }
            let (idx, ride_ms) = nearest[next];
            next += 1;
            if let Some((_, arrive_store_at, c)) = sequences.best_from(params, &riders[idx], ride_ms, now) {
                earliest = earliest.min(arrive_store_at + params.pickup_service_ms / 2);
                row.push((idx, c));
            }
        }
        // Staying unassigned costs more than any route (so as many orders as possible leave), and
        // more the longer the orders have waited (so the oldest are not starved by newer ones) or
        // the nearer the earliest pickup is to the latest that keeps their promises.
        let waited: f64 = bundle.iter().map(|o| (now - o.placed_at).max(0) as f64).sum();
        let urgent: f64 = bundle.iter().map(|o| urgency(travel, params, o, earliest.max(now))).sum();
        let cost = UNASSIGNED_COST * bundle.len() as i64
            + (UNASSIGNED_COST as f64 * urgent) as i64
            + (params.age_weight * waited) as i64;
        out.push((b, row, cost));
    }
    out
}

/// `f` over `items`, in order, on up to `threads` threads (the caller's among them): items are
/// taken a few at a time from a shared counter, so uneven items (a busy store and a quiet one)
/// balance, and the results are put back in the items' order.
fn par_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    /// Items below which threads cost more than they save.
    const MIN_ITEMS: usize = 64;
    const GRAIN: usize = 8;
    if threads <= 1 || items.len() < MIN_ITEMS {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut out = Vec::new();
        loop {
            let start = next.fetch_add(GRAIN, std::sync::atomic::Ordering::Relaxed);
            if start >= items.len() {
                return out;
            }
            let end = (start + GRAIN).min(items.len());
            out.push((start, items[start..end].iter().map(&f).collect::<Vec<R>>()));
        }
    };
    let mut parts: Vec<(usize, Vec<R>)> = std::thread::scope(|s| {
        let others: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut parts = work();
        for h in others {
            parts.extend(h.join().expect("a planning thread panicked"));
        }
        parts
    });
    parts.sort_unstable_by_key(|(start, _)| *start);
    parts.into_iter().flat_map(|(_, r)| r).collect()
}

/// The baseline: orders first come, first served, each alone to the free rider who can pick it up
/// earliest, committed at once.
pub fn greedy_tick(
    now: Millis,
    orders: &[OrderIn],
    riders: &[RiderIn],
    params: &Params,
    travel: &impl Travel,
) -> Vec<Plan> {
    let mut order: Vec<&OrderIn> = orders.iter().collect();
    order.sort_by_key(|o| (o.placed_at, o.key));
    let mut taken = vec![false; riders.len()];
    let mut plans = Vec::new();
    for o in order {
        let mut best: Option<(usize, Plan)> = None;
        for (i, r) in riders.iter().enumerate() {
            if taken[i] || r.free_at > now {
                continue;
            }
            if let Some(plan) = route(travel, params, r, &[o], now)
                && best.as_ref().is_none_or(|(_, b)| plan.pickup_at < b.pickup_at)
            {
                best = Some((i, plan));
            }
        }
        if let Some((i, plan)) = best {
            taken[i] = true;
            plans.push(plan);
        }
    }
    plans
}

#[cfg(test)]
mod tests;
