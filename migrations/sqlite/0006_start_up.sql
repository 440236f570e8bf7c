-- Start-up reads the open orders and the recently finished ones only (not the whole history).
CREATE INDEX orders_by_status ON orders (status);
CREATE INDEX orders_by_updated ON orders (updated_at);
