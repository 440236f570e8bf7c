-- Payments (PostgreSQL): each order's payment status, its total and what is owed back, in the same row (and
-- the same commit) as its status; every event records the payment status it left.
ALTER TABLE orders ADD COLUMN payment_status TEXT NOT NULL DEFAULT 'none';
ALTER TABLE orders ADD COLUMN total_minor BIGINT NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN refund_minor BIGINT;
ALTER TABLE order_events ADD COLUMN payment_status TEXT;

UPDATE orders SET payment_status = 'held' WHERE status = 'pending_payment';
UPDATE orders SET total_minor = COALESCE(
    (SELECT CAST(SUM(l.qty * l.price_minor) AS BIGINT) FROM order_lines l WHERE l.order_id = orders.id), 0);
