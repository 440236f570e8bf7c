//! The forecast's backtest on simulated weeks: the server's model
//! (`darkstore_geoinv::forecast::forecast`) against the seasonal-naive baseline, on days held
//! back from the history.
//!
//! Each simulated store has a base rate (orders per hour), a day shaped like the city's demand
//! (closed 00:00–07:00, a lunch and an evening peak), weekends busier by a store-specific factor,
//! a slow trend, a random level per day (weather, events: ×0.75–1.25) and Poisson counts. Every
//! day of the last `held_back_days` is forecast from 08:00 for the next `horizon` hours, from
//! history only (every hour before it); errors are wMAPE over all stores, days and hours.

use darkstore_geoinv::forecast::{ForecastParams, WEEK, forecast, seasonal_naive, wmape};
use serde::Serialize;

/// What the backtest found.
#[derive(Debug, Clone, Serialize)]
pub struct Backtest {
    pub stores: usize,
    pub weeks: i64,
    pub held_back_days: i64,
    pub horizon_hours: usize,
    pub orders: f64,
    pub model_wmape: f64,
    pub seasonal_naive_wmape: f64,
}

struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A Poisson draw (Knuth's method, split for large means).
    fn poisson(&mut self, mean: f64) -> f64 {
        let mut left = mean.max(0.0);
        let mut n = 0.0;
        while left > 0.0 {
            let step = left.min(30.0);
            left -= step;
            let limit = (-step).exp();
            let mut p = 1.0;
            loop {
                p *= self.unit();
                if p <= limit {
                    break;
                }
                n += 1.0;
            }
        }
        n
    }
}

/// The shape of a day by hour (relative rate).
fn day_shape(hour_of_day: i64) -> f64 {
    if hour_of_day < 7 {
        return 0.05;
    }
    let h = hour_of_day as f64 + 0.5;
    let bump = |at: f64, width: f64| (-((h - at) / width).powi(2) / 2.0).exp();
    0.4 + 1.2 * bump(13.0, 1.0) + 1.8 * bump(20.0, 1.2)
}

/// Runs the backtest over `stores` simulated stores of `weeks` weeks each.
pub fn backtest(stores: usize, weeks: i64, held_back_days: i64, horizon: usize, seed: u64) -> Backtest {
    let mut rng = Rng(seed | 1);
    let hours = weeks * WEEK;
    let (mut actual, mut model, mut naive) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..stores {
        let base = 2.0 + rng.unit() * 18.0;
        let weekend = 1.0 + rng.unit() * 0.5;
        let trend = (rng.unit() - 0.3) * 0.02;
        let mut day_level = 1.0;
        let series: Vec<f64> = (0..hours)
            .map(|t| {
                let (day, hod) = (t / 24, t % 24);
                if hod == 0 {
                    day_level = 0.75 + rng.unit() * 0.5;
                }
                let dow = day % 7;
                let w = if dow >= 5 { weekend } else { 1.0 };
                let mean = base * day_shape(hod) * w * day_level * (1.0 + trend * t as f64 / WEEK as f64);
                rng.poisson(mean)
            })
            .collect();
        let history = |t: i64| if (0..hours).contains(&t) { series[t as usize] } else { 0.0 };
        for d in 0..held_back_days {
            let now = hours - (held_back_days - d) * 24 + 8;
            let p = ForecastParams::default();
            // Only history before `now` is visible to the forecasters.
            let seen = |t: i64| if t < now { history(t) } else { 0.0 };
            model.extend(forecast(&seen, now, horizon, &p));
            naive.extend(seasonal_naive(&seen, now, horizon));
            actual.extend((0..horizon as i64).map(|i| history(now + i)));
        }
    }
    Backtest {
        stores,
        weeks,
        held_back_days,
        horizon_hours: horizon,
        orders: actual.iter().sum(),
        model_wmape: wmape(&actual, &model),
        seasonal_naive_wmape: wmape(&actual, &naive),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_beats_seasonal_naive_on_held_back_days() {
        let b = backtest(20, 8, 7, 12, 7);
        assert!(b.orders > 1000.0, "{b:?}");
        assert!(b.model_wmape < b.seasonal_naive_wmape, "{b:?}");
    }
}
