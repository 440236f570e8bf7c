-- The promise to the millisecond (placement time plus the quote it was placed under; orders placed
-- before have none and are promised created_at + eta_minutes), and the delivery fee the order was
-- quoted (part of total_minor).
ALTER TABLE orders ADD COLUMN promised_by BIGINT;
ALTER TABLE orders ADD COLUMN delivery_fee_minor BIGINT NOT NULL DEFAULT 0;
