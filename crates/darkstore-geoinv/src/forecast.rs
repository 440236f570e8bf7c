//! Demand forecast per store, and the riders that demand needs.
//!
//! The model (chosen by a backtest on simulated weeks against the seasonal-naive baseline; see
//! BENCHMARKS.md and `darkstore-sim forecast-backtest`):
//! 1. **Seasonal mean by hour of week**: the same hour of the week over the last `weeks` weeks,
//!    weighted `decay^(k-1)` for `k` weeks back (recent weeks count more);
//! 2. **smoothed toward the hour of day**: blended with the mean of that hour of the day over all
//!    days of those weeks (weight `day_weight`), which damps the noise of a single hour-of-week
//!    cell seen only a few times;
//! 3. **an intraday correction**: today's last `recent_hours` actual counts against what the model
//!    said for them, a ratio bounded to `[0.5, 2]`, applied fully to the next hour and fading
//!    linearly over `fade_hours`.
//!
//! The baseline is seasonal-naive: the same hour one week earlier (Hyndman & Athanasopoulos,
//! "Forecasting: Principles and Practice", simple methods). Errors are scored with
//! `wMAPE = Σ|y − ŷ| ÷ Σy`.
//!
//! Riders needed: the offered load `A = orders per hour × rider-minutes per order ÷ 60`, and the
//! smallest `n > A` whose Erlang C service level `1 − C(n, A)·e^(−(n − A)·t ÷ h)` reaches the
//! target (`h` the rider-minutes per order, `t` the wait allowed for a rider). Erlang C ignores
//! bundling; rider-minutes per order already divide a trip by the observed bundle size.

/// Hours in a week.
pub const WEEK: i64 = 168;

/// The model's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForecastParams {
    pub weeks: i64,
    pub decay: f64,
    pub day_weight: f64,
    pub recent_hours: i64,
    pub fade_hours: i64,
}

impl Default for ForecastParams {
    fn default() -> Self {
        ForecastParams { weeks: 4, decay: 0.7, day_weight: 0.3, recent_hours: 3, fade_hours: 6 }
    }
}

/// Hourly counts by hour since the epoch; hours not present count 0.
pub trait Counts {
    fn at(&self, hour: i64) -> f64;
}

impl<F: Fn(i64) -> f64> Counts for F {
    fn at(&self, hour: i64) -> f64 {
        self(hour)
    }
}

/// What the seasonal part says for `hour`, from history strictly before `now_hour`, or None with
/// no history at all.
fn seasonal(h: &dyn Counts, hour: i64, now_hour: i64, p: &ForecastParams) -> Option<f64> {
    // Weeks back far enough to be history for this hour.
    let first_k = ((hour - now_hour) / WEEK + 1).max(1);
    let (mut sum, mut weight) = (0.0, 0.0);
    for k in first_k..first_k + p.weeks.max(1) {
        let t = hour - k * WEEK;
        if t >= now_hour {
            continue;
        }
        let w = p.decay.powi((k - first_k) as i32);
        sum += w * h.at(t);
        weight += w;
    }
    if weight == 0.0 {
        return None;
    }
    let week_mean = sum / weight;
    // The same hour of day over every day of those weeks (before now).
    let (mut day_sum, mut days) = (0.0, 0.0);
    for d in 1..=(7 * p.weeks.max(1)) {
        let t = hour - d * 24;
        if t < now_hour {
            day_sum += h.at(t);
            days += 1.0;
        }
    }
    let day_mean = if days > 0.0 { day_sum / days } else { week_mean };
    let a = p.day_weight.clamp(0.0, 1.0);
    Some((1.0 - a) * week_mean + a * day_mean)
}

/// Expected orders for each of the `hours` hours from `now_hour` on (the hour now running first).
pub fn forecast(h: &dyn Counts, now_hour: i64, hours: usize, p: &ForecastParams) -> Vec<f64> {
    // How today's last hours compare with what the model said for them.
    let (mut actual, mut modelled) = (0.0, 0.0);
    for back in 1..=p.recent_hours.max(0) {
        let t = now_hour - back;
        if let Some(m) = seasonal(h, t, t, p) {
            actual += h.at(t);
            modelled += m;
        }
    }
    let ratio = if modelled >= 3.0 { (actual / modelled).clamp(0.5, 2.0) } else { 1.0 };
    (0..hours as i64)
        .map(|i| {
            let base = seasonal(h, now_hour + i, now_hour, p).unwrap_or(0.0);
            let fade = (1.0 - i as f64 / p.fade_hours.max(1) as f64).max(0.0);
            (base * (1.0 + (ratio - 1.0) * fade)).max(0.0)
        })
        .collect()
}

/// The seasonal-naive baseline: the same hour one week earlier (or as many weeks as it takes to
/// reach history).
pub fn seasonal_naive(h: &dyn Counts, now_hour: i64, hours: usize) -> Vec<f64> {
    (0..hours as i64)
        .map(|i| {
            let hour = now_hour + i;
            let k = (hour - now_hour) / WEEK + 1;
            h.at(hour - k * WEEK)
        })
        .collect()
}

/// Σ|y − ŷ| ÷ Σy (0 when there was no demand at all).
pub fn wmape(actual: &[f64], predicted: &[f64]) -> f64 {
    let total: f64 = actual.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    actual.iter().zip(predicted).map(|(y, f)| (y - f).abs()).sum::<f64>() / total
}

/// Erlang C: the probability that an order waits for a rider, with `n` riders and offered load
/// `a` (in riders). 1 when `n ≤ a`.
pub fn erlang_c(n: u32, a: f64) -> f64 {
    if !(a.is_finite() && a > 0.0) {
        return 0.0;
    }
    let nf = f64::from(n);
    if nf <= a {
        return 1.0;
    }
    // Erlang B by its recurrence, then C from B.
    let mut b = 1.0;
    for k in 1..=n {
        b = a * b / (f64::from(k) + a * b);
    }
    b / (1.0 - (a / nf) * (1.0 - b))
}

/// The fewest riders for `orders_per_hour` when each order takes `minutes_per_order` of a rider,
/// such that at least `target` of orders wait no more than `wait_minutes` for one. 0 without
/// demand.
pub fn riders_needed(orders_per_hour: f64, minutes_per_order: f64, wait_minutes: f64, target: f64) -> u32 {
    if !(orders_per_hour.is_finite()
        && orders_per_hour > 0.0
        && minutes_per_order.is_finite()
        && minutes_per_order > 0.0)
    {
        return 0;
    }
    let a = orders_per_hour * minutes_per_order / 60.0;
    let target = target.clamp(0.0, 0.999_9);
    let mut n = a.floor() as u32 + 1;
    while n < 100_000 {
        let sl = 1.0 - erlang_c(n, a) * (-(f64::from(n) - a) * wait_minutes.max(0.0) / minutes_per_order).exp();
        if sl >= target {
            return n;
        }
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erlang_c_table() {
        // Textbook values: A = 2 erlangs with 3 servers, C ≈ 0.444; A = 10 with 12, C ≈ 0.449.
        assert!((erlang_c(3, 2.0) - 0.4444).abs() < 1e-3, "{}", erlang_c(3, 2.0));
        assert!((erlang_c(12, 10.0) - 0.4494).abs() < 1e-3, "{}", erlang_c(12, 10.0));
        assert_eq!(erlang_c(2, 2.0), 1.0);
        assert_eq!(erlang_c(5, 0.0), 0.0);
    }

    #[test]
    fn riders_for_the_load() {
        assert_eq!(riders_needed(0.0, 20.0, 3.0, 0.9), 0);
        assert_eq!(riders_needed(f64::NAN, 20.0, 3.0, 0.9), 0);
        // 30 orders an hour at 20 rider-minutes each: 10 riders busy, a few more to keep waits short.
        let n = riders_needed(30.0, 20.0, 3.0, 0.9);
        assert!((11..=15).contains(&n), "{n}");
        assert!(riders_needed(60.0, 20.0, 3.0, 0.9) > n);
    }

    #[test]
    fn a_steady_week_is_forecast_exactly() {
        // Every week the same: 10 at noon, 2 otherwise.
        let h = |t: i64| if t.rem_euclid(24) == 12 { 10.0 } else { 2.0 };
        let now = 1000 * WEEK + 9;
        let f = forecast(&h, now, 6, &ForecastParams::default());
        assert_eq!(f, vec![2.0, 2.0, 2.0, 10.0, 2.0, 2.0]);
        assert_eq!(seasonal_naive(&h, now, 6), f);
        assert_eq!(wmape(&[2.0, 10.0], &[2.0, 10.0]), 0.0);
        assert!(forecast(&|_| 0.0, now, 3, &ForecastParams::default()).iter().all(|x| *x == 0.0));
    }

    #[test]
    fn today_running_hot_lifts_the_next_hours() {
        let base = |t: i64| if t.rem_euclid(24) < 8 { 0.0 } else { 10.0 };
        let now = 1000 * WEEK + 15;
        let hot = |t: i64| if t >= now - 3 && t < now { 20.0 } else { base(t) };
        let f = forecast(&hot, now, 8, &ForecastParams::default());
        assert!(f[0] > 15.0 && f[0] <= 20.0, "{f:?}");
        assert!(f[7] < f[0] && (f[7] - 10.0).abs() < 1e-9, "the correction fades: {f:?}");
    }
}
