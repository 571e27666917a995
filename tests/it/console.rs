//! The operator console end to end in headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `.ci/run` installs), driven over WebDriver: the whole application
//! on the real broker, a token in the link's fragment, the events list filtered, paged and
//! expanded, lag and dead letters following messages produced while the consumer stops and
//! starts, the terminator's run, a phone-sized screen, and the login prompt without a token.
//! `demo`'s printed link is opened as a user would. Each step leaves a screenshot in
//! `target/test-artifacts/console/`.
//!
//! A missing browser or driver fails the tests naming the package to install; nothing is
//! skipped. `EM_CHROMIUM` and `EM_CHROMEDRIVER` point at other binaries.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use event_manager::api::{self, auth::mint_token};
use event_manager::app::App;
use event_manager::config::Config;
use event_manager::pipeline::{self, PipelineHandle};
use event_manager::terminator::Terminator;
use fantoccini::{Client, ClientBuilder, Locator};
use rdkafka::producer::FutureProducer;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::pipeline::{esoz, setup, Setup};
use crate::support::free_port;

const SECRET: &str = "console-test-secret-0123456789abcdef";
/// How long the page may take to show what the server has (it refreshes every 5 s).
const PATIENCE: Duration = Duration::from_secs(60);

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-artifacts")
        .join("console");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts/console");
    dir
}

/// The binary `variable` names, else `default`; a clear failure when it is not there.
fn installed(variable: &str, default: &str, package: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(variable).unwrap_or_else(|_| default.to_owned()));
    assert!(
        path.is_file(),
        "{} not found: the console tests drive headless Chromium through its WebDriver \
         (Debian/Ubuntu: apt-get install {package}; .ci/run installs chromium and \
         chromium-driver), or set {variable} to the binary",
        path.display(),
    );
    path
}

/// A chromedriver of this test's own and a Chromium session through it.
struct Browser {
    client: Client,
    driver: Child,
    name: &'static str,
    step: u32,
}

impl Browser {
    async fn start(name: &'static str) -> Self {
        let chromium = installed("EM_CHROMIUM", "/usr/bin/chromium", "chromium");
        let chromedriver = installed(
            "EM_CHROMEDRIVER",
            "/usr/bin/chromedriver",
            "chromium-driver",
        );
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let until = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < until,
                "chromedriver did not listen on port {port} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1100",
                         "--lang=en-US"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session through chromedriver");
        Self {
            client,
            driver,
            name,
            step: 0,
        }
    }

    /// Saves a screenshot of the window as `<test>-<n>-<what>.png`.
    async fn screenshot(&mut self, what: &str) -> PathBuf {
        self.step += 1;
        let png = self.client.screenshot().await.expect("screenshot");
        let path = artifacts().join(format!("{}-{:02}-{what}.png", self.name, self.step));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// What the page shows, read from the DOM in one go.
    async fn page(&self) -> Value {
        self.client
            .execute(PAGE_STATE, vec![])
            .await
            .expect("read the page's state")
    }

    /// Waits until `condition` holds for the page's state, or panics with the last state.
    async fn wait_for(&self, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + PATIENCE;
        loop {
            let state = self.page().await;
            if condition(&state) {
                return state;
            }
            assert!(
                Instant::now() < until,
                "the console did not show {what} within {PATIENCE:?}; it shows:\n{state:#}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    async fn type_into(&self, css: &str, text: &str) {
        let field = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        field.clear().await.expect("clear the field");
        field.send_keys(text).await.expect("type into the field");
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The page's state as JSON: which parts are visible, the rows of each table as text.
const PAGE_STATE: &str = r#"
const rows = (css) => [...document.querySelectorAll(css)].map(
  (r) => [...r.cells].map((c) => c.textContent.trim()));
const text = (id) => (document.getElementById(id) || {}).textContent || '';
const visible = (id) => !document.getElementById(id).hidden;
return {
  url: window.location.href,
  login: visible('login'),
  console: visible('console'),
  loginError: visible('login-error') ? text('login-error') : '',
  events: rows('#events-table tbody tr.event').map((r) => r.slice(1)),
  expanded: rows('#events-table tbody tr.detail:not([hidden]) .properties tbody tr'),
  pageInfo: text('page-info'),
  eventsWindow: text('events-window'),
  eventsError: visible('events-error') ? text('events-error') : '',
  lag: rows('#lag-table tbody tr[data-partition]'),
  lagTotal: rows('#lag-total')[0] || [],
  lagError: visible('lag-error') ? text('lag-error') : '',
  reasons: rows('#dlq-reasons tbody tr[data-reason]'),
  latestDeadLetters: rows('#dlq-latest tbody tr').filter((r) => r.length === 4),
  dlqError: visible('dlq-error') ? text('dlq-error') : '',
  terminator: Object.fromEntries([...document.querySelectorAll('#terminator-facts dd')]
    .map((d) => [d.dataset.fact, d.textContent])),
  suggestions: [...document.querySelectorAll('#entity-types option')].map((o) => o.value),
  apiRequests: performance.getEntriesByType('resource')
    .filter((e) => new URL(e.name).pathname.startsWith('/api/')).length,
  overflow: document.documentElement.scrollWidth - window.innerWidth,
};
"#;

fn strings(value: &Value) -> Vec<Vec<String>> {
    value
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.as_array()
                        .map(|cells| {
                            cells
                                .iter()
                                .map(|c| c.as_str().unwrap_or_default().to_owned())
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The cells of the lag table's total line: `Total`, stored, -, -, log end, lag, messages/s, -.
fn total_row(page: &Value) -> Vec<String> {
    strings(&json!([page["lagTotal"]])).remove(0)
}

/// The number a cell shows (`1,234` → 1234); `None` for `–`.
fn number(cell: &str) -> Option<i64> {
    cell.replace(',', "").parse().ok()
}

/// The whole application on the real broker, its consumer started and stopped by the test.
struct Console {
    setup: Setup,
    app: App,
    addr: SocketAddr,
    token: String,
    server_stop: CancellationToken,
    consumer: Option<(PipelineHandle, CancellationToken)>,
    producer: FutureProducer,
}

impl Console {
    async fn start() -> Self {
        let setup = setup().await;
        let mut config: Config = setup.config(&setup.db.url);
        config.auth.hs256_secret = Some(SECRET.into());
        let app = App::build(config).expect("app");
        app.migrate(&CancellationToken::new())
            .await
            .expect("migrate");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_stop = CancellationToken::new();
        tokio::spawn(api::serve(listener, app.router(), server_stop.clone()));
        let token = mint_token(
            &app.config.auth,
            &["event:read".into()],
            Duration::from_secs(3600),
            "operator",
        )
        .unwrap();
        let producer = setup.producer();
        let mut console = Self {
            setup,
            app,
            addr,
            token,
            server_stop,
            consumer: None,
            producer,
        };
        console.start_consumer();
        console
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn start_consumer(&mut self) {
        let stop = CancellationToken::new();
        let handle = pipeline::start(
            &self.app.config,
            self.app.rules.clone(),
            self.app.store.clone(),
            self.app.pipeline_metrics.clone(),
            self.app.readiness.clone(),
            stop.clone(),
        )
        .expect("pipeline");
        self.consumer = Some((handle, stop));
    }

    async fn stop_consumer(&mut self) {
        if let Some((handle, stop)) = self.consumer.take() {
            stop.cancel();
            tokio::time::timeout(Duration::from_secs(30), handle.stopped())
                .await
                .expect("the consumer stops within 30 s");
        }
    }

    /// `changes` ESOZ status changes of `entity_type` (entities `<prefix>-<n>`, one event each),
    /// spread over the partitions.
    async fn produce_changes(&self, entity_type: &str, prefix: &str, changes: usize) {
        let now = Utc::now();
        for n in 0..changes {
            let id = format!("{prefix}-{n:03}");
            let time = now - chrono::Duration::seconds(120 - n as i64);
            let body = esoz(entity_type, &id, &json!("APPROVED"), time, None);
            self.setup
                .produce(&self.producer, (n % 3) as i32, Some(&id), &body)
                .await;
        }
    }

    /// Messages that cannot be decoded: `invalid_encoding` unless `missing_field`.
    async fn produce_bad(&self, count: usize, missing_field: bool) {
        for n in 0..count {
            let body: &[u8] = if missing_field {
                br#"{"event_type": "StatusChangeEvent"}"#
            } else {
                b"\x00 this is not an ESOZ event"
            };
            self.setup
                .produce(&self.producer, 3 + (n % 2) as i32, None, body)
                .await;
        }
    }

    /// Waits until the group has stored positions past `messages` messages.
    async fn wait_stored(&self, messages: i64) {
        crate::support::wait_for(PATIENCE, || async {
            self.setup.db.stored_offsets_total().await >= messages
        })
        .await;
    }

    /// Requests the server answered on routes under `/api/`.
    fn api_requests(&self) -> u64 {
        self.app
            .registry
            .gather()
            .iter()
            .filter(|f| f.name() == "event_manager_http_request_duration_seconds")
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "route" && l.value().starts_with("/api/"))
            })
            .map(|m| m.get_histogram().get_sample_count())
            .sum()
    }

    async fn stop(mut self) {
        self.stop_consumer().await;
        self.server_stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_events_lag_dead_letters_and_the_terminator() {
    let mut console = Console::start().await;
    console.produce_changes("EmployeeRequest", "er", 30).await;
    console.produce_changes("Declaration", "decl", 12).await;
    console.produce_bad(2, false).await;
    console.produce_bad(1, true).await;
    console.wait_stored(45).await;

    let mut browser = Browser::start("console").await;
    browser
        .client
        .goto(&console.url(&format!("/console#token={}", console.token)))
        .await
        .expect("open the console");

    // Loaded with the token from the fragment, which leaves the address bar at once.
    let page = browser
        .wait_for("the events of the last hour", |p| {
            p["events"].as_array().is_some_and(|e| e.len() == 25)
        })
        .await;
    assert_eq!(page["login"], false);
    assert!(
        !page["url"].as_str().unwrap().contains("token"),
        "the token stays out of the address bar: {}",
        page["url"]
    );
    assert_eq!(page["pageInfo"], "Page 1 of 2");
    assert!(page["eventsWindow"]
        .as_str()
        .unwrap()
        .starts_with("42 events"));

    // Lag: every partition caught up; dead letters by reason.
    let page = browser
        .wait_for("the group caught up and three dead letters", |p| {
            let total = total_row(p);
            total.get(1).and_then(|c| number(c)) == Some(45)
                && total.get(5).and_then(|c| number(c)) == Some(0)
                && p["reasons"].as_array().is_some_and(|r| r.len() == 2)
                && p["suggestions"].as_array().is_some_and(|s| s.len() == 2)
        })
        .await;
    assert_eq!(
        strings(&page["reasons"]),
        [
            vec!["invalid_encoding".to_owned(), "2".to_owned()],
            vec!["missing_field".to_owned(), "1".to_owned()]
        ]
    );
    let lag = strings(&page["lag"]);
    assert_eq!(lag.len(), 6, "one row per partition: {lag:?}");
    for row in &lag {
        assert_eq!(row[0], console.setup.topic);
        assert_eq!(number(&row[6]), Some(0), "no lag: {row:?}");
        // A partition no message went to has no stored position (`–`) and an empty log.
        assert!(
            row[2] == row[5] || (row[2] == "–" && row[5] == "0"),
            "stored = log end: {row:?}"
        );
    }
    let latest = strings(&page["latestDeadLetters"]);
    assert_eq!(latest.len(), 3, "{latest:?}");
    assert!(latest
        .iter()
        .all(|r| r[1].starts_with(&console.setup.topic) && !r[3].contains("not an ESOZ")));
    assert_eq!(
        page["suggestions"],
        json!(["Declaration", "EmployeeRequest"])
    );
    browser.screenshot("loaded").await;

    // Filter by entity type, 10 per page: 12 declarations on two pages.
    browser
        .type_into("#filters input[name=entity_type]", "Declaration")
        .await;
    browser
        .client
        .find(Locator::Css("#filters select[name=page_size]"))
        .await
        .unwrap()
        .select_by_value("10")
        .await
        .unwrap();
    browser.click("#filters button[type=submit]").await;
    let page = browser
        .wait_for("the declarations, page 1 of 2", |p| {
            p["pageInfo"] == "Page 1 of 2" && p["events"].as_array().is_some_and(|e| e.len() == 10)
        })
        .await;
    let events = strings(&page["events"]);
    assert!(events.iter().all(|e| e[2] == "Declaration"), "{events:?}");
    assert_eq!(events[0][3], "decl-000", "oldest first: {events:?}");
    browser.screenshot("filtered").await;

    browser.click("#next-page").await;
    let page = browser
        .wait_for("page 2 of 2", |p| {
            p["pageInfo"] == "Page 2 of 2" && p["events"].as_array().is_some_and(|e| e.len() == 2)
        })
        .await;
    let events = strings(&page["events"]);
    assert_eq!(
        events.iter().map(|e| e[3].as_str()).collect::<Vec<_>>(),
        ["decl-010", "decl-011"]
    );
    browser.screenshot("page-2").await;

    // A row expands to its properties with old and new values.
    browser
        .click("#events-table tbody tr.event button.toggle")
        .await;
    let page = browser
        .wait_for("the properties of decl-010", |p| {
            p["expanded"].as_array().is_some_and(|r| !r.is_empty())
        })
        .await;
    assert_eq!(
        strings(&page["expanded"]),
        [vec![
            "status".to_owned(),
            "null".to_owned(),
            "APPROVED".to_owned()
        ]]
    );
    browser.screenshot("expanded").await;

    // The consumer stops; what is produced meanwhile shows as lag, then is caught up.
    console.stop_consumer().await;
    console.produce_changes("EmployeeRequest", "late", 20).await;
    console.produce_bad(2, false).await;
    let page = browser
        .wait_for("a lag of 22 messages", |p| {
            total_row(p).get(5).and_then(|c| number(c)) == Some(22)
        })
        .await;
    assert!(
        strings(&page["lag"])
            .iter()
            .any(|r| number(&r[6]).is_some_and(|l| l > 0)),
        "{}",
        page["lag"]
    );
    browser.screenshot("lagging").await;

    console.start_consumer();
    console.wait_stored(67).await;
    let page = browser
        .wait_for("the group caught up and five dead letters", |p| {
            let total = total_row(p);
            total.get(5).and_then(|c| number(c)) == Some(0)
                && total.get(1).and_then(|c| number(c)) == Some(67)
                && strings(&p["reasons"]).first().map(|r| r[1].as_str()) == Some("4")
        })
        .await;
    let rate = total_row(&page)[6].clone();
    assert!(
        rate.parse::<f64>().is_ok(),
        "messages/s is shown once two samples were read: {rate:?}"
    );
    browser.screenshot("caught-up").await;

    // The terminator: three events stored 40 days ago go by age.
    let client = console.setup.db.client().await;
    client
        .execute(
            &format!(
                "UPDATE events SET inserted_at = now() - interval '40 days', id = {} \
                 WHERE entity_id IN ('er-000', 'er-001', 'er-002')",
                crate::support::v7_sql("now() - interval '40 days'")
            ),
            &[],
        )
        .await
        .unwrap();
    let terminator = Terminator::new(
        console.app.store.clone(),
        console.app.config.terminator.clone(),
        console.app.terminator_metrics.clone(),
    )
    .recording_to(console.app.terminator_runs.clone());
    terminator
        .run_once(false, &CancellationToken::new())
        .await
        .expect("terminator run");
    let page = browser
        .wait_for("the terminator's run", |p| {
            p["terminator"]["Deleted by age"] == "3"
        })
        .await;
    assert!(page["terminator"]["Last run"]
        .as_str()
        .unwrap()
        .ends_with("success"));
    assert_eq!(page["terminator"]["Deleted by count"], "0");
    let next = event_manager::terminator::next_run("0 0 3 * * *", Utc::now()).unwrap();
    assert_eq!(
        page["terminator"]["Next run"],
        next.format("%Y-%m-%d %H:%M:%SZ").to_string()
    );
    browser.screenshot("terminator").await;

    // A phone: one column, no sideways scrolling of the page.
    browser.client.set_window_size(390, 844).await.unwrap();
    let page = browser.page().await;
    assert!(
        page["overflow"].as_i64().unwrap() <= 0,
        "the page scrolls sideways by {} px on a phone",
        page["overflow"]
    );
    browser.screenshot("phone").await;
    browser.client.set_window_size(1280, 1100).await.unwrap();

    // Signing out leaves nothing on the page.
    browser.click("#sign-out").await;
    let page = browser
        .wait_for("the login prompt", |p| p["login"] == true)
        .await;
    assert_eq!(page["console"], false);
    assert!(page["events"].as_array().unwrap().is_empty());
    assert!(page["lag"].as_array().unwrap().is_empty());
    browser.screenshot("signed-out").await;

    browser.close().await;
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_token_the_console_shows_the_login_prompt_and_no_data() {
    let mut console = Console::start().await;
    console.produce_changes("EmployeeRequest", "er", 5).await;
    console.wait_stored(5).await;

    let mut browser = Browser::start("login").await;
    browser
        .client
        .goto(&console.url("/console"))
        .await
        .expect("open the console");
    let page = browser
        .wait_for("the login prompt", |p| p["login"] == true)
        .await;
    assert_eq!(page["console"], false);
    assert!(page["events"].as_array().unwrap().is_empty());
    assert!(page["lag"].as_array().unwrap().is_empty());
    assert_eq!(page["apiRequests"], 0, "the page asked for data");
    assert_eq!(console.api_requests(), 0, "the server was asked for data");
    browser.screenshot("prompt").await;

    // A token the server refuses: the prompt again, naming why, and still no data.
    browser.type_into("#token", "not-a-token").await;
    browser.click("#login-form button[type=submit]").await;
    let page = browser
        .wait_for("the refusal", |p| {
            p["loginError"]
                .as_str()
                .is_some_and(|e| e.starts_with("The token was refused"))
        })
        .await;
    assert_eq!(page["console"], false);
    assert!(page["events"].as_array().unwrap().is_empty());
    assert!(page["lag"].as_array().unwrap().is_empty());
    browser.screenshot("refused").await;

    // The right token typed in: the data, and the token in no URL.
    let token = console.token.clone();
    browser.type_into("#token", &token).await;
    browser.click("#login-form button[type=submit]").await;
    let page = browser
        .wait_for("the events", |p| {
            p["events"].as_array().is_some_and(|e| e.len() == 5)
        })
        .await;
    assert!(!page["url"].as_str().unwrap().contains(&token));
    browser.screenshot("signed-in").await;

    browser.close().await;
    console.stop_consumer().await;
    console.stop().await;
}

/// `demo`'s printed link opens the console on the demo's own data; its screenshot is the one
/// README shows (docs/console.png).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_link_opens_the_console() {
    use std::io::{BufRead, BufReader};

    /// The demo process, killed if the test fails before it stops it.
    struct Demo(Child);
    impl Drop for Demo {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let port = free_port();
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_event-manager"))
            .args([
                "demo",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--rate",
                "100",
            ])
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the demo"),
    );
    let stdout = demo.0.stdout.take().unwrap();
    let (link_tx, link_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(link) = line.strip_prefix("Console: ") {
                let _ = link_tx.send(link.to_owned());
            }
        }
    });
    let link = link_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the demo prints a console link");
    assert!(
        link.starts_with(&format!("http://127.0.0.1:{port}/console#token=")),
        "{link}"
    );

    let mut browser = Browser::start("demo").await;
    browser.client.set_window_size(1280, 1500).await.unwrap();
    browser.client.goto(&link).await.expect("open the link");
    let page = browser
        .wait_for("the demo's events, lag and dead letters", |p| {
            p["events"].as_array().is_some_and(|e| e.len() == 25)
                && p["lag"].as_array().is_some_and(|l| l.len() > 3)
                && p["reasons"].as_array().is_some_and(|r| !r.is_empty())
                && total_row(p)
                    .get(6)
                    .is_some_and(|r| r.parse::<f64>().is_ok())
        })
        .await;
    assert!(!page["url"].as_str().unwrap().contains("token"));
    browser.screenshot("demo").await;

    browser.close().await;
    // The demo stops on SIGTERM (it removes its private PostgreSQL itself).
    let pid = demo.0.id() as libc::pid_t;
    // SAFETY: sends a signal to the child this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let until = Instant::now() + Duration::from_secs(60);
    while demo.0.try_wait().expect("demo status").is_none() {
        assert!(Instant::now() < until, "the demo did not stop within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
