//! event-manager: Kafka → message selector → change detection → EventDB (PostgreSQL).
//!
//! The module tree follows the data flow of docs/architecture.md ("Data flow"): [`formats`]
//! decode messages into [`model::Observation`]s, the topic's selector filters them, [`detect`]
//! finds real status changes, [`store`] writes them exactly once, and [`api`] serves them.
#![deny(rust_2018_idioms, unreachable_pub, missing_docs)]

pub mod api;
pub mod app;
pub mod broker;
pub mod config;
mod config_error;
pub mod demo;
pub mod detect;
pub mod error_report;
pub mod formats;
pub mod health;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod replay;
mod retry;
mod secret;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod terminator;
pub mod time;
