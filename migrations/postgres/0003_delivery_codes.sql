-- Proof of delivery (PostgreSQL): each order's 4-digit code, shown to its customer only. Orders placed before
-- have none (their riders prove delivery by being at the door).
ALTER TABLE orders ADD COLUMN delivery_code TEXT;
