//! The pure geo-inventory core of darkstore.
//!
//! Nothing here knows about tokio, HTTP or a database, and nothing reads a clock: time is the
//! `now` argument (unix milliseconds), so the real-time server and a simulated-time replay run the
//! same code. Every type is a plain single-owner value; the server decides how to share it.
//!
//! - [`travel`]: the travel model that turns a distance into minutes to the customer's door.
//! - [`area`]: which dark stores reach which H3 cells within the promise, partitioned by a coarse
//!   parent cell ([`area::PartitionKey`]), and the best store for a point.
//! - [`stock`]: a store's stock lines made of lots (with optional expiry), all-or-nothing
//!   reservations that allocate the first-expiring lot first, and the ledger deltas every change
//!   produces.
//! - [`order`]: the order lifecycle and which transitions it allows.
//! - [`ids`]: validation of client-chosen ids.
//! - [`quote`]: the quote of an order placed now, from a snapshot of the store.
//! - [`calibrate`]: bounded estimators that correct the priors from what is observed.
//! - [`surge`]: the delivery fee by supply and demand, with hysteresis.
//! - [`forecast`]: expected orders per hour per store, and the riders they need.
//! - [`hours`]: a store's opening hours in its own time zone.
//! - [`search`]: product search by name (word prefixes, small typos).
//! - [`sku`]: SKUs interned once for the process (a stock line holds an 8-byte pointer).

pub mod area;
pub mod calibrate;
pub mod forecast;
pub mod hours;
pub mod ids;
pub mod order;
pub mod quote;
pub mod search;
pub mod sku;
pub mod stock;
pub mod surge;
pub mod travel;

/// Unix time in milliseconds: the only notion of time in the core.
pub type Millis = i64;
