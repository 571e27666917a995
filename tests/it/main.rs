//! Integration tests: one binary, one PostgreSQL server, a database per test.

mod support;

mod api;
mod cli;
mod fhir_lookup;
mod formats;
mod pipeline;
mod processes;
mod replay;
mod schemathesis;
mod store;
mod terminator;
mod webhooks;
