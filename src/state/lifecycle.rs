//! The life of an order after placement: transitions (with the stock they release or sell),
//! packing, payment holds that run out, and the payment provider's events. Each change of an
//! order, its status and its payment together, is one commit; observers hear of it afterwards.

use std::sync::atomic::Ordering;

use darkstore_db::{OrderStatusChange, Write};
use darkstore_geoinv::Millis;
use darkstore_geoinv::order::{OrderStatus, PaymentEvent, PaymentOutcome, PaymentStatus};
use darkstore_geoinv::stock::LotDelta;

use super::{OrderRef, State, TransitionError, ledger_writes};
use crate::model::{Order, OrderBefore};

/// What a payment event did.
#[derive(Debug, Clone)]
pub struct PaymentApplied {
    pub order: Order,
    pub outcome: PaymentOutcome,
}

impl State {
    /// An order to change: in memory, or read back and put in memory again, so that every change
    /// of one order goes through one lock.
    async fn order_to_change(&self, order_id: &str) -> Result<OrderRef, TransitionError> {
        if let Some(o) = self.order(order_id) {
            return Ok(o);
        }
        let found = self.find_order(order_id).await.map_err(TransitionError::Unavailable)?;
        let found = found.ok_or(TransitionError::NotFound)?;
        Ok(self.orders.entry(order_id.to_owned()).or_insert(found).clone())
    }

    /// Commits one change of an order (status, payment, rider) with the stock it settles, then
    /// applies it in memory and tells the observers.
    async fn commit_change(
        &self,
        o: &mut Order,
        to: OrderStatus,
        payment_status: PaymentStatus,
        refund_minor: Option<i64>,
        rider_id: Option<String>,
    ) -> Result<(), TransitionError> {
        let now = self.now();
        let moves = to != o.status;
        let (kind, settle): (&'static str, Vec<LotDelta>) = match to {
            OrderStatus::Cancelled | OrderStatus::Expired if moves => {
                ("release", o.holds.iter().map(LotDelta::release).collect())
            }
            OrderStatus::PickedUp if moves => ("sale", o.holds.iter().map(LotDelta::sale).collect()),
            _ => ("", Vec::new()),
        };
        let rider_id = match to {
            OrderStatus::Assigned | OrderStatus::PickedUp | OrderStatus::Delivered => rider_id.or(o.rider_id.clone()),
            _ => None,
        };
        let mut writes = vec![Write::Status(OrderStatusChange {
            order_id: o.id.clone(),
            store_id: o.store_id.clone(),
            status: to.as_str(),
            payment_status: payment_status.as_str(),
            refund_minor,
            rider_id: rider_id.clone(),
            ts: now,
        })];
        writes.extend(ledger_writes(&o.store_id, kind, &settle, Some(&o.id), now));
        self.committer.commit(writes).await.map_err(|e| TransitionError::Unavailable(e.to_string()))?;
        if !settle.is_empty() {
            if let Some(store) = self.store(&o.store_id) {
                let mut stock = store.stock.lock().expect("stock lock");
                settle.iter().for_each(|d| stock.apply(d));
            }
            if kind == "release" {
                let units: i64 = settle.iter().map(|d| -d.d_reserved).sum();
                self.metrics.released_units.fetch_add(units as u64, Ordering::Relaxed);
            }
            o.holds.clear();
        }
        if moves
            && o.status == OrderStatus::PendingPayment
            && let Some(deadline) = o.hold_expires_at
        {
            self.holds.lock().expect("holds lock").remove(&(deadline, o.id.clone()));
        }
        if moves && to == OrderStatus::Packed {
            o.packed_at = Some(now);
        }
        {
            let mut dispatchable = self.dispatchable.lock().expect("dispatchable lock");
            if matches!(to, OrderStatus::Confirmed | OrderStatus::Packed) {
                dispatchable.insert(o.id.clone());
            } else {
                dispatchable.remove(&o.id);
            }
        }
        // A payment confirmed: the order joins its store's queues.
        if moves
            && o.status == OrderStatus::PendingPayment
            && to == OrderStatus::Confirmed
            && let Some(store) = self.store(&o.store_id)
        {
            self.confirmed_at(store.idx.0);
        }
        let before = OrderBefore { status: o.status, payment_status: o.payment_status, rider_id: o.rider_id.take() };
        o.status = to;
        o.payment_status = payment_status;
        o.refund_minor = refund_minor;
        o.rider_id = rider_id;
        o.updated_at = now;
        if moves {
            self.metrics.order_transitions.fetch_add(1, Ordering::Relaxed);
        }
        self.order_changed(o, Some(before));
        if !settle.is_empty()
            && let Some(store) = self.store(&o.store_id)
        {
            let skus: Vec<&str> = settle.iter().map(|d| &*d.sku).collect();
            self.stock_changed(&store, &skus, now);
        }
        Ok(())
    }

    /// Moves an order to `to` if the lifecycle allows it and `allowed` accepts the caller,
    /// releasing or selling its stock as the new status requires; durable before it returns.
    /// Cancelling a paid order leaves its payment `refund_due` with the total to refund. Only a
    /// payment event confirms an order that waits for one ([`State::payment_event`]).
    pub async fn transition(
        &self,
        order_id: &str,
        to: OrderStatus,
        rider_id: Option<String>,
        allowed: impl FnOnce(&Order) -> bool,
    ) -> Result<Order, TransitionError> {
        let order = self.order_to_change(order_id).await?;
        let mut o = order.lock().await;
        if !allowed(&o) {
            return Err(TransitionError::Forbidden);
        }
        if !o.status.can_become_unpaid(to) {
            return Err(TransitionError::NotAllowed { from: o.status, to });
        }
        let payment = if to == OrderStatus::Cancelled { o.payment_status.on_cancel() } else { o.payment_status };
        let refund = if payment == PaymentStatus::RefundDue && o.payment_status != PaymentStatus::RefundDue {
            Some(o.total_minor)
        } else {
            o.refund_minor
        };
        self.commit_change(&mut o, to, payment, refund, rider_id).await?;
        Ok(o.clone())
    }

    /// Staff packed an order. A confirmed order becomes `packed`; an order a rider was already
    /// sent for stays `assigned` (the rider is on the way) and only remembers when it was packed.
    /// Packing twice, or after pickup, is a conflict.
    pub async fn pack(&self, order_id: &str) -> Result<Order, TransitionError> {
        let order = self.order_to_change(order_id).await?;
        let mut o = order.lock().await;
        match (o.status, o.packed_at) {
            (OrderStatus::Assigned, None) => {
                o.packed_at = Some(self.now());
                let before =
                    OrderBefore { status: o.status, payment_status: o.payment_status, rider_id: o.rider_id.clone() };
                self.order_changed(&o, Some(before));
                Ok(o.clone())
            }
            (OrderStatus::Confirmed, _) => {
                let (payment, refund) = (o.payment_status, o.refund_minor);
                self.commit_change(&mut o, OrderStatus::Packed, payment, refund, None).await?;
                Ok(o.clone())
            }
            (from, _) => Err(TransitionError::NotAllowed { from, to: OrderStatus::Packed }),
        }
    }

    /// Applies what the payment provider says about an order. Events are idempotent and never
    /// undo a payment (see `PaymentStatus::on_event`); the payment and any status change it
    /// brings are one commit.
    pub async fn payment_event(&self, order_id: &str, event: PaymentEvent) -> Result<PaymentApplied, TransitionError> {
        let order = self.order_to_change(order_id).await?;
        let mut o = order.lock().await;
        let outcome = o.payment_status.on_event(o.status, event);
        if let PaymentOutcome::Apply { payment, order: to, refund } = outcome {
            let to = to.unwrap_or(o.status);
            if to != o.status && !o.status.can_become(to) {
                return Err(TransitionError::NotAllowed { from: o.status, to });
            }
            let refund_minor = if refund { Some(o.total_minor) } else { o.refund_minor };
            self.commit_change(&mut o, to, payment, refund_minor, None).await?;
        }
        self.metrics.payment_event(outcome);
        Ok(PaymentApplied { order: o.clone(), outcome })
    }

    /// Expires the payment holds whose deadline has passed.
    pub async fn expire_holds(&self) {
        let now = self.now();
        let due: Vec<(Millis, String)> = {
            let holds = self.holds.lock().expect("holds lock");
            holds.range(..(now + 1, String::new())).cloned().collect()
        };
        for (deadline, order_id) in due {
            match self.transition(&order_id, OrderStatus::Expired, None, |_| true).await {
                Ok(_) => {
                    self.metrics.holds_expired.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(order = %order_id, "payment hold expired; stock released");
                }
                Err(TransitionError::Unavailable(e)) => {
                    tracing::warn!(order = %order_id, error = %e, "expiring a hold failed; will retry");
                }
                Err(_) => {
                    // Paid or cancelled meanwhile: nothing to expire.
                    self.holds.lock().expect("holds lock").remove(&(deadline, order_id));
                }
            }
        }
    }
}
