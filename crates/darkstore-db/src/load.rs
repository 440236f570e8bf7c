//! Reading everything back at start-up, so the in-memory state can be rebuilt.

use sqlx::Row;

use crate::{Db, DbError};

#[derive(Debug, Clone, PartialEq)]
pub struct StoreRow {
    pub id: String,
    pub name: String,
    pub lat: f64,
    pub lng: f64,
    pub timezone: Option<String>,
    /// Opening hours as the API took them (JSON text).
    pub hours: Option<String>,
    pub paused: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProductRow {
    pub sku: String,
    pub name: String,
    pub category: String,
    pub price_minor: i64,
    pub low_stock_threshold: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RiderRow {
    pub id: String,
    pub name: String,
    pub store_id: Option<String>,
}

/// A lot's stock: the sums of its ledger rows.
#[derive(Debug, Clone, PartialEq)]
pub struct LotSum {
    pub store_id: String,
    pub sku: String,
    pub lot_id: i64,
    pub expires_at: Option<i64>,
    pub on_hand: i64,
    pub reserved: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderLineRow {
    pub sku: String,
    pub qty: i64,
    pub price_minor: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    pub id: String,
    pub customer_id: String,
    pub idempotency_key: String,
    pub request_hash: String,
    pub store_id: String,
    pub lat: f64,
    pub lng: f64,
    pub status: String,
    pub payment_status: String,
    pub total_minor: i64,
    pub refund_minor: Option<i64>,
    pub delivery_code: Option<String>,
    pub rider_id: Option<String>,
    pub eta_minutes: i64,
    /// None for orders placed before promises were stored to the millisecond.
    pub promised_by: Option<i64>,
    pub delivery_fee_minor: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub hold_expires_at: Option<i64>,
    pub lines: Vec<OrderLineRow>,
}

/// Units an open order still holds in one lot.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderHold {
    pub order_id: String,
    pub sku: String,
    pub lot_id: i64,
    pub expires_at: Option<i64>,
    pub reserved: i64,
}

/// The idempotency key of a finished order that start-up does not read back whole: a retried
/// placement still answers with its order (read from the database when asked for).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRow {
    pub customer_id: String,
    pub idempotency_key: String,
    pub request_hash: String,
    pub order_id: String,
    pub store_id: String,
    pub created_at: i64,
}

/// Which finished orders a start-up reads back (open ones always are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since {
    /// Whole, with their lines: finished orders last changed at or after this.
    pub orders: i64,
    /// Their idempotency keys only: finished orders placed at or after this.
    pub keys: i64,
}

impl Since {
    /// Every order, whole.
    pub const ALL: Since = Since { orders: i64::MIN, keys: i64::MIN };
}

/// A lot: (store, SKU, lot id).
type LotKey = (String, String, i64);
/// A lot's latest expiry, units on hand and units reserved.
type LotTotals = (Option<i64>, i64, i64);

/// Everything the server keeps in memory, as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub stores: Vec<StoreRow>,
    pub products: Vec<ProductRow>,
    pub riders: Vec<RiderRow>,
    /// Lots with anything on hand or reserved.
    pub lots: Vec<LotSum>,
    /// Orders, oldest first, with their lines.
    pub orders: Vec<OrderRow>,
    /// What open orders hold, from the ledger.
    pub holds: Vec<OrderHold>,
    /// The largest lot id ever used (0 when none).
    pub max_lot_id: i64,
    /// When each order read back that was ever packed was last packed.
    pub packed_at: std::collections::HashMap<String, i64>,
    /// Idempotency keys of finished orders placed within the keys' retention and not in `orders`.
    pub keys: Vec<KeyRow>,
}

/// Which orders [`Db::list_orders`] returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderFilter<'a> {
    pub customer_id: Option<&'a str>,
    pub store_id: Option<&'a str>,
    pub status: Option<&'a str>,
    /// Only orders strictly before this `(created_at, id)`.
    pub before: Option<(i64, &'a str)>,
}

macro_rules! open_statuses {
    () => {
        "('pending_payment', 'confirmed', 'packed', 'assigned', 'picked_up')"
    };
}

/// The statuses of an open order.
const OPEN: &str = open_statuses!();

/// The ids of the orders start-up reads whole: open, or finished and last changed at or after
/// `$1`. A union of two index searches: with an `OR` SQLite's planner, without statistics,
/// scanned `orders`, `order_lines` and `order_events` whole.
const LOADED: &str = concat!(
    "(SELECT id FROM orders WHERE status IN ",
    open_statuses!(),
    " UNION SELECT id FROM orders WHERE updated_at >= $1)"
);

/// The columns `order_row` reads, in its order.
const ORDER_COLUMNS: &str = "id, customer_id, idempotency_key, request_hash, store_id, lat, lng, status, rider_id, \
     eta_minutes, created_at, updated_at, hold_expires_at, payment_status, total_minor, refund_minor, delivery_code, promised_by, delivery_fee_minor";

fn order_row(r: &sqlx::any::AnyRow, lines: Vec<OrderLineRow>) -> Result<OrderRow, DbError> {
    Ok(OrderRow {
        id: r.try_get(0)?,
        customer_id: r.try_get(1)?,
        idempotency_key: r.try_get(2)?,
        request_hash: r.try_get(3)?,
        store_id: r.try_get(4)?,
        lat: r.try_get(5)?,
        lng: r.try_get(6)?,
        status: r.try_get(7)?,
        rider_id: r.try_get(8)?,
        eta_minutes: r.try_get(9)?,
        created_at: r.try_get(10)?,
        updated_at: r.try_get(11)?,
        hold_expires_at: r.try_get(12)?,
        payment_status: r.try_get(13)?,
        total_minor: r.try_get(14)?,
        refund_minor: r.try_get(15)?,
        delivery_code: r.try_get(16)?,
        promised_by: r.try_get(17)?,
        delivery_fee_minor: r.try_get(18)?,
        lines,
    })
}

impl Snapshot {
    /// Keeps only the stock and the orders of the stores `keep` names (the catalog, the riders
    /// and `max_lot_id` stay whole): what a cluster node loads for a region it takes over.
    pub fn retain_stores(&mut self, keep: impl Fn(&str) -> bool) {
        self.lots.retain(|l| keep(&l.store_id));
        self.orders.retain(|o| keep(&o.store_id));
        let kept: std::collections::HashSet<&str> = self.orders.iter().map(|o| o.id.as_str()).collect();
        self.holds.retain(|h| kept.contains(h.order_id.as_str()));
        self.packed_at.retain(|id, _| kept.contains(id.as_str()));
        self.keys.retain(|k| keep(&k.store_id));
    }
}

impl Db {
    /// Reads the catalog back: stores, products and riders (no stock, no orders).
    pub async fn load_catalog(&self) -> Result<Snapshot, DbError> {
        let mut snap = Snapshot::default();
        let stores = sqlx::query("SELECT id, name, lat, lng, timezone, hours, paused_reason FROM stores ORDER BY id");
        for r in stores.fetch_all(&self.pool).await? {
            snap.stores.push(StoreRow {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                lat: r.try_get(2)?,
                lng: r.try_get(3)?,
                timezone: r.try_get(4)?,
                hours: r.try_get(5)?,
                paused: r.try_get(6)?,
            });
        }
        for r in sqlx::query("SELECT sku, name, category, price_minor, low_stock_threshold FROM products ORDER BY sku")
            .fetch_all(&self.pool)
            .await?
        {
            snap.products.push(ProductRow {
                sku: r.try_get(0)?,
                name: r.try_get(1)?,
                category: r.try_get(2)?,
                price_minor: r.try_get(3)?,
                low_stock_threshold: r.try_get(4)?,
            });
        }
        for r in sqlx::query("SELECT id, name, store_id FROM riders ORDER BY id").fetch_all(&self.pool).await? {
            snap.riders.push(RiderRow { id: r.try_get(0)?, name: r.try_get(1)?, store_id: r.try_get(2)? });
        }
        Ok(snap)
    }

    /// Reads the whole state back, every order included.
    pub async fn load(&self) -> Result<Snapshot, DbError> {
        self.load_since(Since::ALL).await
    }

    /// Reads the state back with the orders that are still open and those finished orders last
    /// changed at or after `since.orders` (older ones are read from the database when asked
    /// for), and only the idempotency keys of finished orders placed at or after `since.keys`:
    /// start-up does not grow with the history of finished orders.
    pub async fn load_since(&self, since: Since) -> Result<Snapshot, DbError> {
        let finished_since = since.orders;
        let mut snap = self.load_catalog().await?;
        // Each lot: its sums up to the checkpoint plus the ledger rows after it.
        let checkpoint = crate::write::ledger_checkpoint(&mut *self.pool.acquire().await?).await?;
        // The checkpoint's sums and the ledger rows after it, added up here on SQLite: a `UNION
        // ALL … GROUP BY` there sorted every lot again in a temporary B-tree (a second a start).
        let mut sums: std::collections::HashMap<LotKey, LotTotals> = std::collections::HashMap::new();
        let mut add = |r: sqlx::any::AnyRow| -> Result<(), DbError> {
            let key = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            let (expires_at, on_hand, reserved): LotTotals = (r.try_get(3)?, r.try_get(4)?, r.try_get(5)?);
            let sum = sums.entry(key).or_insert((None, 0, 0));
            // As SQL's MAX: the latest expiry, a missing one ignored.
            sum.0 = sum.0.max(expires_at);
            sum.1 += on_hand;
            sum.2 += reserved;
            Ok(())
        };
        let rows = match self.backend {
            // The checkpoint's rows as they are, and the tail grouped over its id range: SQLite
            // would otherwise walk the ledger through its (store, SKU, lot) index to group it, a
            // row lookup per ledger row (27.8 s for an unsummed 10 M rows).
            crate::Backend::Sqlite => {
                let mut rows = sqlx::query("SELECT store_id, sku, lot_id, expires_at, on_hand, reserved FROM lot_sums")
                    .fetch_all(&self.pool)
                    .await?;
                rows.extend(
                    sqlx::query(
                        "SELECT store_id, sku, lot_id, MAX(expires_at), CAST(SUM(d_on_hand) AS BIGINT), \
                         CAST(SUM(d_reserved) AS BIGINT) FROM stock_ledger NOT INDEXED WHERE id > $1 \
                         GROUP BY store_id, sku, lot_id",
                    )
                    .bind(checkpoint)
                    .fetch_all(&self.pool)
                    .await?,
                );
                rows
            }
            // PostgreSQL groups both at once: over the union it never walks the ledger's index
            // (grouping the ledger alone did: 30 s for an unsummed 10 M rows against 3 s).
            crate::Backend::Postgres => {
                sqlx::query(
                    "SELECT store_id, sku, lot_id, MAX(expires_at), CAST(SUM(on_hand) AS BIGINT), CAST(SUM(reserved) AS BIGINT) \
                     FROM (SELECT store_id, sku, lot_id, expires_at, on_hand, reserved FROM lot_sums \
                           UNION ALL \
                           SELECT store_id, sku, lot_id, expires_at, d_on_hand, d_reserved FROM stock_ledger WHERE id > $1) AS t \
                     GROUP BY store_id, sku, lot_id",
                )
                .bind(checkpoint)
                .fetch_all(&self.pool)
                .await?
            }
        };
        for r in rows {
            add(r)?;
        }
        let mut lots: Vec<LotSum> = sums
            .into_iter()
            .map(|((store_id, sku, lot_id), (expires_at, on_hand, reserved))| LotSum {
                store_id,
                sku,
                lot_id,
                expires_at,
                on_hand,
                reserved,
            })
            .collect();
        lots.sort_unstable_by(|a, b| (a.lot_id, &a.store_id, &a.sku).cmp(&(b.lot_id, &b.store_id, &b.sku)));
        for lot in lots {
            snap.max_lot_id = snap.max_lot_id.max(lot.lot_id);
            if lot.on_hand != 0 || lot.reserved != 0 {
                snap.lots.push(lot);
            }
        }
        let mut lines: std::collections::HashMap<String, Vec<OrderLineRow>> = std::collections::HashMap::new();
        for r in sqlx::query(&format!(
            "SELECT l.order_id, l.sku, l.qty, l.price_minor FROM order_lines l \
             WHERE l.order_id IN {LOADED} ORDER BY l.order_id, l.line_no"
        ))
        .bind(finished_since)
        .fetch_all(&self.pool)
        .await?
        {
            let order_id: String = r.try_get(0)?;
            lines.entry(order_id).or_default().push(OrderLineRow {
                sku: r.try_get(1)?,
                qty: r.try_get(2)?,
                price_minor: r.try_get(3)?,
            });
        }
        for r in
            sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM orders o WHERE o.id IN {LOADED} ORDER BY created_at, id"))
                .bind(finished_since)
                .fetch_all(&self.pool)
                .await?
        {
            let id: String = r.try_get(0)?;
            let order_lines = lines.remove(&id).unwrap_or_default();
            snap.orders.push(order_row(&r, order_lines)?);
        }
        for r in sqlx::query(
            "SELECT l.order_id, l.sku, l.lot_id, MAX(l.expires_at), CAST(SUM(l.d_reserved) AS BIGINT) \
             FROM stock_ledger l JOIN orders o ON o.id = l.order_id \
             WHERE o.status IN ('pending_payment', 'confirmed', 'packed', 'assigned') \
             GROUP BY l.order_id, l.sku, l.lot_id HAVING SUM(l.d_reserved) > 0 ORDER BY l.order_id, l.lot_id",
        )
        .fetch_all(&self.pool)
        .await?
        {
            snap.holds.push(OrderHold {
                order_id: r.try_get(0)?,
                sku: r.try_get(1)?,
                lot_id: r.try_get(2)?,
                expires_at: r.try_get(3)?,
                reserved: r.try_get(4)?,
            });
        }
        for r in sqlx::query(&format!(
            "SELECT e.order_id, MAX(e.ts) FROM order_events e \
             WHERE e.status = 'packed' AND e.order_id IN {LOADED} GROUP BY e.order_id"
        ))
        .bind(finished_since)
        .fetch_all(&self.pool)
        .await?
        {
            snap.packed_at.insert(r.try_get(0)?, r.try_get(1)?);
        }
        // The orders not in LOADED among those placed within the keys' retention.
        for r in sqlx::query(&format!(
            "SELECT customer_id, idempotency_key, request_hash, id, store_id, created_at FROM {} \
             WHERE o.created_at >= $1 AND o.updated_at < $2 AND o.status NOT IN {OPEN}",
            crate::write::orders_by_created(self.backend == crate::Backend::Sqlite)
        ))
        .bind(since.keys)
        .bind(finished_since)
        .fetch_all(&self.pool)
        .await?
        {
            snap.keys.push(KeyRow {
                customer_id: r.try_get(0)?,
                idempotency_key: r.try_get(1)?,
                request_hash: r.try_get(2)?,
                order_id: r.try_get(3)?,
                store_id: r.try_get(4)?,
                created_at: r.try_get(5)?,
            });
        }
        Ok(snap)
    }

    /// One order with its lines, as stored.
    pub async fn order(&self, id: &str) -> Result<Option<OrderRow>, DbError> {
        let Some(r) = sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let mut lines = Vec::new();
        for l in sqlx::query("SELECT sku, qty, price_minor FROM order_lines WHERE order_id = $1 ORDER BY line_no")
            .bind(id)
            .fetch_all(&self.pool)
            .await?
        {
            lines.push(OrderLineRow { sku: l.try_get(0)?, qty: l.try_get(1)?, price_minor: l.try_get(2)? });
        }
        Ok(Some(order_row(&r, lines)?))
    }

    /// Orders newest first (by placement time, then id), at most `limit`, filtered by customer,
    /// store and status when given, strictly before the cursor `(created_at, id)` when given.
    pub async fn list_orders(&self, filter: &OrderFilter<'_>, limit: i64) -> Result<Vec<OrderRow>, DbError> {
        let mut sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if filter.customer_id.is_some() {
            sql.push_str(&format!(" AND customer_id = {}", next()));
        }
        if filter.store_id.is_some() {
            sql.push_str(&format!(" AND store_id = {}", next()));
        }
        if filter.status.is_some() {
            sql.push_str(&format!(" AND status = {}", next()));
        }
        if filter.before.is_some() {
            let (a, b, c) = (next(), next(), next());
            sql.push_str(&format!(" AND (created_at < {a} OR (created_at = {b} AND id < {c}))"));
        }
        sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT {}", next()));
        let mut q = sqlx::query(&sql);
        if let Some(c) = filter.customer_id {
            q = q.bind(c);
        }
        if let Some(s) = filter.store_id {
            q = q.bind(s);
        }
        if let Some(s) = filter.status {
            q = q.bind(s);
        }
        if let Some((at, id)) = filter.before {
            q = q.bind(at).bind(at).bind(id);
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get(0)?;
            let mut lines = Vec::new();
            for l in sqlx::query("SELECT sku, qty, price_minor FROM order_lines WHERE order_id = $1 ORDER BY line_no")
                .bind(&id)
                .fetch_all(&self.pool)
                .await?
            {
                lines.push(OrderLineRow { sku: l.try_get(0)?, qty: l.try_get(1)?, price_minor: l.try_get(2)? });
            }
            out.push(order_row(r, lines)?);
        }
        Ok(out)
    }

    /// Units ordered per store, SKU and day (days since the epoch, UTC) by orders placed at or
    /// after `since` (ms; a day rolled up counts whole), each line counting at most
    /// [`crate::MAX_UNITS_PER_LINE`] units: (store, sku, day, units). Days rolled up
    /// (`Write::RollUp`) are read from `units_by_day`, the days after them summed from the orders.
    pub async fn units_per_day_since(&self, since: i64) -> Result<Vec<(String, String, i64, i64)>, DbError> {
        let mut conn = self.pool.acquire().await?;
        let since_day = since.div_euclid(crate::write::DAY_MS);
        // Whole days rolled up by the commit task, then the orders of the days after them.
        let rolled = crate::write::rolled_up_to(&mut conn).await?.unwrap_or(since_day).max(since_day);
        let mut out: Vec<(String, String, i64, i64)> = Vec::new();
        for r in sqlx::query("SELECT store_id, sku, day, units FROM units_by_day WHERE day >= $1 AND day < $2")
            .bind(since_day)
            .bind(rolled)
            .fetch_all(&mut *conn)
            .await?
        {
            out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
        }
        let from = since.max(rolled.saturating_mul(crate::write::DAY_MS));
        for r in sqlx::query(&format!(
            "SELECT o.store_id, l.sku, o.created_at / 86400000 AS day, \
             CAST(SUM(CASE WHEN l.qty > $2 THEN $2 WHEN l.qty < 0 THEN 0 ELSE l.qty END) AS BIGINT) \
             FROM {} JOIN order_lines l ON l.order_id = o.id WHERE o.created_at >= $1 \
             GROUP BY o.store_id, l.sku, o.created_at / 86400000",
            crate::write::orders_by_created(self.backend == crate::Backend::Sqlite)
        ))
        .bind(from)
        .bind(crate::write::MAX_UNITS_PER_LINE)
        .fetch_all(&mut *conn)
        .await?
        {
            out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
        }
        Ok(out)
    }

    /// A store's orders per hour (hours since the epoch) placed at or after `since` (ms):
    /// (hour, orders), hours without orders left out. For the demand forecast.
    pub async fn orders_per_hour(&self, store_id: &str, since: i64) -> Result<Vec<(i64, i64)>, DbError> {
        let rows = sqlx::query(
            "SELECT created_at / 3600000 AS hour, COUNT(*) FROM orders WHERE store_id = $1 AND created_at >= $2 \
             GROUP BY created_at / 3600000",
        )
        .bind(store_id)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// The status history of an order, oldest first: (status, rider, ts).
    pub async fn order_events(&self, order_id: &str) -> Result<Vec<(String, Option<String>, i64)>, DbError> {
        let rows = sqlx::query("SELECT status, rider_id, ts FROM order_events WHERE order_id = $1 ORDER BY id")
            .bind(order_id)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
    }

    /// The payment history of an order, oldest first: (status, payment status, ts). Events
    /// written before payments were recorded have no payment status.
    pub async fn payment_events(&self, order_id: &str) -> Result<Vec<(String, Option<String>, i64)>, DbError> {
        let rows = sqlx::query("SELECT status, payment_status, ts FROM order_events WHERE order_id = $1 ORDER BY id")
            .bind(order_id)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
    }

    /// Per (store, sku): on-hand and reserved summed over the whole ledger, for audits.
    pub async fn ledger_totals(&self) -> Result<Vec<(String, String, i64, i64)>, DbError> {
        let rows = sqlx::query(
            "SELECT store_id, sku, CAST(SUM(d_on_hand) AS BIGINT), CAST(SUM(d_reserved) AS BIGINT) \
             FROM stock_ledger GROUP BY store_id, sku ORDER BY store_id, sku",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).collect()
    }
}
