//! Test harness: a PostgreSQL server for the whole test binary (`DATABASE_URL` when set, else a
//! private cluster started from the installed binaries) and a fresh database per test, so tests
//! run in parallel without seeing each other.

#![allow(dead_code)]

pub mod kafka;

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
    /// The sum of the stored next offsets of every group: how many messages are accounted for.
    pub async fn stored_offsets_total(&self) -> i64 {
        self.client()
            .await
            .query_one(
                "SELECT COALESCE(SUM(next_offset), 0)::bigint FROM consumer_offsets",
                &[],
            )
            .await
            .expect("read consumer_offsets")
            .get(0)
    }

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
        url: url.parse().expect("the test database's URL"),
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

/// Waits until `condition` holds, polling, or panics at the deadline.
pub async fn wait_for<F, Fut>(deadline: std::time::Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + deadline;
    loop {
        if condition().await {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "condition not met within {deadline:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A TCP proxy in front of PostgreSQL that can simulate an outage: while down it refuses new
/// connections and cuts the open ones.
pub struct TcpProxy {
    addr: std::net::SocketAddr,
    target_url: String,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl TcpProxy {
    /// Starts a proxy to the server of `database_url`.
    pub async fn start(database_url: &str) -> Self {
        use std::sync::atomic::Ordering;
        let url: url::Url = database_url.parse().unwrap();
        let target = format!(
            "{}:{}",
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(5432)
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let flag = down.clone();
        let cuts = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let mut cut_rx = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            target_url: database_url.to_owned(),
            down,
            cut,
        }
    }

    /// The database URL through the proxy.
    pub fn url(&self) -> String {
        let mut url: url::Url = self.target_url.parse().unwrap();
        url.set_port(Some(self.addr.port())).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.to_string()
    }

    /// Starts or ends the outage.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
        if down {
            self.cut.send_modify(|g| *g += 1);
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a child process to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Rows of the three count tables that a recount of `events` does not give (`missing`), and
/// the reverse (`extra`), each named by its table; at most ten per table.
pub async fn counts_unlike_a_recount(client: &tokio_postgres::Client) -> Vec<String> {
    let origin = "TIMESTAMPTZ '2001-01-01 00:00:00+00'";
    let value_keys = "FROM events r, LATERAL event_value_keys(r.event_time, r.event_type, \
                      r.entity_type, r.properties) k WHERE k.counted GROUP BY 1, 2, 3, 4, 5";
    let mut differ = Vec::new();
    for (table, recount) in [
        (
            "event_counts",
            "SELECT k.kind, k.attribute, k.bucket, k.event_type, k.entity_type, count(*) \
               FROM events r, LATERAL event_count_keys(r.event_time, r.event_type, \
                                                       r.entity_type, r.properties) k \
              GROUP BY 1, 2, 3, 4, 5"
                .to_owned(),
        ),
        (
            "event_value_counts",
            format!(
                "SELECT k.attribute, k.value, k.bucket, k.event_type, k.entity_type, count(*) \
                 {value_keys}"
            ),
        ),
        (
            "event_value_counts_10min",
            format!(
                "SELECT k.attribute, k.value, date_bin('10 minutes', k.bucket, {origin}), \
                        k.event_type, k.entity_type, count(*) {value_keys}"
            ),
        ),
    ] {
        let rows = client
            .query(
                &format!(
                    "SELECT '{table} ' || d::text FROM ( \
                       SELECT 'missing', * FROM (({recount}) EXCEPT ALL SELECT * FROM {table}) e \
                       UNION ALL \
                       SELECT 'extra', * FROM (SELECT * FROM {table} EXCEPT ALL ({recount})) t) d \
                     LIMIT 10"
                ),
                &[],
            )
            .await
            .unwrap();
        differ.extend(rows.iter().map(|row| row.get::<_, String>(0)));
    }
    differ
}

/// A SQL expression for a UUID v7 of the millisecond of the `timestamptz` expression `at`,
/// random in its other bits: an event id as the store makes it, for rows the tests write
/// themselves (the terminator reads insertion time from the ids).
pub fn v7_sql(at: &str) -> String {
    format!(
        "encode(set_byte(overlay(uuid_send(gen_random_uuid()) \
             placing substring(int8send((extract(epoch FROM {at}) * 1000)::bigint) FROM 3) \
             FROM 1 FOR 6), 6, 112 + (random() * 15)::int), 'hex')::uuid"
    )
}
