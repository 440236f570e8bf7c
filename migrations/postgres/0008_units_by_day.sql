-- Units ordered per store, SKU and day (days since the epoch, UTC), each order line counted at most
-- 5 units (the top picks' cap), for the days before the settings key 'units_rolled_up_to'.
-- Start-up reads these for the top picks' window instead of joining every order line of it; the
-- days after are summed from the orders. Written by the single-node server's committer, a day at
-- a time, once the day is over by an hour (no order of it commits later).
CREATE TABLE units_by_day (
    store_id TEXT NOT NULL,
    sku      TEXT NOT NULL,
    day      BIGINT NOT NULL,
    units    BIGINT NOT NULL,
    PRIMARY KEY (store_id, sku, day)
);
