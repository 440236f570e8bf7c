//! A small Prometheus registry: counters and histograms with fixed label sets, rendered in the
//! text exposition format. Recording is a lock-free atomic add on a pre-registered series (or a
//! sharded map lookup for per-route series).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

/// Upper bounds of the latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Outcomes of order placement.
#[derive(Debug, Clone, Copy)]
pub enum OrderOutcome {
    Created,
    Replayed,
    InsufficientStock,
    NotServiceable,
    Invalid,
    Conflict,
    Unavailable,
}

impl OrderOutcome {
    const ALL: [OrderOutcome; 7] = [
        OrderOutcome::Created,
        OrderOutcome::Replayed,
        OrderOutcome::InsufficientStock,
        OrderOutcome::NotServiceable,
        OrderOutcome::Invalid,
        OrderOutcome::Conflict,
        OrderOutcome::Unavailable,
    ];

    fn name(self) -> &'static str {
        match self {
            OrderOutcome::Created => "created",
            OrderOutcome::Replayed => "replayed",
            OrderOutcome::InsufficientStock => "insufficient_stock",
            OrderOutcome::NotServiceable => "not_serviceable",
            OrderOutcome::Invalid => "invalid",
            OrderOutcome::Conflict => "conflict",
            OrderOutcome::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// (method, route, status) → count. Methods come from a closed set and routes from the router
    /// (or `unmatched`), so the number of series is bounded whatever clients send.
    http_requests: DashMap<(&'static str, String, u16), AtomicU64>,
    /// route → latency
    http_latency: DashMap<String, Histogram>,
    orders: [AtomicU64; OrderOutcome::ALL.len()],
    pub reservations_ok: AtomicU64,
    pub reservations_short: AtomicU64,
    pub reserved_units: AtomicU64,
    pub released_units: AtomicU64,
    pub order_transitions: AtomicU64,
    pub holds_expired: AtomicU64,
    pub lots_expired: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Finished orders let go of after the retention window, and read back from the database.
    pub orders_evicted: AtomicU64,
    pub orders_read_back: AtomicU64,
    /// Payment webhooks by outcome: applied, duplicate, ignored (would undo a payment), refused.
    payment_events: [AtomicU64; 4],
    pub order_latency: Histogram,
    /// Cluster mode: requests sent to their region's owner, end to end.
    pub forward_latency: Histogram,
    /// How old a rider's position is (its `ts` against the server's clock) when the server applies
    /// it: the broker's and the ingest queue's share of GPS-to-feed latency.
    pub position_age: Histogram,
}

impl Metrics {
    pub fn http(&self, method: &'static str, route: &str, status: u16, seconds: f64) {
        let key = (method, route.to_owned(), status);
        if let Some(c) = self.http_requests.get(&key) {
            c.fetch_add(1, Ordering::Relaxed);
        } else {
            self.http_requests.entry(key).or_default().fetch_add(1, Ordering::Relaxed);
        }
        if let Some(h) = self.http_latency.get(route) {
            h.observe(seconds);
        } else {
            self.http_latency.entry(route.to_owned()).or_default().observe(seconds);
        }
    }

    pub fn payment_event(&self, outcome: darkstore_geoinv::order::PaymentOutcome) {
        use darkstore_geoinv::order::PaymentOutcome as P;
        let i = match outcome {
            P::Apply { .. } => 0,
            P::Duplicate => 1,
            P::Ignored => 2,
            P::Refused => 3,
        };
        self.payment_events[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn order(&self, outcome: OrderOutcome) {
        self.orders[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Renders every series; `extra` appends gauges owned by others.
    pub fn render(&self, extra: &[(String, &'static str, f64)]) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str("# TYPE darkstore_http_requests_total counter\n");
        let mut rows: Vec<_> =
            self.http_requests.iter().map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed))).collect();
        rows.sort();
        for ((method, route, status), n) in rows {
            let _ = writeln!(
                out,
                "darkstore_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# TYPE darkstore_http_request_duration_seconds histogram\n");
        let mut routes: Vec<String> = self.http_latency.iter().map(|e| e.key().clone()).collect();
        routes.sort();
        for route in routes {
            if let Some(h) = self.http_latency.get(&route) {
                h.render(&mut out, "darkstore_http_request_duration_seconds", &format!("route=\"{route}\""));
            }
        }
        out.push_str("# TYPE darkstore_orders_total counter\n");
        for outcome in OrderOutcome::ALL {
            let n = self.orders[outcome as usize].load(Ordering::Relaxed);
            let _ = writeln!(out, "darkstore_orders_total{{outcome=\"{}\"}} {n}", outcome.name());
        }
        out.push_str("# TYPE darkstore_payment_webhooks_total counter\n");
        for (i, name) in ["applied", "duplicate", "ignored", "refused"].iter().enumerate() {
            let n = self.payment_events[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "darkstore_payment_webhooks_total{{outcome=\"{name}\"}} {n}");
        }
        out.push_str("# TYPE darkstore_order_placement_seconds histogram\n");
        self.order_latency.render(&mut out, "darkstore_order_placement_seconds", "");
        out.push_str("# TYPE darkstore_forwarded_request_seconds histogram\n");
        self.forward_latency.render(&mut out, "darkstore_forwarded_request_seconds", "");
        out.push_str("# TYPE darkstore_rider_position_age_seconds histogram\n");
        self.position_age.render(&mut out, "darkstore_rider_position_age_seconds", "");
        let counters = [
            ("darkstore_stock_reservations_total{outcome=\"reserved\"}", &self.reservations_ok),
            ("darkstore_stock_reservations_total{outcome=\"insufficient\"}", &self.reservations_short),
            ("darkstore_stock_reserved_units_total", &self.reserved_units),
            ("darkstore_stock_released_units_total", &self.released_units),
            ("darkstore_order_transitions_total", &self.order_transitions),
            ("darkstore_payment_holds_expired_total", &self.holds_expired),
            ("darkstore_lots_expired_total", &self.lots_expired),
            ("darkstore_rate_limited_total", &self.rate_limited),
            ("darkstore_orders_evicted_total", &self.orders_evicted),
            ("darkstore_orders_read_back_total", &self.orders_read_back),
        ];
        let mut last_family = "";
        for (series, counter) in counters {
            let family = series.split('{').next().unwrap_or(series);
            if family != last_family {
                let _ = writeln!(out, "# TYPE {family} counter");
                last_family = family;
            }
            let _ = writeln!(out, "{series} {}", counter.load(Ordering::Relaxed));
        }
        for (name, kind, value) in extra {
            let family = name.split('{').next().unwrap_or(name);
            if family != last_family {
                let _ = writeln!(out, "# TYPE {family} {kind}");
                last_family = family;
            }
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

/// A label value in the text format: backslash, double quote and newline escaped.
pub fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
