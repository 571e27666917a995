//! Integration tests: one binary, one PostgreSQL server (a database per test) and one Apache
//! Kafka broker (topics and groups per test).

mod support;

mod api;
mod cli;
mod console;
mod fhir_lookup;
mod formats;
mod hardening;
mod ops_cli;
mod pipeline;
mod processes;
mod real_kafka;
mod replay;
mod schemathesis;
mod store;
mod terminator;
mod tls_kafka;
mod tls_postgres;
mod topology;
mod webhooks;
