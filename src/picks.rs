//! Top picks: what sells in each store's area, by units ordered over the last
//! `--top-picks-days`, kept in memory (one bucket per store and day, so the window slides a day
//! at a time) and rebuilt from the database at start.
//!
//! An observer of placed orders. One line counts at most [`MAX_UNITS_PER_LINE`] units, so a
//! single bulk order cannot make an item a top pick. Cancelled orders still count: the customer
//! wanted the item. The ranking is read on request and never shows an item with nothing
//! available (the state filters it).

use std::collections::BTreeMap;
use std::sync::Mutex;

use darkstore_geoinv::Millis;

use crate::changes::{Change, Changes, Observer};

type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// The most units one order line adds to an item's count (the database's roll-up caps so too).
pub const MAX_UNITS_PER_LINE: i64 = darkstore_db::MAX_UNITS_PER_LINE;
const DAY_MS: Millis = 86_400_000;

#[derive(Debug, Default)]
struct StorePicks {
    /// day (since the epoch) → sku → units
    days: BTreeMap<i64, FastMap<String, u64>>,
}

pub struct TopPicks {
    window_days: i64,
    stores: Mutex<FastMap<String, StorePicks>>,
}

impl TopPicks {
    pub fn new(window_days: u32) -> TopPicks {
        TopPicks { window_days: i64::from(window_days.max(1)), stores: Mutex::new(FastMap::default()) }
    }

    /// The earliest time that counts at `now`.
    pub fn since(&self, now: Millis) -> Millis {
        (now.div_euclid(DAY_MS) - self.window_days + 1) * DAY_MS
    }

    /// Counts `qty` units of `sku` ordered at `store` at `at`.
    pub fn add(&self, store: &str, sku: &str, qty: i64, at: Millis) {
        self.add_day(store, sku, qty.clamp(0, MAX_UNITS_PER_LINE), at.div_euclid(DAY_MS));
    }

    /// Counts `units` of `sku` ordered at `store` on `day` (days since the epoch), each line's
    /// units already capped (start-up reads them summed per day).
    pub fn add_day(&self, store: &str, sku: &str, units: i64, day: i64) {
        if units <= 0 {
            return;
        }
        let mut stores = self.stores.lock().expect("picks lock");
        let counts = stores.entry(store.to_owned()).or_default().days.entry(day).or_default();
        *counts.entry(sku.to_owned()).or_default() += units as u64;
    }

    /// The store's SKUs by units ordered within the window, most first (ties by SKU).
    pub fn ranked(&self, store: &str, now: Millis) -> Vec<(String, u64)> {
        let first_day = self.since(now).div_euclid(DAY_MS);
        let mut stores = self.stores.lock().expect("picks lock");
        let Some(picks) = stores.get_mut(store) else { return Vec::new() };
        // Days that left the window go.
        picks.days = picks.days.split_off(&first_day);
        let mut totals: FastMap<&str, u64> = FastMap::default();
        for day in picks.days.values() {
            for (sku, n) in day {
                *totals.entry(sku.as_str()).or_default() += n;
            }
        }
        let mut out: Vec<(String, u64)> = totals.into_iter().map(|(s, n)| (s.to_owned(), n)).collect();
        out.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

impl Observer for TopPicks {
    fn observe(&self, change: &Change<'_>, _hub: &Changes) {
        if let Change::Order { order, before: None } = change {
            for l in &order.lines {
                self.add(&order.store_id, &l.sku, l.qty, order.created_at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_units_in_the_window_with_capped_lines() {
        let picks = TopPicks::new(7);
        let now = 100 * DAY_MS + 5_000;
        picks.add("s1", "milk", 2, now - 1_000);
        picks.add("s1", "bread", 1, now - 1_000);
        picks.add("s1", "bread", 1, now - 2 * DAY_MS);
        picks.add("s1", "eggs", 500, now - DAY_MS);
        picks.add("s1", "old", 50, now - 8 * DAY_MS);
        picks.add("s1", "zero", 0, now);
        picks.add("s2", "tea", 3, now);
        let ranked = picks.ranked("s1", now);
        assert_eq!(
            ranked,
            vec![("eggs".to_owned(), 5), ("bread".to_owned(), 2), ("milk".to_owned(), 2)],
            "a bulk line counts 5; ties by SKU; a day past the window is gone"
        );
        assert!(picks.ranked("nowhere", now).is_empty());
        // A week later everything has left the window.
        assert!(picks.ranked("s1", now + 8 * DAY_MS).is_empty());
    }
}
