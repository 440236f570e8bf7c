//! Stock lines: adjustments (restock, write-offs, counts), lot expiry, and telling observers what
//! changed.

use std::sync::atomic::Ordering;

use darkstore_geoinv::Millis;
use darkstore_geoinv::stock::{LineTotals, LotDelta, LotId, Sku, StoreStock};

use super::{State, StockError, Store, ledger_writes};
use crate::changes::{Change, Crossing};
use crate::model::LineView;

impl State {
    fn line_view(&self, sku: &str, stock: &StoreStock, now: Millis) -> LineView {
        let line = stock.line(sku);
        let totals = line.map_or(LineTotals { on_hand: 0, reserved: 0, available: 0 }, |l| l.totals(now));
        let threshold = self.product(sku).map_or(0, |p| p.low_stock_threshold);
        LineView {
            sku: sku.to_owned(),
            totals,
            low_stock: totals.available <= threshold,
            next_expiry: line.and_then(|l| l.next_expiry()),
        }
    }

    /// Every stock line of a store, by SKU.
    pub fn stock_lines(&self, store: &Store) -> Vec<LineView> {
        let now = self.now();
        let stock = store.stock.lock().expect("stock lock");
        let skus: Vec<Sku> = stock.lines().map(|(sku, _)| sku).collect();
        skus.iter().map(|sku| self.line_view(sku, &stock, now)).collect()
    }

    /// Changes on-hand stock of one SKU in one store, durably.
    pub async fn adjust_stock(
        &self,
        store_id: &str,
        sku: &str,
        delta: i64,
        reason: &'static str,
        expires_at: Option<Millis>,
    ) -> Result<LineView, StockError> {
        let store = self.store(store_id).ok_or(StockError::UnknownStore)?;
        if self.product(sku).is_none() {
            return Err(StockError::UnknownSku);
        }
        let now = self.now();
        if delta > 0 {
            // Units arrive: durable first, sellable after.
            let lot = LotId(self.next_lot.fetch_add(1, Ordering::Relaxed));
            let arrival = LotDelta { sku: Sku::new(sku), lot, expires_at, d_on_hand: delta, d_reserved: 0 };
            self.committer
                .commit(ledger_writes(store_id, reason, std::slice::from_ref(&arrival), None, now))
                .await
                .map_err(|e| StockError::Unavailable(e.to_string()))?;
            store.stock.lock().expect("stock lock").apply(&arrival);
            return Ok(self.stock_changed(&store, &[sku], now).remove(0));
        }
        // Units leave: taken now, given back if the commit fails.
        let deltas = {
            let mut stock = store.stock.lock().expect("stock lock");
            stock.adjust(sku, delta, LotId(0), None, now).map_err(StockError::Refused)?
        };
        if let Err(e) = self.committer.commit(ledger_writes(store_id, reason, &deltas, None, now)).await {
            let mut stock = store.stock.lock().expect("stock lock");
            deltas.iter().for_each(|d| stock.apply(&d.negated()));
            return Err(StockError::Unavailable(e.to_string()));
        }
        Ok(self.stock_changed(&store, &[sku], now).remove(0))
    }

    /// Tells the observers the new state of some stock lines, and which SKUs appeared or
    /// disappeared from what the store can sell. Returns the lines.
    pub(super) fn stock_changed(&self, store: &Store, skus: &[&str], now: Millis) -> Vec<LineView> {
        let mut crossings = Vec::new();
        let lines: Vec<LineView> = {
            let mut stock = store.stock.lock().expect("stock lock");
            let lines: Vec<LineView> = skus.iter().map(|sku| self.line_view(sku, &stock, now)).collect();
            for line in &lines {
                let now_available = line.totals.available > 0;
                if stock.announce(&line.sku, now_available) != now_available {
                    crossings.push(Crossing {
                        product: self.product(&line.sku),
                        sku: line.sku.clone(),
                        available: line.totals.available,
                        now_available,
                    });
                }
            }
            lines
        };
        self.changes.emit(&Change::Stock {
            store_id: &store.id,
            store: store.idx,
            lines: &lines,
            crossings: &crossings,
            now,
        });
        lines
    }

    /// Writes off the free units of expired lots in every store.
    pub async fn expire_lots(&self) {
        let now = self.now();
        for store in self.stores() {
            let deltas = store.stock.lock().expect("stock lock").expire(now);
            if deltas.is_empty() {
                continue;
            }
            match self.committer.commit(ledger_writes(&store.id, "expiry", &deltas, None, now)).await {
                Ok(()) => {
                    let skus: Vec<&str> = deltas.iter().map(|d| &*d.sku).collect();
                    self.stock_changed(&store, &skus, now);
                    self.metrics.lots_expired.fetch_add(deltas.len() as u64, Ordering::Relaxed);
                    tracing::info!(store = %store.id, lots = deltas.len(), "expired lots written off");
                }
                Err(e) => {
                    let mut stock = store.stock.lock().expect("stock lock");
                    deltas.iter().for_each(|d| stock.apply(&d.negated()));
                    tracing::warn!(store = %store.id, error = %e, "writing off expired lots failed; will retry");
                }
            }
        }
    }
}
