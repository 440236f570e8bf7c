//! The simulator's report: latency summaries, counts and audits, and the counters a run keeps.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency summary, milliseconds (or minutes where the field says so).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Dist {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Dist {
    pub(super) fn of(h: &Histogram<u64>, scale: f64) -> Dist {
        if h.is_empty() {
            return Dist::default();
        }
        Dist {
            count: h.len(),
            p50: h.value_at_quantile(0.5) as f64 * scale,
            p90: h.value_at_quantile(0.9) as f64 * scale,
            p99: h.value_at_quantile(0.99) as f64 * scale,
            p999: h.value_at_quantile(0.999) as f64 * scale,
            max: h.max() as f64 * scale,
            mean: h.mean() * scale,
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub placed: u64,
    pub delivered: u64,
    /// Orders placed and neither delivered nor cancelled by the end of the run.
    pub undelivered: u64,
    /// Orders their customers cancelled (the server said 200).
    pub cancelled: u64,
    /// Cancels the server refused because the order was already picked up (409).
    pub cancel_refused: u64,
    /// Times a rider was found holding a cancelled order: on the server a second after the
    /// cancel, on the server at the end, or in the rider app's own route at the end. Must be 0.
    pub stranded_riders: u64,
    pub insufficient_stock: u64,
    pub not_serviceable: u64,
    pub oversold: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Orders that got a 201 and that the server knows at the end (must equal `placed`).
    pub accounted: u64,
    /// Delivered orders whose observed statuses were out of lifecycle order.
    pub lifecycle_violations: u64,
    pub delivered_within_promise_pct: f64,
    /// Delivered orders that arrived at or before their `promised_by` (the quote they were
    /// placed under), percent.
    pub on_time_pct: f64,
    /// Delivered − `promised_by`, simulated seconds (negative: early): median and 90th percentile.
    pub promise_error_p50_s: f64,
    pub promise_error_p90_s: f64,
    /// |delivered − the `eta_at` told at pickup|, simulated seconds: median and 90th percentile.
    pub eta_error_at_pickup_p50_s: f64,
    pub eta_error_at_pickup_p90_s: f64,
    /// Orders placed at each delivery fee (minor units).
    pub fee_levels: BTreeMap<i64, u64>,
    pub order_latency_ms: Dist,
    pub availability_latency_ms: Dist,
    /// Simulated seconds from placement to assignment.
    pub time_to_assignment_s: Dist,
    /// Simulated minutes from placement to delivery.
    pub click_to_door_min: Dist,
    pub gps_to_ws_ms: Dist,
    pub positions_published: u64,
    pub tasks_received: u64,
    pub duration_s: f64,
    pub speedup: f64,
}

pub(super) struct Stats {
    pub(super) placed: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) cancelled: AtomicU64,
    pub(super) cancel_refused: AtomicU64,
    pub(super) stranded: AtomicU64,
    pub(super) cancelled_ids: Mutex<std::collections::HashSet<String>>,
    pub(super) rider_ids: Mutex<Vec<String>>,
    pub(super) insufficient: AtomicU64,
    pub(super) not_serviceable: AtomicU64,
    pub(super) violations: AtomicU64,
    pub(super) within_promise: AtomicU64,
    pub(super) on_time: AtomicU64,
    pub(super) promise_errors_s: Mutex<Vec<f64>>,
    pub(super) eta_errors_s: Mutex<Vec<f64>>,
    pub(super) fees: Mutex<BTreeMap<i64, u64>>,
    pub(super) positions: AtomicU64,
    pub(super) tasks: AtomicU64,
    pub(super) errors: Mutex<BTreeMap<String, u64>>,
    pub(super) order_ms: Mutex<Histogram<u64>>,
    pub(super) avail_ms: Mutex<Histogram<u64>>,
    pub(super) assign_s: Mutex<Histogram<u64>>,
    pub(super) c2d_s: Mutex<Histogram<u64>>,
    pub(super) gps_ms: Mutex<Histogram<u64>>,
    pub(super) placed_ids: Mutex<Vec<String>>,
}

impl Stats {
    pub(super) fn new() -> Stats {
        let h = || Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"));
        Stats {
            placed: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            cancel_refused: AtomicU64::new(0),
            stranded: AtomicU64::new(0),
            cancelled_ids: Mutex::new(std::collections::HashSet::new()),
            rider_ids: Mutex::new(Vec::new()),
            insufficient: AtomicU64::new(0),
            not_serviceable: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            within_promise: AtomicU64::new(0),
            on_time: AtomicU64::new(0),
            promise_errors_s: Mutex::new(Vec::new()),
            eta_errors_s: Mutex::new(Vec::new()),
            fees: Mutex::new(BTreeMap::new()),
            positions: AtomicU64::new(0),
            tasks: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            order_ms: h(),
            avail_ms: h(),
            assign_s: h(),
            c2d_s: h(),
            gps_ms: h(),
            placed_ids: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn error(&self, kind: impl Into<String>) {
        *self.errors.lock().expect("errors lock").entry(kind.into()).or_default() += 1;
    }

    pub(super) fn record(&self, h: &Mutex<Histogram<u64>>, v: f64) {
        let _ = h.lock().expect("histogram lock").record(v.max(1.0) as u64);
    }
}

/// The `q` quantile of `xs` (nearest rank), 0 when empty.
pub(super) fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

impl Report {
    /// The report as a person reads it.
    pub fn human(&self) -> String {
        let d = |name: &str, unit: &str, x: &Dist| {
            format!(
                "  {name:<26} p50 {:>8.1}  p99 {:>8.1}  p99.9 {:>8.1}  max {:>8.1} {unit}  (n={})\n",
                x.p50, x.p99, x.p999, x.max, x.count
            )
        };
        let mut out = format!(
            "darkstore-sim: {:.0} s at speedup {}\n  orders placed {}, delivered {}, undelivered {}, insufficient stock {}, not serviceable {}\n  \
             cancelled {}, cancels refused (after pickup) {}, riders left holding a cancelled order {}\n  \
             oversold {}, accounted {} of {}, lifecycle violations {}, delivered within the promise {:.1}%\n  \
             on time (by promised_by) {:.1}%, promise error p50 {:.0} s, p90 {:.0} s (simulated; negative is early)\n  \
             live ETA at pickup: absolute error p50 {:.0} s, p90 {:.0} s (simulated); orders by delivery fee {:?}\n  \
             positions published {}, tasks received {}, errors {}\n",
            self.duration_s,
            self.speedup,
            self.placed,
            self.delivered,
            self.undelivered,
            self.insufficient_stock,
            self.not_serviceable,
            self.cancelled,
            self.cancel_refused,
            self.stranded_riders,
            self.oversold,
            self.accounted,
            self.placed,
            self.lifecycle_violations,
            self.delivered_within_promise_pct,
            self.on_time_pct,
            self.promise_error_p50_s,
            self.promise_error_p90_s,
            self.eta_error_at_pickup_p50_s,
            self.eta_error_at_pickup_p90_s,
            self.fee_levels,
            self.positions_published,
            self.tasks_received,
            self.errors,
        );
        for (kind, n) in &self.errors_by_kind {
            out.push_str(&format!("    {kind}: {n}\n"));
        }
        out.push_str(&d("order placement", "ms", &self.order_latency_ms));
        out.push_str(&d("availability", "ms", &self.availability_latency_ms));
        out.push_str(&d("time to assignment (sim)", "s", &self.time_to_assignment_s));
        out.push_str(&d("click-to-door (sim)", "min", &self.click_to_door_min));
        out.push_str(&d("GPS to WebSocket", "ms", &self.gps_to_ws_ms));
        out
    }
}
