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
}
