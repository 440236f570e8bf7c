//! Calibration: the configured speed, detour and picking time are priors; what the server observes
//! corrects them.
//!
//! Every finished leg gives a ratio `r = observed ÷ modelled` (the modelled time from the
//! configured priors). [`LogEwma`] keeps a bounded, exponentially weighted mean of `ln r`:
//! - a running mean for the first `1 ÷ alpha` observations (`alpha_n = max(1 ÷ n, alpha)`), so a
//!   city that is twice as slow as configured, or a simulator at any speed-up, is learned from
//!   its first few orders instead of over a hundred;
//! - then an exponentially weighted mean with weight `alpha`, counted in observations, not in
//!   wall-clock time, so it behaves the same at any `--speedup` and in quiet hours;
//! - bounded: a ratio counts as at most [`Bounds::ratio`] either way, and once warm an
//!   observation is pulled to within `max_step` (log) of the estimate, so one rider's lunch break
//!   cannot move a store's estimate by more than a step.
//!
//! A store's estimate is shrunk toward the city's while it has few observations
//! ([`LogEwma::shrunk_toward`]: `(n·θ_store + n₀·θ_city) ÷ (n + n₀)` in log space).
//!
//! [`RecentQuantile`] is the quantile of the last `n` observations (exact, over a ring buffer): the
//! promise's margin is the 95th percentile of the estimate's recent relative errors, so it follows
//! the city as its estimates improve instead of remembering the first orders of a day. (The
//! online pinball-loss update `q ← q + step·(τ − 1[e < q])` was tried first: with O(1) memory it
//! needed hundreds of deliveries to converge, and a city's first hour was late.)

/// Limits of the estimators.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// The smallest weight of a new observation once warm.
    pub alpha: f64,
    /// Ratios are clamped to `[1 ÷ ratio, ratio]`.
    pub ratio: f64,
    /// Once warm, an observation is pulled to within this (natural log) of the estimate.
    pub max_step: f64,
    /// Pseudo-observations of the parent when shrinking a child toward it.
    pub n0: f64,
}

impl Default for Bounds {
    fn default() -> Self {
        // max_step ln 3: a leg three times the estimate counts as three times, no more.
        Bounds { alpha: 0.05, ratio: 100.0, max_step: 3f64.ln(), n0: 8.0 }
    }
}

/// A bounded exponentially weighted mean of log-ratios. The estimate starts at ratio 1 (the
/// prior) with no observations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LogEwma {
    mean: f64,
    n: u32,
}

impl LogEwma {
    /// Adds one observed ratio; a ratio that is not a positive finite number is ignored.
    pub fn observe(&mut self, ratio: f64, b: &Bounds) {
        if !(ratio.is_finite() && ratio > 0.0) {
            return;
        }
        let bound = b.ratio.max(1.0).ln();
        let mut x = ratio.ln().clamp(-bound, bound);
        let alpha = b.alpha.clamp(1e-6, 1.0);
        let warm = f64::from(self.n) >= 1.0 / alpha;
        if warm {
            x = x.clamp(self.mean - b.max_step, self.mean + b.max_step);
        }
        let weight = (1.0 / (f64::from(self.n) + 1.0)).max(alpha);
        self.mean += weight * (x - self.mean);
        self.n = self.n.saturating_add(1);
    }

    /// The estimated ratio.
    pub fn factor(&self) -> f64 {
        self.mean.exp()
    }

    /// Observations so far.
    pub fn count(&self) -> u32 {
        self.n
    }

    /// The ratio, shrunk toward `parent` while this has few observations.
    pub fn shrunk_toward(&self, parent: &LogEwma, b: &Bounds) -> f64 {
        self.shrunk_toward_log(parent.mean, b)
    }

    /// The ratio, shrunk toward a parent given as its natural log.
    pub fn shrunk_toward_log(&self, parent_log: f64, b: &Bounds) -> f64 {
        let n = f64::from(self.n);
        let n0 = b.n0.max(0.0);
        if n + n0 <= 0.0 {
            return parent_log.exp();
        }
        ((n * self.mean + n0 * parent_log) / (n + n0)).exp()
    }
}

/// The quantile of the last `capacity` observations.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentQuantile {
    ring: Vec<f64>,
    next: usize,
    capacity: usize,
    n: u64,
}

impl RecentQuantile {
    pub fn new(capacity: usize) -> RecentQuantile {
        let capacity = capacity.max(1);
        RecentQuantile { ring: Vec::with_capacity(capacity), next: 0, capacity, n: 0 }
    }

    /// Adds one observation; one that is not finite is ignored.
    pub fn observe(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        if self.ring.len() < self.capacity {
            self.ring.push(x);
        } else {
            self.ring[self.next] = x;
        }
        self.next = (self.next + 1) % self.capacity;
        self.n = self.n.saturating_add(1);
    }

    /// The `tau` quantile (nearest rank) of what is kept, or None before `min` observations.
    pub fn value(&self, tau: f64, min: usize) -> Option<f64> {
        self.value_with(tau, min, &[])
    }

    /// The `tau` quantile of what is kept together with `tail`: observations known to lie above
    /// it that are not finished yet (an order already later than the kept quantile says its
    /// error will be at least that). None before `min` kept observations.
    pub fn value_with(&self, tau: f64, min: usize, tail: &[f64]) -> Option<f64> {
        if self.ring.is_empty() || self.ring.len() < min {
            return None;
        }
        let mut v = self.ring.clone();
        v.extend(tail.iter().copied().filter(|x| x.is_finite()));
        v.sort_unstable_by(f64::total_cmp);
        let rank = (tau.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.clamp(1, v.len()) - 1])
    }

    /// Observations ever made.
    pub fn count(&self) -> u64 {
        self.n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_city_twice_as_slow_from_its_first_legs() {
        let b = Bounds::default();
        let mut e = LogEwma::default();
        assert_eq!(e.factor(), 1.0, "the prior");
        for _ in 0..3 {
            e.observe(2.0, &b);
        }
        assert!((e.factor() - 2.0).abs() < 1e-9, "{}", e.factor());
        // A simulator at speed-up 40: ratios near 1/40.
        let mut fast = LogEwma::default();
        fast.observe(1.0 / 40.0, &b);
        assert!((fast.factor() - 0.025).abs() < 1e-9);
    }

    #[test]
    fn bounded_against_nonsense_and_outliers() {
        let b = Bounds::default();
        let mut e = LogEwma::default();
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            e.observe(bad, &b);
        }
        assert_eq!(e.count(), 0);
        e.observe(1e9, &b);
        assert!((e.factor() - 100.0).abs() < 1e-6, "clamped to the ratio bound");
        let mut warm = LogEwma::default();
        for _ in 0..40 {
            warm.observe(1.0, &b);
        }
        warm.observe(1000.0, &b);
        // At most max_step (ln 3) times alpha (0.05) away: a factor of about 1.056.
        assert!(warm.factor() < 1.06, "{}", warm.factor());
    }

    #[test]
    fn follows_a_change_once_warm() {
        let b = Bounds::default();
        let mut e = LogEwma::default();
        for _ in 0..100 {
            e.observe(1.0, &b);
        }
        for _ in 0..100 {
            e.observe(2.0, &b);
        }
        assert!((e.factor() - 2.0).abs() < 0.02, "{}", e.factor());
    }

    #[test]
    fn a_thin_child_leans_on_its_parent() {
        let b = Bounds::default();
        let mut city = LogEwma::default();
        for _ in 0..50 {
            city.observe(2.0, &b);
        }
        let store = LogEwma::default();
        assert!((store.shrunk_toward(&city, &b) - 2.0).abs() < 1e-9, "no data: the city");
        let mut busy = LogEwma::default();
        for _ in 0..1000 {
            busy.observe(1.0, &b);
        }
        let f = busy.shrunk_toward(&city, &b);
        assert!(f < 1.01, "well observed: its own ({f})");
    }

    #[test]
    fn open_observations_in_the_tail_raise_the_quantile() {
        let mut q = RecentQuantile::new(100);
        (1..=100).for_each(|i| q.observe(f64::from(i) / 100.0));
        assert_eq!(q.value(0.97, 10), Some(0.97));
        // Five orders still open already past 1.2: of 105, the 97% rank (the 102nd) is among them.
        let late = [1.5, 1.3, 1.4, 1.2, 1.25];
        assert_eq!(q.value_with(0.97, 10, &late), Some(1.25));
        assert_eq!(q.value_with(0.97, 10, &[f64::NAN]), Some(0.97));
        assert_eq!(RecentQuantile::new(100).value_with(0.97, 10, &late), None, "nothing finished: no quantile");
    }

    #[test]
    fn recent_quantile_follows_the_last_observations() {
        let mut q = RecentQuantile::new(100);
        assert_eq!(q.value(0.95, 10), None);
        for i in 0..100 {
            q.observe(f64::from(i));
        }
        q.observe(f64::NAN);
        assert_eq!(q.value(0.95, 10), Some(94.0));
        assert_eq!(q.value(0.5, 10), Some(49.0));
        // A hundred new observations replace the old ones entirely.
        for _ in 0..100 {
            q.observe(1.0);
        }
        assert_eq!(q.value(0.95, 10), Some(1.0));
        assert_eq!(q.count(), 200);
    }
}
