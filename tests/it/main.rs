//! Integration tests: one binary, one PostgreSQL server, a database per test.

mod support;

mod api;
mod pipeline;
mod processes;
mod store;
