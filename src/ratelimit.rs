//! Per-client token buckets. A client is its token's subject, or its IP address when anonymous.

use std::time::Instant;

use dashmap::DashMap;

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: DashMap<String, Bucket>,
}

impl RateLimiter {
    /// `per_sec` of 0 (or less) turns limiting off.
    pub fn new(per_sec: f64, burst: f64) -> RateLimiter {
        RateLimiter { per_sec, burst: burst.max(1.0), buckets: DashMap::new() }
    }

    /// Takes a token for `client`; false when its bucket is empty.
    pub fn allow(&self, client: &str) -> bool {
        self.allow_at(client, Instant::now())
    }

    fn allow_at(&self, client: &str, now: Instant) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        let mut bucket = match self.buckets.get_mut(client) {
            Some(b) => b,
            None => self.buckets.entry(client.to_owned()).or_insert(Bucket { tokens: self.burst, last: now }),
        };
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_sec).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets clients whose buckets have been full for a while, so the map stays small.
    pub fn prune(&self) {
        let now = Instant::now();
        let refill_secs = if self.per_sec > 0.0 { self.burst / self.per_sec } else { 0.0 };
        self.buckets.retain(|_, b| now.saturating_duration_since(b.last).as_secs_f64() < refill_secs + 60.0);
    }

    pub fn n_clients(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills_at_the_rate() {
        let limiter = RateLimiter::new(10.0, 3.0);
        let t0 = Instant::now();
        let got: Vec<bool> = (0..4).map(|_| limiter.allow_at("a", t0)).collect();
        assert_eq!(got, [true, true, true, false]);
        // Another client has its own bucket.
        assert!(limiter.allow_at("b", t0));
        // 100 ms later one token is back.
        assert!(limiter.allow_at("a", t0 + Duration::from_millis(100)));
        assert!(!limiter.allow_at("a", t0 + Duration::from_millis(100)));
    }

    #[test]
    fn zero_rate_means_no_limit() {
        let limiter = RateLimiter::new(0.0, 0.0);
        assert!((0..10_000).all(|_| limiter.allow("a")));
        assert_eq!(limiter.n_clients(), 0);
    }
}
