//! Time, handed in. The server reads the system clock in one place, [`SystemClock`], which only
//! `main` (and the test harness that starts a server in-process) constructs; every operation of
//! the state, the riders and the dispatcher asks the [`Clock`] it was given. Tests hand in a
//! [`ManualClock`] and move time themselves: hold expiry, retention and lifecycle edges are tested
//! without sleeping, and a replay can drive the whole server in simulated time.
//!
//! Durations measured for metrics (request latency, commit time) use `std::time::Instant`: they
//! are not domain time.

use std::sync::atomic::{AtomicI64, Ordering};

use darkstore_geoinv::Millis;

/// Unix milliseconds, as the domain sees them.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> Millis;

    /// Unix seconds (for token expiry).
    fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: Millis) -> ManualClock {
        ManualClock(AtomicI64::new(start))
    }

    pub fn set(&self, t: Millis) {
        self.0.store(t, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: Millis) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}
