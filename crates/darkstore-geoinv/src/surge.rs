//! The surge delivery fee of a store's area: supply against demand, in steps, with hysteresis.
//!
//! Each dispatch tick, for each store:
//! `pressure = (orders waiting for a rider + orders expected over the horizon) ÷ (bundle × riders
//! who can be at the store within the horizon)`; with no rider at all, any demand is the top
//! step. The pressure is smoothed (an exponentially weighted mean over ticks), and the level moves
//! one step at a time: up when the smoothed pressure reaches that step's threshold, down when it
//! falls below `down_ratio` × the current step's threshold (the gap is the hysteresis), and never
//! twice within `dwell_ms` (no flapping faster than once a minute by default). The fee is
//! `base × multiplier[level]`, the multipliers spread evenly from 1 to `--surge-max`.
//!
//! The thresholds follow Wolt's public rule of thumb (an area is busy at about twice as many open
//! orders as active couriers): step 1 at 1.0, step 2 at 1.5, step 3 at 2.0. They are settings,
//! not facts.

use crate::Millis;

/// The rule's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SurgeRule {
    /// The base fee, minor units.
    pub base_minor: i64,
    /// Fee multipliers by level, ascending, starting at 1.
    pub multipliers: Vec<f64>,
    /// Pressure at which level `k + 1` starts (one fewer than the multipliers).
    pub up: Vec<f64>,
    /// A level is left downward below this share of its threshold.
    pub down_ratio: f64,
    /// The least time between two changes.
    pub dwell_ms: Millis,
    /// Weight of the newest pressure in the smoothed one.
    pub smoothing: f64,
}

impl SurgeRule {
    /// Four levels from 1× to `surge_max`× (one level when `surge_max` ≤ 1).
    pub fn new(base_minor: i64, surge_max: f64) -> SurgeRule {
        let max = if surge_max.is_finite() { surge_max.clamp(1.0, 10.0) } else { 1.0 };
        let (multipliers, up) = if max <= 1.0 {
            (vec![1.0], vec![])
        } else {
            ((0..4).map(|k| 1.0 + (max - 1.0) * f64::from(k) / 3.0).collect(), vec![1.0, 1.5, 2.0])
        };
        SurgeRule { base_minor: base_minor.max(0), multipliers, up, down_ratio: 0.75, dwell_ms: 60_000, smoothing: 0.3 }
    }

    /// The fee at a level, minor units (rounded to a whole unit).
    pub fn fee(&self, level: usize) -> i64 {
        let m = self.multipliers.get(level).copied().unwrap_or(1.0);
        (self.base_minor as f64 * m).round() as i64
    }
}

/// What the pressure is made of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    /// Orders waiting for a rider.
    pub waiting: f64,
    /// Orders expected over the horizon (arrival rate × horizon).
    pub expected: f64,
    /// Riders who can be at the store within the horizon.
    pub riders: f64,
    /// Orders per trip.
    pub bundle: f64,
}

impl Demand {
    /// Demand over supply; infinite with demand and no rider, 0 with neither.
    pub fn pressure(&self) -> f64 {
        let demand = (self.waiting.max(0.0) + self.expected.max(0.0)).min(1e9);
        let supply = self.riders.max(0.0) * if self.bundle.is_finite() { self.bundle.max(1.0) } else { 1.0 };
        if supply > 0.0 {
            demand / supply
        } else if demand > 0.0 {
            f64::INFINITY
        } else {
            0.0
        }
    }
}

/// One area's surge state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Surge {
    pub level: usize,
    pub smoothed: f64,
    pub changed_at: Millis,
}

impl Default for Surge {
    fn default() -> Self {
        Surge { level: 0, smoothed: 0.0, changed_at: Millis::MIN / 2 }
    }
}

impl Surge {
    /// Feeds one tick's pressure; returns the new level when it changed.
    pub fn step(&mut self, pressure: f64, now: Millis, rule: &SurgeRule) -> Option<usize> {
        // An infinite pressure (no rider) counts as just past the top threshold.
        let top = rule.up.last().copied().unwrap_or(1.0) * 1.5;
        let p = if pressure.is_nan() { 0.0 } else { pressure.clamp(0.0, top) };
        let w = rule.smoothing.clamp(0.0, 1.0);
        self.smoothed += w * (p - self.smoothed);
        if now.saturating_sub(self.changed_at) < rule.dwell_ms {
            return None;
        }
        let level = self.level.min(rule.up.len());
        let next = if level < rule.up.len() && self.smoothed >= rule.up[level] {
            level + 1
        } else if level > 0 && self.smoothed < rule.up[level - 1] * rule.down_ratio {
            level - 1
        } else {
            return None;
        };
        self.level = next;
        self.changed_at = now;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Millis = 60_000;

    #[test]
    fn fees_from_base_to_the_cap() {
        let rule = SurgeRule::new(2_000, 2.5);
        let fees: Vec<i64> = (0..4).map(|k| rule.fee(k)).collect();
        assert_eq!(fees, vec![2_000, 3_000, 4_000, 5_000]);
        assert_eq!(SurgeRule::new(2_000, 1.0).multipliers, vec![1.0]);
        assert_eq!(SurgeRule::new(2_000, f64::NAN).fee(0), 2_000);
    }

    #[test]
    fn pressure_never_divides_by_zero() {
        let d = |waiting, expected, riders, bundle| Demand { waiting, expected, riders, bundle }.pressure();
        assert_eq!(d(0.0, 0.0, 0.0, 1.0), 0.0);
        assert_eq!(d(3.0, 0.0, 0.0, 1.0), f64::INFINITY);
        assert_eq!(d(4.0, 2.0, 3.0, 1.0), 2.0);
        assert_eq!(d(4.0, 2.0, 3.0, 2.0), 1.0);
        assert_eq!(d(4.0, 2.0, 3.0, f64::NAN), 2.0);
    }

    #[test]
    fn steps_up_and_down_with_hysteresis_and_dwell() {
        let rule = SurgeRule { smoothing: 1.0, ..SurgeRule::new(1_000, 2.0) };
        let mut s = Surge::default();
        // (minute, pressure, expected level after it)
        let script = [
            (0, 0.5, 0),
            (1, 1.2, 1), // past 1.0: up one
            (1, 3.0, 1), // within the dwell: no change
            (2, 3.0, 2), // one step at a time
            (3, 3.0, 3),
            (4, 1.6, 3), // below 2.0 but not below 0.75 × 2.0 = 1.5: stays (hysteresis)
            (5, 1.4, 2), // below 1.5: down one
            (5, 0.0, 2), // within the dwell
            (6, 0.0, 1),
            (7, 0.9, 1), // 0.9 ≥ 0.75 × 1.0: stays
            (8, 0.7, 0),
            (9, f64::INFINITY, 1), // no rider at all: up
        ];
        for (i, (minute, p, want)) in script.into_iter().enumerate() {
            s.step(p, minute * MIN, &rule);
            assert_eq!(s.level, want, "step {i}: minute {minute}, pressure {p}");
        }
    }

    #[test]
    fn smoothing_ignores_a_single_spike() {
        let rule = SurgeRule::new(1_000, 2.0);
        let mut s = Surge::default();
        s.step(0.2, 0, &rule);
        s.step(2.5, MIN, &rule);
        assert_eq!(s.level, 0, "one tick of 2.5 smoothed to {}", s.smoothed);
        let flat = SurgeRule::new(1_000, 1.0);
        let mut f = Surge::default();
        assert_eq!(f.step(100.0, 0, &flat), None, "one level: never moves");
    }
}
