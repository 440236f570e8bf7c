-- The promise to the millisecond (placement time plus the quote it was placed under; orders placed
-- before have none and are promised created_at + eta_minutes), and the delivery fee the order was
-- quoted (part of total_minor).
ALTER TABLE orders ADD COLUMN promised_by BIGINT;
ALTER TABLE orders ADD COLUMN delivery_fee_minor BIGINT NOT NULL DEFAULT 0;
-- Order lists (a customer's, a store's, newest first), the demand forecast and top picks read
-- orders by placement time.
CREATE INDEX orders_by_customer ON orders (customer_id, created_at, id);
CREATE INDEX orders_by_store ON orders (store_id, created_at, id);
CREATE INDEX orders_by_created ON orders (created_at);
-- Store hours in the store's time zone (hours: the API's JSON object of weekday intervals; NULL:
-- always open), and a pause with its reason (NULL: not paused).
ALTER TABLE stores ADD COLUMN timezone TEXT;
ALTER TABLE stores ADD COLUMN hours TEXT;
ALTER TABLE stores ADD COLUMN paused_reason TEXT;
