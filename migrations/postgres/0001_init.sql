-- darkstore schema, PostgreSQL flavour. Times are unix milliseconds; money is integer minor units.
-- Stock has no table of its own: it is the sum of the ledger per lot.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE stores (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    lat        DOUBLE PRECISION NOT NULL,
    lng        DOUBLE PRECISION NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE products (
    sku                 TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    category            TEXT NOT NULL,
    price_minor         BIGINT NOT NULL,
    low_stock_threshold BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

CREATE TABLE riders (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    store_id   TEXT,
    updated_at BIGINT NOT NULL
);

CREATE TABLE orders (
    id              TEXT PRIMARY KEY,
    customer_id     TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    store_id        TEXT NOT NULL,
    lat             DOUBLE PRECISION NOT NULL,
    lng             DOUBLE PRECISION NOT NULL,
    status          TEXT NOT NULL,
    rider_id        TEXT,
    eta_minutes     BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    hold_expires_at BIGINT,
    UNIQUE (customer_id, idempotency_key)
);

CREATE TABLE order_lines (
    order_id    TEXT NOT NULL REFERENCES orders (id),
    line_no     BIGINT NOT NULL,
    sku         TEXT NOT NULL,
    qty         BIGINT NOT NULL,
    price_minor BIGINT NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE order_events (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders (id),
    status   TEXT NOT NULL,
    rider_id TEXT,
    ts       BIGINT NOT NULL
);
CREATE INDEX order_events_by_order ON order_events (order_id);

-- kind: restock | reserve | release | sale | damage | expiry | count
CREATE TABLE stock_ledger (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    store_id   TEXT NOT NULL,
    sku        TEXT NOT NULL,
    lot_id     BIGINT NOT NULL,
    expires_at BIGINT,
    kind       TEXT NOT NULL,
    d_on_hand  BIGINT NOT NULL,
    d_reserved BIGINT NOT NULL,
    order_id   TEXT,
    ts         BIGINT NOT NULL
);
CREATE INDEX stock_ledger_by_lot ON stock_ledger (store_id, sku, lot_id);
CREATE INDEX stock_ledger_by_order ON stock_ledger (order_id);
