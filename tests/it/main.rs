//! Integration tests: one binary, one PostgreSQL server, a database per test.

mod support;

mod cli;
mod formats;
mod fhir_lookup;
mod pipeline;
mod processes;
mod replay;
mod store;
mod terminator;
mod webhooks;
