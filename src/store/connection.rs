//! The connection pools: every connection of the binary to the EventDB is made here, over TLS
//! as the URL's `sslmode` says ([`super::tls`]).

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{tls, transient_pg_error, DatabaseConfig, EventStore, StoreError};

impl EventStore {
    /// Builds the connection pools (connections are opened lazily): one for ingestion, the
    /// terminator and migrations, one of the same size for the query API. Every connection of
    /// the binary is made here, over TLS as the URL's `sslmode` says ([`tls`]).
    pub fn connect(config: &DatabaseConfig) -> Result<Self, StoreError> {
        let mut pg = config.url.postgres().clone();
        let tls = tls::connector(config.url.tls())
            .map_err(|e| StoreError::Config(format!("database.url: {e}")))?;
        pg.connect_timeout(config.connect_timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("event-manager");
        }
        // JIT compilation is off: the estimated costs of range queries cross jit_above_cost,
        // and compiling them takes far longer than running them (measured: 100 ms per API
        // request). Settings in the URL's `options` win.
        let options = with_default_setting(pg.get_options().unwrap_or_default(), "jit", "off");
        pg.options(&options);
        let pool = build_pool(pg.clone(), tls.clone(), config)?;
        // The API's sessions: the settings its statements are written for. Ingestion keeps the defaults:
        // its array-driven statements are faster with plans for their values (measured:
        // 15-20 % more messages/s).
        let api_options = super::event_queries::API_SESSION_SETTINGS
            .iter()
            .fold(options, |options, (name, value)| {
                with_default_setting(&options, name, value)
            });
        pg.options(&api_options);
        let api_pool = build_pool(pg, tls, config)?;
        Ok(Self { pool, api_pool })
    }

    /// A connection of the query API's pool.
    pub(crate) async fn api_client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        checkout(&self.api_pool).await
    }

    /// A connection of the ingestion pool (also the terminator's and the migrations').
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        checkout(&self.pool).await
    }

    /// Each pool by the name its metrics carry (`ingest`, `api`) with its current size,
    /// idle connections and waiting callers.
    pub(crate) fn pool_statuses(&self) -> [(&'static str, deadpool_postgres::Status); 2] {
        [
            ("ingest", self.pool.status()),
            ("api", self.api_pool.status()),
        ]
    }

    /// The connections one process may hold open at once: both pools' upper bounds.
    pub fn max_connections(&self) -> usize {
        self.pool.status().max_size + self.api_pool.status().max_size
    }

    /// Closes both pools: idle connections now, busy ones when they are returned.
    pub fn close(&self) {
        self.pool.close();
        self.api_pool.close();
    }

    /// Whether a connection of each pool (ingestion, API) is encrypted, as the server sees it
    /// (`pg_stat_ssl`).
    pub async fn connections_encrypted(&self) -> Result<[bool; 2], StoreError> {
        let mut encrypted = [false; 2];
        for (answer, client) in encrypted
            .iter_mut()
            .zip([self.client().await?, self.api_client().await?])
        {
            let row = client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await?;
            *answer = row.get(0);
        }
        Ok(encrypted)
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}

/// `options` (a libpq `-c name=value …` string) with `name` set to `value` unless it sets
/// `name` already.
fn with_default_setting(options: &str, name: &str, value: &str) -> String {
    if options.contains(name) {
        options.to_owned()
    } else {
        format!("{options} -c {name}={value}").trim().to_owned()
    }
}

async fn checkout(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
    pool.get().await.map_err(|e| {
        let message = crate::error_report::describe(&e);
        StoreError::Pool {
            // A TLS failure is named in terms of the URL's parameters (see tls::explain).
            message: match tls::explain(&message) {
                Some(why) => format!("{why} ({message})"),
                None => message,
            },
            transient: match &e {
                deadpool_postgres::PoolError::Backend(pg) => transient_pg_error(pg),
                _ => true,
            },
        }
    })
}

fn build_pool(
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    config: &DatabaseConfig,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        pg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size)
        .wait_timeout(Some(config.connect_timeout))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.connect_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Config(e.to_string()))
}
