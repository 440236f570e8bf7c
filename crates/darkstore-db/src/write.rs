//! What the server writes, and how a batch of writes becomes a few multi-row statements.

use sqlx::any::AnyArguments;
use sqlx::{Any, Arguments, Encode, Type};

use crate::{Backend, Db, DbError};

/// One stock movement: a row of the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerRow {
    pub store_id: String,
    pub sku: String,
    pub lot_id: i64,
    pub expires_at: Option<i64>,
    /// restock | reserve | release | sale | damage | expiry | count
    pub kind: &'static str,
    pub d_on_hand: i64,
    pub d_reserved: i64,
    pub order_id: Option<String>,
    pub ts: i64,
}

/// A new order with its lines.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOrder {
    pub id: String,
    pub customer_id: String,
    pub idempotency_key: String,
    pub request_hash: String,
    pub store_id: String,
    pub lat: f64,
    pub lng: f64,
    pub status: &'static str,
    pub payment_status: &'static str,
    pub total_minor: i64,
    pub delivery_code: Option<String>,
    pub eta_minutes: i64,
    /// Placement time plus the quote, ms.
    pub promised_by: i64,
    /// The delivery fee quoted (included in `total_minor`).
    pub delivery_fee_minor: i64,
    pub created_at: i64,
    pub hold_expires_at: Option<i64>,
    /// (sku, qty, price_minor)
    pub lines: Vec<(String, i64, i64)>,
}

/// An order moving to a new status or payment status (or both, in one row).
#[derive(Debug, Clone, PartialEq)]
pub struct OrderStatusChange {
    pub order_id: String,
    /// The order's store (not stored again: it says which region the change belongs to).
    pub store_id: String,
    pub status: &'static str,
    pub payment_status: &'static str,
    /// What is owed back (set once the payment is `refund_due`).
    pub refund_minor: Option<i64>,
    pub rider_id: Option<String>,
    pub ts: i64,
}

/// Everything the server persists.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Store {
        id: String,
        name: String,
        lat: f64,
        lng: f64,
        /// An IANA time zone name.
        timezone: Option<String>,
        /// Opening hours as the API takes them (JSON text); None: always open.
        hours: Option<String>,
        /// Paused, with this reason.
        paused: Option<String>,
        ts: i64,
    },
    Product {
        sku: String,
        name: String,
        category: String,
        price_minor: i64,
        low_stock_threshold: i64,
        ts: i64,
    },
    Rider {
        id: String,
        name: String,
        store_id: Option<String>,
        ts: i64,
    },
    Ledger(LedgerRow),
    Order(NewOrder),
    Status(OrderStatusChange),
    /// Cluster mode: the batch commits only if `region`'s epoch is not past `epoch`, and moves
    /// it to `epoch` (see `Fencer`).
    Fence {
        region: String,
        epoch: i64,
    },
    /// Sums the ledger rows written since the last checkpoint into `lot_sums`, in the batch's
    /// transaction (so after its own rows). Single-node only: every ledger row is written by the
    /// one commit task, so none can commit below the checkpoint later.
    Checkpoint,
    /// Sums the units ordered on the next day not yet rolled up into `units_by_day`, if that day
    /// is before `complete_before` (days since the epoch; the caller's clock says which days are
    /// over). One day a write, so a long history catches up a slice at a time. Single-node only.
    RollUp {
        complete_before: i64,
    },
}

impl Write {
    /// The store whose region this write belongs to (None: the catalog, shared by all).
    pub fn store_id(&self) -> Option<&str> {
        match self {
            Write::Ledger(row) => Some(&row.store_id),
            Write::Order(order) => Some(&order.store_id),
            Write::Status(change) => Some(&change.store_id),
            Write::Store { .. }
            | Write::Product { .. }
            | Write::Rider { .. }
            | Write::Fence { .. }
            | Write::Checkpoint
            | Write::RollUp { .. } => None,
        }
    }
}

/// Rows per multi-row statement: keeps bind parameters well under both backends' limits.
const ROWS_PER_STATEMENT: usize = 500;

/// A multi-row `INSERT … VALUES ($1, $2), ($3, $4) …` with its arguments.
///
/// On SQLite the placeholders are anonymous (`?, ?`), bound in order: SQLite keeps numbered ones
/// (`$1`) in a list it scans from the start to name each parameter, and sqlx asks the name of
/// every parameter as it binds, so a statement of `n` numbered parameters cost `n²/2` steps (9%
/// of the server's CPU in the hot-SKU bench's profile).
struct MultiInsert {
    sql: String,
    args: AnyArguments<'static>,
    n_params: usize,
    numbered: bool,
}

impl MultiInsert {
    fn new(backend: Backend, head: &str) -> MultiInsert {
        MultiInsert {
            sql: format!("{head} VALUES "),
            args: AnyArguments::default(),
            n_params: 0,
            numbered: backend == Backend::Postgres,
        }
    }

    fn row(&mut self) -> RowBuilder<'_> {
        if self.n_params > 0 {
            self.sql.push_str(", ");
        }
        self.sql.push('(');
        RowBuilder { insert: self, first: true }
    }

    async fn execute(mut self, tx: &mut sqlx::AnyConnection, tail: &str) -> Result<(), DbError> {
        self.sql.push_str(tail);
        sqlx::query_with(&self.sql, self.args).execute(tx).await?;
        Ok(())
    }
}

struct RowBuilder<'a> {
    insert: &'a mut MultiInsert,
    first: bool,
}

impl RowBuilder<'_> {
    fn bind<T: 'static + Send + Encode<'static, Any> + Type<Any>>(mut self, value: T) -> Self {
        self.insert.n_params += 1;
        if !self.first {
            self.insert.sql.push_str(", ");
        }
        self.first = false;
        if self.insert.numbered {
            self.insert.sql.push('$');
            self.insert.sql.push_str(&self.insert.n_params.to_string());
        } else {
            self.insert.sql.push('?');
        }
        // Encoding into AnyArguments only fails for types Any cannot carry, which we never bind.
        let _ = self.insert.args.add(value);
        self
    }
}

impl Drop for RowBuilder<'_> {
    fn drop(&mut self) {
        self.insert.sql.push(')');
    }
}

impl Db {
    /// Writes a batch in one transaction. Rows of each kind go in multi-row statements, in the
    /// order stores, products, riders, orders, order lines, ledger, events, status updates, so
    /// a batch may create an order and move it on.
    pub async fn write_batch<'a>(&self, writes: impl IntoIterator<Item = &'a Write>) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        let conn: &mut sqlx::AnyConnection = &mut tx;
        let backend = self.backend();

        // Upserts keep only the last write of each key: PostgreSQL refuses to update one row twice
        // in a statement.
        let mut stores: Vec<&Write> = Vec::new();
        let mut products: Vec<&Write> = Vec::new();
        let mut riders: Vec<&Write> = Vec::new();
        let mut orders: Vec<&NewOrder> = Vec::new();
        let mut ledger: Vec<&LedgerRow> = Vec::new();
        let mut statuses: Vec<&OrderStatusChange> = Vec::new();
        let mut fences: Vec<(String, i64)> = Vec::new();
        let mut checkpoint = false;
        let mut roll_up: Option<i64> = None;
        for w in writes {
            match w {
                Write::Fence { region, epoch } => fences.push((region.clone(), *epoch)),
                Write::Checkpoint => checkpoint = true,
                Write::RollUp { complete_before } => {
                    roll_up = Some(roll_up.map_or(*complete_before, |d| d.max(*complete_before)))
                }
                Write::Store { id, .. } => {
                    replace_or_push(&mut stores, w, |o| matches!(o, Write::Store { id: i, .. } if i == id))
                }
                Write::Product { sku, .. } => {
                    replace_or_push(&mut products, w, |o| matches!(o, Write::Product { sku: s, .. } if s == sku))
                }
                Write::Rider { id, .. } => {
                    replace_or_push(&mut riders, w, |o| matches!(o, Write::Rider { id: i, .. } if i == id))
                }
                Write::Ledger(row) => ledger.push(row),
                Write::Order(order) => orders.push(order),
                Write::Status(change) => statuses.push(change),
            }
        }

        // Fences first: a fenced batch writes nothing.
        for (region, epoch) in fences {
            fence(conn, region, epoch).await?;
        }
        for chunk in stores.chunks(ROWS_PER_STATEMENT) {
            let mut q = MultiInsert::new(
                backend,
                "INSERT INTO stores (id, name, lat, lng, timezone, hours, paused_reason, updated_at)",
            );
            for w in chunk {
                if let Write::Store { id, name, lat, lng, timezone, hours, paused, ts } = w {
                    q.row()
                        .bind(id.clone())
                        .bind(name.clone())
                        .bind(*lat)
                        .bind(*lng)
                        .bind(timezone.clone())
                        .bind(hours.clone())
                        .bind(paused.clone())
                        .bind(*ts);
                }
            }
            q.execute(conn, " ON CONFLICT (id) DO UPDATE SET name = excluded.name, lat = excluded.lat, lng = excluded.lng, timezone = excluded.timezone, hours = excluded.hours, paused_reason = excluded.paused_reason, updated_at = excluded.updated_at").await?;
        }
        for chunk in products.chunks(ROWS_PER_STATEMENT) {
            let mut q = MultiInsert::new(
                backend,
                "INSERT INTO products (sku, name, category, price_minor, low_stock_threshold, updated_at)",
            );
            for w in chunk {
                if let Write::Product { sku, name, category, price_minor, low_stock_threshold, ts } = w {
                    q.row()
                        .bind(sku.clone())
                        .bind(name.clone())
                        .bind(category.clone())
                        .bind(*price_minor)
                        .bind(*low_stock_threshold)
                        .bind(*ts);
                }
            }
            q.execute(conn, " ON CONFLICT (sku) DO UPDATE SET name = excluded.name, category = excluded.category, price_minor = excluded.price_minor, low_stock_threshold = excluded.low_stock_threshold, updated_at = excluded.updated_at").await?;
        }
        for chunk in riders.chunks(ROWS_PER_STATEMENT) {
            let mut q = MultiInsert::new(backend, "INSERT INTO riders (id, name, store_id, updated_at)");
            for w in chunk {
                if let Write::Rider { id, name, store_id, ts } = w {
                    q.row().bind(id.clone()).bind(name.clone()).bind(store_id.clone()).bind(*ts);
                }
            }
            q.execute(conn, " ON CONFLICT (id) DO UPDATE SET name = excluded.name, store_id = excluded.store_id, updated_at = excluded.updated_at").await?;
        }
        for chunk in orders.chunks(ROWS_PER_STATEMENT) {
            let mut q = MultiInsert::new(
                backend,
                "INSERT INTO orders (id, customer_id, idempotency_key, request_hash, store_id, lat, lng, status, eta_minutes, created_at, updated_at, hold_expires_at, payment_status, total_minor, delivery_code, promised_by, delivery_fee_minor)",
            );
            let mut events =
                MultiInsert::new(backend, "INSERT INTO order_events (order_id, status, payment_status, ts)");
            for o in chunk {
                q.row()
                    .bind(o.id.clone())
                    .bind(o.customer_id.clone())
                    .bind(o.idempotency_key.clone())
                    .bind(o.request_hash.clone())
                    .bind(o.store_id.clone())
                    .bind(o.lat)
                    .bind(o.lng)
                    .bind(o.status)
                    .bind(o.eta_minutes)
                    .bind(o.created_at)
                    .bind(o.created_at)
                    .bind(o.hold_expires_at)
                    .bind(o.payment_status)
                    .bind(o.total_minor)
                    .bind(o.delivery_code.clone())
                    .bind(o.promised_by)
                    .bind(o.delivery_fee_minor);
                events.row().bind(o.id.clone()).bind(o.status).bind(o.payment_status).bind(o.created_at);
            }
            q.execute(conn, "").await?;
            events.execute(conn, "").await?;
        }
        let lines: Vec<(&str, i64, &(String, i64, i64))> = orders
            .iter()
            .flat_map(|o| o.lines.iter().enumerate().map(move |(i, l)| (o.id.as_str(), i as i64, l)))
            .collect();
        for chunk in lines.chunks(ROWS_PER_STATEMENT) {
            let mut q = MultiInsert::new(backend, "INSERT INTO order_lines (order_id, line_no, sku, qty, price_minor)");
            for (order_id, line_no, (sku, qty, price)) in chunk {
                q.row().bind(order_id.to_string()).bind(*line_no).bind(sku.clone()).bind(*qty).bind(*price);
            }
            q.execute(conn, "").await?;
        }
        for chunk in ledger.chunks(ROWS_PER_STATEMENT) {
            let mut q = MultiInsert::new(
                backend,
                "INSERT INTO stock_ledger (store_id, sku, lot_id, expires_at, kind, d_on_hand, d_reserved, order_id, ts)",
            );
            for r in chunk {
                q.row()
                    .bind(r.store_id.clone())
                    .bind(r.sku.clone())
                    .bind(r.lot_id)
                    .bind(r.expires_at)
                    .bind(r.kind)
                    .bind(r.d_on_hand)
                    .bind(r.d_reserved)
                    .bind(r.order_id.clone())
                    .bind(r.ts);
            }
            q.execute(conn, "").await?;
        }
        for chunk in statuses.chunks(ROWS_PER_STATEMENT) {
            let mut events =
                MultiInsert::new(backend, "INSERT INTO order_events (order_id, status, payment_status, rider_id, ts)");
            for s in chunk {
                events
                    .row()
                    .bind(s.order_id.clone())
                    .bind(s.status)
                    .bind(s.payment_status)
                    .bind(s.rider_id.clone())
                    .bind(s.ts);
            }
            events.execute(conn, "").await?;
        }
        // Status updates run in order, one statement each: an order may move twice in one batch.
        for s in &statuses {
            sqlx::query(
                "UPDATE orders SET status = $1, rider_id = $2, updated_at = $3, payment_status = $4, refund_minor = $5 \
                 WHERE id = $6",
            )
            .bind(s.status)
            .bind(s.rider_id.clone())
            .bind(s.ts)
            .bind(s.payment_status)
            .bind(s.refund_minor)
            .bind(s.order_id.clone())
            .execute(&mut *conn)
            .await?;
        }
        if let Some(complete_before) = roll_up {
            roll_up_day(conn, complete_before).await?;
        }
        if checkpoint {
            checkpoint_ledger(conn).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Most ledger rows one checkpoint sums (about a third of a second on SQLite here).
pub const CHECKPOINT_MAX_ROWS: i64 = 200_000;

/// The settings key of the last ledger id summed into `lot_sums`.
pub(crate) const CHECKPOINT_KEY: &str = "ledger_checkpoint";

/// The last ledger id summed into `lot_sums` (0: none).
pub(crate) async fn ledger_checkpoint(conn: &mut sqlx::AnyConnection) -> Result<i64, DbError> {
    Ok(number_setting(conn, CHECKPOINT_KEY).await?.unwrap_or(0))
}

/// A settings value that is a number, read in the caller's transaction (None: unset).
async fn number_setting(conn: &mut sqlx::AnyConnection, key: &str) -> Result<Option<i64>, DbError> {
    let value: Option<String> =
        sqlx::query_scalar("SELECT value FROM settings WHERE key = $1").bind(key).fetch_optional(&mut *conn).await?;
    Ok(value.and_then(|v| v.parse().ok()))
}

/// Sets a settings value to a number, in the caller's transaction.
async fn set_number_setting(conn: &mut sqlx::AnyConnection, key: &str, value: i64) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Adds the ledger rows after the last checkpoint to `lot_sums` and moves the checkpoint to the
/// last of them.
async fn checkpoint_ledger(conn: &mut sqlx::AnyConnection) -> Result<(), DbError> {
    let from = ledger_checkpoint(conn).await?;
    let upto: i64 = sqlx::query_scalar("SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM stock_ledger")
        .fetch_one(&mut *conn)
        .await?;
    // A checkpoint behind a long ledger catches up a slice at a time: the commit task waits on it.
    let upto = upto.min(from.saturating_add(CHECKPOINT_MAX_ROWS));
    if upto <= from {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO lot_sums (store_id, sku, lot_id, expires_at, on_hand, reserved) \
         SELECT store_id, sku, lot_id, MAX(expires_at), CAST(SUM(d_on_hand) AS BIGINT), CAST(SUM(d_reserved) AS BIGINT) \
         FROM stock_ledger WHERE id > $1 AND id <= $2 GROUP BY store_id, sku, lot_id \
         ON CONFLICT (store_id, sku, lot_id) DO UPDATE SET \
         on_hand = lot_sums.on_hand + excluded.on_hand, reserved = lot_sums.reserved + excluded.reserved, \
         expires_at = CASE WHEN lot_sums.expires_at IS NULL THEN excluded.expires_at \
                           WHEN excluded.expires_at IS NULL OR excluded.expires_at < lot_sums.expires_at THEN lot_sums.expires_at \
                           ELSE excluded.expires_at END",
    )
    .bind(from)
    .bind(upto)
    .execute(&mut *conn)
    .await?;
    set_number_setting(conn, CHECKPOINT_KEY, upto).await
}

/// The most units one order line counts for in the top picks (so a single bulk order cannot make
/// an item a top pick); `units_by_day` holds sums capped so.
pub const MAX_UNITS_PER_LINE: i64 = 5;
pub(crate) const DAY_MS: i64 = 86_400_000;
/// Settings key: the first day (since the epoch) not rolled up into `units_by_day`.
pub(crate) const ROLLED_UP_KEY: &str = "units_rolled_up_to";

/// The first day not rolled up into `units_by_day` (None: none ever was).
pub(crate) async fn rolled_up_to(conn: &mut sqlx::AnyConnection) -> Result<Option<i64>, DbError> {
    number_setting(conn, ROLLED_UP_KEY).await
}

/// `orders o` read through its index on `created_at`: SQLite's planner, without statistics,
/// otherwise scans another index (or `order_lines`) whole.
pub(crate) fn orders_by_created(sqlite: bool) -> &'static str {
    if sqlite { "orders o INDEXED BY orders_by_created" } else { "orders o" }
}

fn is_sqlite(conn: &sqlx::AnyConnection) -> bool {
    conn.backend_name().eq_ignore_ascii_case("sqlite")
}

/// Rolls up the next day not yet in `units_by_day`, if it is before `complete_before` (a first
/// roll-up starts at the day of the first order).
async fn roll_up_day(conn: &mut sqlx::AnyConnection, complete_before: i64) -> Result<(), DbError> {
    let day = match rolled_up_to(conn).await? {
        Some(day) => day,
        None => {
            let first: Option<i64> =
                sqlx::query_scalar("SELECT MIN(created_at) FROM orders").fetch_one(&mut *conn).await?;
            first.map_or(complete_before, |t| t.div_euclid(DAY_MS)).min(complete_before)
        }
    };
    let next = if day < complete_before {
        sqlx::query(&format!(
            "INSERT INTO units_by_day (store_id, sku, day, units) \
             SELECT o.store_id, l.sku, $1, CAST(SUM(CASE WHEN l.qty > $4 THEN $4 WHEN l.qty < 0 THEN 0 ELSE l.qty END) AS BIGINT) \
             FROM {} JOIN order_lines l ON l.order_id = o.id \
             WHERE o.created_at >= $2 AND o.created_at < $3 GROUP BY o.store_id, l.sku \
             ON CONFLICT (store_id, sku, day) DO UPDATE SET units = excluded.units",
            orders_by_created(is_sqlite(conn))
        ))
        .bind(day)
        .bind(day.saturating_mul(DAY_MS))
        .bind(day.saturating_add(1).saturating_mul(DAY_MS))
        .bind(MAX_UNITS_PER_LINE)
        .execute(&mut *conn)
        .await?;
        day + 1
    } else {
        day
    };
    set_number_setting(conn, ROLLED_UP_KEY, next).await
}

/// Moves `region`'s epoch to `epoch` unless a newer owner already moved it further.
async fn fence(conn: &mut sqlx::AnyConnection, region: String, epoch: i64) -> Result<(), DbError> {
    let moved = sqlx::query(
        "INSERT INTO region_epochs (region, epoch) VALUES ($1, $2) \
         ON CONFLICT (region) DO UPDATE SET epoch = excluded.epoch WHERE region_epochs.epoch <= excluded.epoch",
    )
    .bind(region.clone())
    .bind(epoch)
    .execute(conn)
    .await?;
    if moved.rows_affected() == 0 {
        return Err(DbError::Fenced(region));
    }
    Ok(())
}

fn replace_or_push<'a>(list: &mut Vec<&'a Write>, w: &'a Write, same_key: impl Fn(&Write) -> bool) {
    match list.iter_mut().find(|o| same_key(o)) {
        Some(slot) => *slot = w,
        None => list.push(w),
    }
}
