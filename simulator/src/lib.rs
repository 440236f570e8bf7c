//! darkstore-sim: the load simulator and the MDRP replay, as a library so that `darkstore demo`
//! can run the city in-process.
//!
//! - [`city`]: a living city driving a running server over its real interfaces: riders over MQTT,
//!   customers over HTTP and WebSocket, staff packing and restocking.
//! - [`mdrp`]: Meal Delivery Routing Problem replay through darkstore's dispatch crate.
//! - [`forecast`]: the demand forecast's backtest on simulated weeks.

pub mod city;
pub mod forecast;
pub mod mdrp;
