//! Test harness: a PostgreSQL server for the whole test binary (`DATABASE_URL` when set, else a
//! private cluster started from the installed binaries) and a fresh database per test, so tests
//! run in parallel without seeing each other.

#![allow(dead_code)]

use std::sync::OnceLock;

use event_manager::config::DatabaseConfig;
use event_manager::store::{EventStore, LocalPostgres};

enum Server {
    External(String),
    Local(LocalPostgres),
}

static SERVER: OnceLock<Server> = OnceLock::new();

fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Server::External(url),
        _ => {
            Server::Local(LocalPostgres::start().expect("start a private PostgreSQL for the tests"))
        }
    })
}

fn url_for(database: &str) -> String {
    match server() {
        Server::External(url) => {
            let mut config: url::Url = url.parse().expect("DATABASE_URL is a URL");
            config.set_path(&format!("/{database}"));
            config.to_string()
        }
        Server::Local(pg) => pg.url(database),
    }
}

/// A database of its own for one test, migrated, with a store connected to it.
pub struct TestDatabase {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Database settings pointing at it.
    pub config: DatabaseConfig,
    /// A store connected to it.
    pub store: EventStore,
}

impl TestDatabase {
    /// A plain client, for assertions.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(conn);
        client
    }
}

/// Creates and migrates a fresh database.
pub async fn fresh_database() -> TestDatabase {
    let admin_url = url_for("postgres");
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let (admin, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create the test database");
    let url = url_for(&name);
    let config = DatabaseConfig {
        url: url.clone(),
        pool_size: 8,
        ..DatabaseConfig::default()
    };
    let store = EventStore::connect(&config).expect("pool");
    store.migrate().await.expect("migrate");
    TestDatabase {
        name,
        url,
        config,
        store,
    }
}
