//! Meal Delivery Routing Problem replay (Reyes et al., 2018) through darkstore's dispatch crate.
//!
//! Simulated time in whole minutes (milliseconds inside the dispatch crate). Every `tick` minutes
//! the open orders (placed, not yet assigned) and the couriers on duty that are free or will be
//! within the horizon go to the policy; the plans it commits are executed exactly as the instance
//! rules say: travel = ceil(euclidean / metres-per-minute), pickup no earlier than ready time and
//! arrival + half the pickup service, drop-off at arrival + half the drop-off service, bundles
//! from one restaurant only, no diversion en route, no pickups after a courier's off time.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::Instant;

use darkstore_dispatch::{Millis, OrderIn, Params, PlanarTravel, Pt, RiderIn, Travel, greedy_tick, plan_tick};
use serde_json::{Value, json};

use clap::{Args, ValueEnum};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// darkstore's optimizer: bundling, min-cost assignment, hold-back.
    Optimizer,
    /// First come, first served: each order alone to the courier who picks it up earliest.
    Greedy,
}

/// The optimizer's knobs (defaults are darkstore-dispatch's).
#[derive(Clone, Args)]
pub struct Knobs {
    /// Most orders in one bundle.
    #[arg(long)]
    pub max_bundle: Option<usize>,
    /// Bundle when adding an order costs less than this share of a separate trip.
    #[arg(long)]
    pub bundle_saving: Option<f64>,
    /// Candidate riders per bundle.
    #[arg(long)]
    pub candidates: Option<usize>,
    /// Weight of lateness past the promise.
    #[arg(long)]
    pub late_weight: Option<f64>,
    /// Weight of rider time on the route.
    #[arg(long)]
    pub rider_time_weight: Option<f64>,
    /// Weight of time already waited, for orders left unassigned.
    #[arg(long)]
    pub age_weight: Option<f64>,
    /// Weight of urgency (how much of an order's time to its latest pickup has passed by the
    /// earliest any candidate could pick it up), as the server sets it (0 by default here).
    #[arg(long)]
    pub urgency_weight: Option<f64>,
    /// Turn holding back off.
    #[arg(long)]
    pub no_hold_back: bool,
}

impl Knobs {
    pub fn apply(&self, mut p: darkstore_dispatch::Params) -> darkstore_dispatch::Params {
        if let Some(v) = self.max_bundle {
            p.max_bundle = v;
        }
        if let Some(v) = self.bundle_saving {
            p.bundle_saving = v;
        }
        if let Some(v) = self.candidates {
            p.candidates = v;
        }
        if let Some(v) = self.late_weight {
            p.late_weight = v;
        }
        if let Some(v) = self.rider_time_weight {
            p.rider_time_weight = v;
        }
        if let Some(v) = self.age_weight {
            p.age_weight = v;
        }
        if let Some(v) = self.urgency_weight {
            p.urgency_weight = v;
        }
        if self.no_hold_back {
            p.hold_back = false;
        }
        p
    }
}

const MIN: Millis = 60_000;
/// Couriers who will be free within this many minutes are offered to the optimizer.
const HORIZON_MIN: i64 = 20;

struct Order {
    id: String,
    drop: Pt,
    placed: i64,
    restaurant: usize,
    ready: i64,
}

struct Courier {
    id: String,
    pos: Pt,
    on: i64,
    off: i64,
}

struct Instance {
    restaurants: Vec<(String, Pt)>,
    orders: Vec<Order>,
    couriers: Vec<Courier>,
    metres_per_minute: f64,
    pickup_service: i64,
    dropoff_service: i64,
    target_c2d: i64,
    pay_per_order: f64,
    pay_per_hour: f64,
}

fn rows(dir: &Path, file: &str) -> Result<Vec<Vec<String>>, String> {
    let path = dir.join(file);
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('\t').map(|s| s.trim().to_owned()).collect())
        .collect())
}

fn num<T: std::str::FromStr>(row: &[String], i: usize, file: &str) -> Result<T, String> {
    row.get(i).and_then(|s| s.parse().ok()).ok_or_else(|| format!("{file}: bad field {i} in {row:?}"))
}

fn load(dir: &Path) -> Result<Instance, String> {
    let mut restaurants = Vec::new();
    let mut by_name = HashMap::new();
    for r in rows(dir, "restaurants.txt")? {
        by_name.insert(r[0].clone(), restaurants.len());
        restaurants.push((r[0].clone(), Pt::new(num(&r, 1, "restaurants")?, num(&r, 2, "restaurants")?)));
    }
    let mut orders = Vec::new();
    for r in rows(dir, "orders.txt")? {
        let restaurant = *by_name.get(&r[4]).ok_or_else(|| format!("orders.txt: unknown restaurant {}", r[4]))?;
        orders.push(Order {
            id: r[0].clone(),
            drop: Pt::new(num(&r, 1, "orders")?, num(&r, 2, "orders")?),
            placed: num(&r, 3, "orders")?,
            restaurant,
            ready: num(&r, 5, "orders")?,
        });
    }
    let mut couriers = Vec::new();
    for r in rows(dir, "couriers.txt")? {
        couriers.push(Courier {
            id: r[0].clone(),
            pos: Pt::new(num(&r, 1, "couriers")?, num(&r, 2, "couriers")?),
            on: num(&r, 3, "couriers")?,
            off: num(&r, 4, "couriers")?,
        });
    }
    let p = rows(dir, "instance_parameters.txt")?.into_iter().next().ok_or("instance_parameters.txt is empty")?;
    Ok(Instance {
        restaurants,
        orders,
        couriers,
        metres_per_minute: num(&p, 0, "parameters")?,
        pickup_service: num(&p, 1, "parameters")?,
        dropoff_service: num(&p, 2, "parameters")?,
        target_c2d: num(&p, 3, "parameters")?,
        pay_per_order: num(&p, 5, "parameters")?,
        pay_per_hour: num(&p, 6, "parameters")?,
    })
}

/// What happened to one order.
#[derive(Clone, Copy)]
struct Delivery {
    courier: usize,
    pickup: i64,
    drop: i64,
}

struct Outcome {
    deliveries: Vec<Option<Delivery>>,
    /// (assignment time, pickup time, courier, orders)
    assignments: Vec<(i64, i64, usize, Vec<usize>)>,
    /// (courier, departure, origin, destination) with ids as the evaluator reads them.
    moves: Vec<(usize, i64, String, String)>,
    /// Minutes each courier spent driving or in service.
    busy: Vec<i64>,
    seconds: f64,
}

fn replay(inst: &Instance, policy: Policy, tick: i64, knobs: &Knobs) -> Outcome {
    let travel = PlanarTravel { metres_per_minute: inst.metres_per_minute };
    let params = knobs.apply(Params {
        pickup_service_ms: inst.pickup_service * MIN,
        dropoff_service_ms: inst.dropoff_service * MIN,
        tick_ms: tick * MIN,
        ..Params::default()
    });
    let started = Instant::now();
    let n = inst.orders.len();
    let mut deliveries: Vec<Option<Delivery>> = vec![None; n];
    let mut free_at: Vec<i64> = inst.couriers.iter().map(|c| c.on).collect();
    let mut pos: Vec<Pt> = inst.couriers.iter().map(|c| c.pos).collect();
    let mut origin: Vec<String> = vec!["0".to_owned(); inst.couriers.len()];
    let mut busy = vec![0i64; inst.couriers.len()];
    let mut assignments = Vec::new();
    let mut moves = Vec::new();
    let first = inst.orders.iter().map(|o| o.placed).min().unwrap_or(0);
    let last_off = inst.couriers.iter().map(|c| c.off).max().unwrap_or(0);
    let mut t = first - first.rem_euclid(tick);
    while t <= last_off {
        let open: Vec<OrderIn> = inst
            .orders
            .iter()
            .enumerate()
            .filter(|(i, o)| o.placed <= t && deliveries[*i].is_none())
            .map(|(i, o)| OrderIn {
                key: i,
                store: o.restaurant as u32,
                pickup: inst.restaurants[o.restaurant].1,
                drop: o.drop,
                placed_at: o.placed * MIN,
                ready_at: o.ready * MIN,
                deadline: (o.placed + inst.target_c2d) * MIN,
                promise: (o.placed + inst.target_c2d) * MIN,
            })
            .collect();
        if !open.is_empty() {
            let riders: Vec<RiderIn> = inst
                .couriers
                .iter()
                .enumerate()
                .filter(|(i, c)| c.on <= t && t < c.off && free_at[*i] <= t + HORIZON_MIN)
                .map(|(i, c)| RiderIn { key: i, pos: pos[i], free_at: free_at[i].max(t) * MIN, off_at: c.off * MIN })
                .collect();
            let plans = match policy {
                Policy::Optimizer => plan_tick(t * MIN, &open, &riders, &params, &travel),
                Policy::Greedy => greedy_tick(t * MIN, &open, &riders, &params, &travel),
            };
            for plan in plans {
                let c = plan.rider;
                let restaurant = inst.orders[plan.orders[0]].restaurant;
                let pickup = plan.pickup_at / MIN;
                assignments.push((t, pickup, c, plan.orders.clone()));
                moves.push((c, t, origin[c].clone(), inst.restaurants[restaurant].0.clone()));
                let mut at = inst.restaurants[restaurant].0.clone();
                let mut depart = pickup + inst.pickup_service / 2;
                busy[c] += travel.ms(pos[c], inst.restaurants[restaurant].1) / MIN + inst.pickup_service;
                let mut from = inst.restaurants[restaurant].1;
                for (&o, &drop) in plan.orders.iter().zip(&plan.drop_at) {
                    let order = &inst.orders[o];
                    moves.push((c, depart, at.clone(), order.id.clone()));
                    busy[c] += travel.ms(from, order.drop) / MIN + inst.dropoff_service;
                    deliveries[o] = Some(Delivery { courier: c, pickup, drop: drop / MIN });
                    depart = drop / MIN + inst.dropoff_service / 2;
                    at = order.id.clone();
                    from = order.drop;
                }
                free_at[c] = plan.free_at / MIN;
                pos[c] = plan.end;
                origin[c] = at;
            }
        }
        if deliveries.iter().all(Option::is_some) {
            break;
        }
        t += tick;
    }
    Outcome { deliveries, assignments, moves, busy, seconds: started.elapsed().as_secs_f64() }
}

/// Feasibility as the reference evaluator checks it; returns the violations found.
fn violations(inst: &Instance, out: &Outcome) -> Vec<String> {
    let mut v = Vec::new();
    let mut seen = vec![0; inst.orders.len()];
    for (t, pickup, c, orders) in &out.assignments {
        let courier = &inst.couriers[*c];
        if *pickup > courier.off {
            v.push(format!("{} picks up after its off time", courier.id));
        }
        let r = inst.orders[orders[0]].restaurant;
        for &o in orders {
            seen[o] += 1;
            let order = &inst.orders[o];
            if order.placed > *t {
                v.push(format!("{} assigned before it was placed", order.id));
            }
            if order.ready > *pickup {
                v.push(format!("{} picked up before it was ready", order.id));
            }
            if order.restaurant != r {
                v.push(format!("{} bundled across restaurants", order.id));
            }
        }
    }
    for (o, n) in seen.iter().enumerate() {
        if *n > 1 {
            v.push(format!("{} assigned {n} times", inst.orders[o].id));
        }
    }
    v
}

fn fmt_lines(header: &str, lines: impl Iterator<Item = String>) -> String {
    let mut s = String::from(header);
    s.push('\n');
    for l in lines {
        s.push_str(&l);
        s.push('\n');
    }
    s
}

/// Summary statistics the PDF asks for.
fn stats(mut xs: Vec<f64>) -> Value {
    if xs.is_empty() {
        return json!(null);
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let q = |p: f64| xs[((p * (xs.len() - 1) as f64).round() as usize).min(xs.len() - 1)];
    json!({"mean": mean, "sd": sd, "min": xs[0], "p10": q(0.1), "median": q(0.5), "p90": q(0.9), "max": xs[xs.len() - 1]})
}

fn metrics(inst: &Instance, out: &Outcome) -> Value {
    let travel = PlanarTravel { metres_per_minute: inst.metres_per_minute };
    let delivered: Vec<(usize, Delivery)> =
        out.deliveries.iter().enumerate().filter_map(|(i, d)| d.map(|d| (i, d))).collect();
    let c2d: Vec<f64> = delivered.iter().map(|(i, d)| (d.drop - inst.orders[*i].placed) as f64).collect();
    let lower_bound: Vec<f64> = delivered
        .iter()
        .map(|(i, _)| {
            let o = &inst.orders[*i];
            let direct = travel.ms(inst.restaurants[o.restaurant].1, o.drop) / MIN;
            (o.ready - o.placed) as f64
                + inst.pickup_service as f64 / 2.0
                + direct as f64
                + inst.dropoff_service as f64 / 2.0
        })
        .collect();
    let mut per_courier = vec![0usize; inst.couriers.len()];
    for (_, d) in &delivered {
        per_courier[d.courier] += 1;
    }
    let mut compensation = 0.0;
    let mut guaranteed = 0;
    let mut earnings = Vec::new();
    let mut comp = Vec::new();
    let mut utilization = Vec::new();
    let mut duty_hours = 0.0;
    for (i, c) in inst.couriers.iter().enumerate() {
        let hours = (c.off - c.on) as f64 / 60.0;
        duty_hours += hours;
        let earned = inst.pay_per_order * per_courier[i] as f64;
        let paid = earned.max(inst.pay_per_hour * hours);
        if earned < inst.pay_per_hour * hours {
            guaranteed += 1;
        }
        compensation += paid;
        earnings.push(earned);
        comp.push(paid);
        utilization.push(out.busy[i] as f64 / (c.off - c.on).max(1) as f64);
    }
    let mean_c2d = c2d.iter().sum::<f64>() / c2d.len().max(1) as f64;
    let mean_lb = lower_bound.iter().sum::<f64>() / lower_bound.len().max(1) as f64;
    json!({
        "orders": inst.orders.len(),
        "orders_delivered": delivered.len(),
        "delivered_pct": 100.0 * delivered.len() as f64 / inst.orders.len().max(1) as f64,
        "total_courier_compensation": compensation,
        "fraction_couriers_guaranteed_minimum": guaranteed as f64 / inst.couriers.len().max(1) as f64,
        "click_to_door": stats(c2d.clone()),
        "click_to_door_overage": stats(delivered.iter().map(|(i, d)| (d.drop - inst.orders[*i].placed - inst.target_c2d).max(0) as f64).collect()),
        "ready_to_door": stats(delivered.iter().map(|(i, d)| (d.drop - inst.orders[*i].ready) as f64).collect()),
        "ready_to_pickup": stats(delivered.iter().map(|(i, d)| (d.pickup - inst.orders[*i].ready) as f64).collect()),
        "courier_utilization": stats(utilization),
        "courier_delivery_earnings": stats(earnings),
        "courier_compensation": stats(comp),
        "orders_per_courier_hour": delivered.len() as f64 / duty_hours.max(1e-9),
        "lower_bound_click_to_door_mean": mean_lb,
        "click_to_door_over_lower_bound": mean_c2d / mean_lb.max(1e-9),
        "sum_click_to_door": c2d.iter().sum::<f64>(),
        "sum_lower_bound": lower_bound.iter().sum::<f64>(),
        "bundled_orders": out.assignments.iter().filter(|a| a.3.len() > 1).map(|a| a.3.len()).sum::<usize>(),
        "infeasibilities": violations(inst, out),
        "solve_seconds": out.seconds,
    })
}

/// Replays one instance and writes the evaluator's files and metrics.json into `out_dir`.
pub fn replay_to_dir(dir: &Path, out_dir: &Path, policy: Policy, tick: i64, knobs: &Knobs) -> Result<Value, String> {
    if tick < 1 {
        return Err("--tick-minutes must be at least 1".into());
    }
    let inst = load(dir)?;
    let out = replay(&inst, policy, tick, knobs);
    fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let write = |name: &str, text: String| {
        fs::write(out_dir.join(name), text).map_err(|e| format!("{}: {e}", out_dir.join(name).display()))
    };
    let courier = |c: usize| inst.couriers[c].id.clone();
    write(
        "solution_info_assignments.txt",
        fmt_lines(
            "assignment_time pickup_time courier orders",
            out.assignments.iter().map(|(t, p, c, os)| {
                let ids: Vec<&str> = os.iter().map(|&o| inst.orders[o].id.as_str()).collect();
                format!("{t} {p} {} {}", courier(*c), ids.join(" "))
            }),
        ),
    )?;
    write(
        "solution_info_orders.txt",
        fmt_lines(
            "order placement_time ready_time pickup_time dropoff_time courier",
            out.deliveries.iter().enumerate().filter_map(|(i, d)| {
                let o = &inst.orders[i];
                d.map(|d| format!("{} {} {} {} {} {}", o.id, o.placed, o.ready, d.pickup, d.drop, courier(d.courier)))
            }),
        ),
    )?;
    let mut moves = out.moves.clone();
    // Blocks per courier, each in execution order.
    moves.sort_by_key(|m| (m.0, m.1));
    write(
        "solution_info_couriers.txt",
        fmt_lines(
            "courier departure_time origin destination",
            moves.iter().map(|(c, t, from, to)| format!("{} {t} {from} {to}", courier(*c))),
        ),
    )?;
    let m = metrics(&inst, &out);
    write("metrics.json", serde_json::to_string_pretty(&m).unwrap_or_default())?;
    Ok(m)
}

/// Replays every instance under `data_dir` with both policies; prints a Markdown table and totals.
pub fn bench(data_dir: &Path, tick: i64, knobs: &Knobs) -> Result<(), String> {
    let mut dirs: Vec<_> = fs::read_dir(data_dir)
        .map_err(|e| format!("{}: {e}", data_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("orders.txt").exists())
        .collect();
    dirs.sort();
    let mut table = String::from(
        "| instance | orders | policy | delivered % | mean c2d | p90 c2d | ready→pickup | orders/courier-h | c2d ÷ LB | bundled | ms |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    #[derive(Default)]
    struct Totals {
        instances: usize,
        orders: usize,
        delivered: usize,
        c2d: f64,
        lb: f64,
        worst: f64,
        worst_name: String,
        infeasible: usize,
    }
    // Seeds 0-2 are where knobs may be tuned; seeds 3-4 are reported as held out (issue 13).
    let group_of = |name: &str| if name.starts_with(['0', '1', '2']) { "seeds 0-2" } else { "seeds 3-4" };
    let mut totals: HashMap<(&str, &str), Totals> = HashMap::new();
    for dir in &dirs {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_owned();
        let inst = load(dir)?;
        for (policy, label) in [(Policy::Optimizer, "optimizer"), (Policy::Greedy, "greedy")] {
            let out = replay(&inst, policy, tick, knobs);
            let m = metrics(&inst, &out);
            let f = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
            let ratio = f("click_to_door_over_lower_bound");
            let _ = writeln!(
                table,
                "| {name} | {} | {label} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.3} | {} | {:.0} |",
                inst.orders.len(),
                f("delivered_pct"),
                m["click_to_door"]["mean"].as_f64().unwrap_or(f64::NAN),
                m["click_to_door"]["p90"].as_f64().unwrap_or(f64::NAN),
                m["ready_to_pickup"]["mean"].as_f64().unwrap_or(f64::NAN),
                f("orders_per_courier_hour"),
                ratio,
                m["bundled_orders"],
                out.seconds * 1000.0,
            );
            for group in ["all", group_of(&name)] {
                let t = totals.entry((label, group)).or_default();
                t.instances += 1;
                t.orders += inst.orders.len();
                t.delivered += m["orders_delivered"].as_u64().unwrap_or(0) as usize;
                t.c2d += f("sum_click_to_door");
                t.lb += f("sum_lower_bound");
                if ratio > t.worst {
                    t.worst = ratio;
                    t.worst_name = name.clone();
                }
                t.infeasible += m["infeasibilities"].as_array().map_or(0, Vec::len);
            }
        }
    }
    println!("{table}");
    for (label, group) in
        ["optimizer", "greedy"].into_iter().flat_map(|l| ["all", "seeds 0-2", "seeds 3-4"].map(|g| (l, g)))
    {
        if let Some(Totals { instances, orders, delivered, c2d, lb, worst, worst_name, infeasible }) =
            totals.get(&(label, group))
        {
            println!(
                "{label} ({group}): {instances} instances, {delivered}/{orders} delivered ({:.3}% undelivered), mean c2d {:.2} min, c2d ÷ LB {:.3} over all delivered orders, worst instance {worst_name} at {worst:.3}, {infeasible} infeasibilities",
                100.0 * (orders - delivered) as f64 / (*orders).max(1) as f64,
                c2d / (*delivered).max(1) as f64,
                c2d / lb.max(1e-9),
            );
        }
    }
    Ok(())
}
