//! The order lifecycle.
//!
//! `pending_payment → confirmed → packed → assigned → picked_up → delivered`, or `cancelled`
//! (until pickup) or `expired` (a payment hold that ran out). Dispatch may also put an `assigned`
//! order back to `packed` (or `confirmed`) when a rider rejects it or drops out before pickup.

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    PendingPayment,
    Confirmed,
    Packed,
    Assigned,
    PickedUp,
    Delivered,
    Cancelled,
    Expired,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 8] = [
        OrderStatus::PendingPayment,
        OrderStatus::Confirmed,
        OrderStatus::Packed,
        OrderStatus::Assigned,
        OrderStatus::PickedUp,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
        OrderStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingPayment => "pending_payment",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Packed => "packed",
            OrderStatus::Assigned => "assigned",
            OrderStatus::PickedUp => "picked_up",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True while the order holds reserved stock (from placement until pickup).
    pub fn holds_stock(self) -> bool {
        matches!(
            self,
            OrderStatus::PendingPayment | OrderStatus::Confirmed | OrderStatus::Packed | OrderStatus::Assigned
        )
    }

    /// True once nothing more can happen to the order.
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Delivered | OrderStatus::Cancelled | OrderStatus::Expired)
    }

    /// Whether anyone but the payment provider may move the order from `self` to `next`: only a
    /// payment confirms an order that waits for one.
    pub fn can_become_unpaid(self, next: OrderStatus) -> bool {
        self.can_become(next) && !(self == OrderStatus::PendingPayment && next == OrderStatus::Confirmed)
    }

    /// Whether the lifecycle allows going from `self` to `next`.
    pub fn can_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        match (self, next) {
            (PendingPayment, Confirmed | Cancelled | Expired) => true,
            (Confirmed, Packed | Assigned | Cancelled) => true,
            (Packed, Assigned | Cancelled) => true,
            // Back for reassignment: rejected, or the rider dropped out before pickup.
            (Assigned, Confirmed | Packed) => true,
            (Assigned, PickedUp | Cancelled) => true,
            (PickedUp, Delivered) => true,
            _ => false,
        }
    }
}

/// Where an order's money is, as the payment provider last told it.
///
/// `none`: no payment is taken through the server. `held`: the provider holds an authorization
/// and has not said more. `paid`: captured. `failed`: the provider refused it. `refund_due`: money
/// was captured for an order that will not be delivered (cancelled after payment, or paid after
/// its hold expired) and must go back. `refunded`: it went back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    None,
    Held,
    Paid,
    Failed,
    RefundDue,
    Refunded,
}

/// What the payment provider says about an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentEvent {
    Succeeded,
    Failed,
    Refunded,
}

/// What a payment event does to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// The payment moves to `payment`; the order moves to `order` when set; `refund` says the
    /// captured total is now owed back.
    Apply { payment: PaymentStatus, order: Option<OrderStatus>, refund: bool },
    /// The event was already applied (a retried delivery): nothing changes.
    Duplicate,
    /// The event would undo a payment (`failed` after `succeeded`, anything after a refund):
    /// nothing changes, and the event is counted and logged.
    Ignored,
    /// The event does not fit the order's payment at all (a refund of money never captured, any
    /// event for an order taken without payment).
    Refused,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 6] = [
        PaymentStatus::None,
        PaymentStatus::Held,
        PaymentStatus::Paid,
        PaymentStatus::Failed,
        PaymentStatus::RefundDue,
        PaymentStatus::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::None => "none",
            PaymentStatus::Held => "held",
            PaymentStatus::Paid => "paid",
            PaymentStatus::Failed => "failed",
            PaymentStatus::RefundDue => "refund_due",
            PaymentStatus::Refunded => "refunded",
        }
    }

    pub fn parse(s: &str) -> Option<PaymentStatus> {
        PaymentStatus::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The payment after the order is cancelled: captured money becomes owed back; an
    /// authorization stays as the provider holds it (a later `succeeded` makes it `refund_due`).
    pub fn on_cancel(self) -> PaymentStatus {
        match self {
            PaymentStatus::Paid => PaymentStatus::RefundDue,
            other => other,
        }
    }

    /// What `event` does to an order that is `status` with this payment. Events never undo a
    /// payment, and applying the same event twice is the same as once.
    pub fn on_event(self, status: OrderStatus, event: PaymentEvent) -> PaymentOutcome {
        use PaymentEvent as E;
        use PaymentStatus as P;
        let apply = |payment, order, refund| PaymentOutcome::Apply { payment, order, refund };
        match (self, event) {
            (P::None, _) => PaymentOutcome::Refused,
            (P::Held, E::Succeeded) if status == OrderStatus::PendingPayment => {
                apply(P::Paid, Some(OrderStatus::Confirmed), false)
            }
            // Captured after the order was cancelled or its hold ran out: the money goes back.
            (P::Held, E::Succeeded) => apply(P::RefundDue, None, true),
            (P::Held, E::Failed) if status == OrderStatus::PendingPayment => {
                apply(P::Failed, Some(OrderStatus::Cancelled), false)
            }
            (P::Held, E::Failed) => apply(P::Failed, None, false),
            // A provider that retried after failing: the order is gone, the money goes back.
            (P::Failed, E::Succeeded) => apply(P::RefundDue, None, true),
            (P::RefundDue, E::Refunded) => apply(P::Refunded, None, false),
            (P::Paid | P::RefundDue, E::Succeeded) | (P::Failed, E::Failed) | (P::Refunded, E::Refunded) => {
                PaymentOutcome::Duplicate
            }
            (P::Paid | P::RefundDue | P::Refunded, E::Failed) | (P::Refunded, E::Succeeded) => PaymentOutcome::Ignored,
            (P::Held | P::Paid | P::Failed, E::Refunded) => PaymentOutcome::Refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::{self, *};

    #[test]
    fn names_round_trip() {
        for st in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(st.as_str()), Some(st));
        }
        assert_eq!(OrderStatus::parse("shipped"), None);
    }

    #[test]
    fn transitions_table() {
        let allowed = [
            (PendingPayment, Confirmed),
            (PendingPayment, Cancelled),
            (PendingPayment, Expired),
            (Confirmed, Packed),
            (Confirmed, Assigned),
            (Confirmed, Cancelled),
            (Packed, Assigned),
            (Packed, Cancelled),
            (Assigned, Confirmed),
            (Assigned, Packed),
            (Assigned, PickedUp),
            (Assigned, Cancelled),
            (PickedUp, Delivered),
        ];
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                assert_eq!(from.can_become(to), allowed.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn cancel_is_allowed_until_pickup_only() {
        for st in OrderStatus::ALL {
            assert_eq!(st.can_become(Cancelled), st.holds_stock(), "{st:?}");
        }
    }

    #[test]
    fn payment_events_table() {
        use super::{PaymentEvent as E, PaymentOutcome as O, PaymentStatus as P};
        let apply = |payment, order, refund| O::Apply { payment, order, refund };
        // (payment, order status, event, outcome)
        let cases = [
            (P::Held, PendingPayment, E::Succeeded, apply(P::Paid, Some(Confirmed), false)),
            (P::Held, PendingPayment, E::Failed, apply(P::Failed, Some(Cancelled), false)),
            (P::Held, PendingPayment, E::Refunded, O::Refused),
            (P::Held, Expired, E::Succeeded, apply(P::RefundDue, None, true)),
            (P::Held, Cancelled, E::Succeeded, apply(P::RefundDue, None, true)),
            (P::Held, Expired, E::Failed, apply(P::Failed, None, false)),
            (P::Paid, Confirmed, E::Succeeded, O::Duplicate),
            (P::Paid, PickedUp, E::Failed, O::Ignored),
            (P::Paid, Delivered, E::Refunded, O::Refused),
            (P::Failed, Cancelled, E::Failed, O::Duplicate),
            (P::Failed, Cancelled, E::Succeeded, apply(P::RefundDue, None, true)),
            (P::RefundDue, Cancelled, E::Succeeded, O::Duplicate),
            (P::RefundDue, Cancelled, E::Failed, O::Ignored),
            (P::RefundDue, Cancelled, E::Refunded, apply(P::Refunded, None, false)),
            (P::Refunded, Cancelled, E::Refunded, O::Duplicate),
            (P::Refunded, Cancelled, E::Succeeded, O::Ignored),
            (P::None, Confirmed, E::Succeeded, O::Refused),
        ];
        for (payment, status, event, outcome) in cases {
            assert_eq!(payment.on_event(status, event), outcome, "{payment:?} {status:?} {event:?}");
        }
        assert_eq!(P::Paid.on_cancel(), P::RefundDue);
        assert_eq!(P::Held.on_cancel(), P::Held);
        for p in P::ALL {
            assert_eq!(P::parse(p.as_str()), Some(p));
        }
    }

    #[test]
    fn no_payment_event_undoes_a_capture_and_every_event_is_idempotent() {
        use super::{PaymentEvent as E, PaymentOutcome as O, PaymentStatus as P};
        let captured = |p: P| matches!(p, P::Paid | P::RefundDue | P::Refunded);
        for p in P::ALL {
            for st in OrderStatus::ALL {
                for e in [E::Succeeded, E::Failed, E::Refunded] {
                    if let O::Apply { payment, order, .. } = p.on_event(st, e) {
                        assert!(!captured(p) || captured(payment), "{p:?} {e:?} undid a capture");
                        let st2 = order.unwrap_or(st);
                        assert!(order.is_none_or(|o| st.can_become(o)), "{st:?} -> {order:?}");
                        // The same event again changes nothing more.
                        assert!(
                            matches!(payment.on_event(st2, e), O::Duplicate | O::Ignored | O::Refused),
                            "{p:?} {st:?} {e:?} twice"
                        );
                    }
                }
            }
        }
    }
}
