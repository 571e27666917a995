//! event-manager: Kafka → message selector → change detection → EventDB (PostgreSQL).
//!
//! The module tree follows the data flow of docs/architecture.md ("Data flow"): [`formats`]
//! decode messages into [`model::Observation`]s, the topic's selector filters them, [`detect`]
//! finds real status changes, [`store`] writes them exactly once, and [`api`] serves them.
#![deny(rust_2018_idioms, unreachable_pub, missing_docs)]

/// Every binary built on this library (the service, its tests and its benchmarks) allocates
/// with mimalloc. Decoding a message and writing an API response make many small, short-lived
/// allocations, and the glibc allocator spent a fifth of the API's own CPU time on them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod api;
pub mod app;
pub mod broker;
pub mod cli;
pub mod config;
pub mod demo;
pub mod detect;
pub mod error_report;
pub mod formats;
pub mod health;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod replay;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod terminator;
