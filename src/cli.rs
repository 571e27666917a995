//! The command line: `run`, `demo`, `dev-broker`, `migrate`, and the tools that operators use.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use event_manager::broker::DevBrokerArgs;
use event_manager::config::Config;
use event_manager::demo::DemoArgs;

mod ops;

/// Kafka → EventDB pipeline for healthcare status-change events.
#[derive(Debug, Parser)]
#[command(name = "event-manager", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML). Environment variables `EM_<SECTION>__<KEY>` override it.
    #[arg(long, short, global = true, env = "EM_CONFIG")]
    pub config: Option<PathBuf>,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline (consumer group member) and the HTTP API.
    Run,
    /// Run everything locally: embedded Kafka-protocol broker, private PostgreSQL (unless
    /// DATABASE_URL is set), a feed of sample messages, the pipeline and the API.
    Demo(DemoArgs),
    /// Run an in-process Kafka-protocol broker with the topics of `topics/` until SIGTERM.
    DevBroker(DevBrokerArgs),
    /// Apply pending EventDB migrations (schema, then data migrations such as the FHIRcast
    /// session ids, which need the configuration) and exit.
    Migrate,
    /// Replay topics: move the consumer group's stored positions to an offset, the earliest or
    /// latest, a shift, or a point in time. Prints the plan; changes it only with --execute.
    /// Running consumers follow on their own.
    Replay(ReplayArgs),
    /// Where a consumer group stands, per topic partition: the position stored in the EventDB,
    /// the offset committed to Kafka, the log start and end, the lag, the last event stored.
    Status(StatusArgs),
    /// Dead letters: list them, show one, send them back to their source topic after a fix.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Evaluate or check JMS message selectors, as topic rules use them.
    #[command(subcommand)]
    Selector(SelectorCommand),
    /// Apply the retention rules of `[terminator]` once and print what was deleted.
    Terminate(TerminateArgs),
    /// Mint a development bearer token signed with `auth.hs256_secret`; prints only the token.
    Token(TokenArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `config` sub-commands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check the configuration as `run` does before it connects: the file, the `EM_…`
    /// overrides, the topic rules and the token keys. Connects to nothing. Valid: prints as JSON
    /// the values a deployment must agree with (HTTP port, Kafka group, database connections,
    /// shutdown grace, topic rules, webhook topics). Invalid: names the key or file, exits 1.
    Check,
}

/// `selector` sub-commands.
#[derive(Debug, Subcommand)]
pub enum SelectorCommand {
    /// Evaluate a selector against message properties given as a JSON object: strings are
    /// strings, integers longs, other numbers doubles, booleans booleans, null is NULL (`/`
    /// divides in double: `5 / 2 = 2.5`). Prints `true` when a message with these properties
    /// would be selected, else `false`.
    Eval {
        /// Message properties, e.g. '{"messageType": "EHealthContextEvent", "resourceVersion": 3}'.
        #[arg(long)]
        properties: String,
        /// Print the three-valued result: `true`, `false` or `unknown`.
        #[arg(long)]
        explain: bool,
        /// The selector (put it after `--`).
        selector: String,
    },
    /// Check a selector's syntax: exit 0 when valid, else print the error with its column.
    Check {
        /// The selector.
        selector: String,
    },
}

/// Options of `replay`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["to_offset", "to_earliest", "to_latest", "to_time", "shift_by", "by_duration"])))]
#[command(group(clap::ArgGroup::new("which_topics").required(true).args(["topics", "all_topics"])))]
pub struct ReplayArgs {
    /// Topic to replay (repeatable).
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Every topic the group has stored positions for.
    #[arg(long)]
    pub all_topics: bool,
    /// Partition to replay (repeatable; each topic must have it); all partitions when absent.
    #[arg(long = "partition")]
    pub partitions: Vec<i32>,
    /// Start at this offset (clamped to the offsets the broker retains).
    #[arg(long)]
    pub to_offset: Option<i64>,
    /// Start at the earliest retained offset.
    #[arg(long)]
    pub to_earliest: bool,
    /// Start at the log end: skip what has not been read yet.
    #[arg(long)]
    pub to_latest: bool,
    /// Start at the first message at or after this time (RFC 3339, or a date meaning 00:00
    /// UTC). A time before the oldest retained message of a partition whose older messages
    /// retention deleted is an error.
    #[arg(long, visible_alias = "to-datetime")]
    pub to_time: Option<String>,
    /// Move the stored positions by this many offsets (negative: back), within the log.
    #[arg(long, allow_hyphen_values = true)]
    pub shift_by: Option<i64>,
    /// Start at the first message of the last period, e.g. `2h` or `30m` (as --to-time).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub by_duration: Option<std::time::Duration>,
    /// Consumer group (default: `kafka.group_id`).
    #[arg(long)]
    pub group: Option<String>,
    /// Move the stored positions. Without it the plan is printed and nothing changes.
    #[arg(long)]
    pub execute: bool,
    /// Print the plan and change nothing (the default; kept for scripts).
    #[arg(long, conflicts_with = "execute")]
    pub dry_run: bool,
    /// With --execute: show progress until the group has caught up with the messages present now.
    #[arg(long, requires = "execute")]
    pub wait: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Options of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Consumer group (default: `kafka.group_id`).
    #[arg(long)]
    pub group: Option<String>,
    /// Redraw until interrupted (Ctrl-C), with a progress bar per partition on a terminal.
    #[arg(long)]
    pub watch: bool,
    /// How often --watch reads the figures again.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,
    /// Print JSON (with --watch: one object per line).
    #[arg(long)]
    pub json: bool,
}

/// `dlq` sub-commands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// One line per dead letter (its partition and offset, time, source topic, partition and
    /// offset, reason, detail), never bodies; then the counts by reason.
    List(DlqListArgs),
    /// One dead letter: its headers and key; its body only with --body (it may hold patient data).
    Show(DlqShowArgs),
    /// Produce the selected dead letters back to the partition they were read from, with their
    /// key, body and headers (the dead-letter headers removed, `em-redriven-from` added), through
    /// an idempotent producer. Prints what it would send; sends only with --execute.
    Redrive(DlqRedriveArgs),
}

/// Which dead letters (`dlq list` and `dlq redrive`).
#[derive(Debug, Args)]
pub struct DlqFilterArgs {
    /// The dead-letter topic.
    #[arg(long)]
    pub topic: String,
    /// Dead-lettered at or after this time: RFC 3339, a date (00:00 UTC), or a period ago
    /// such as `1h`.
    #[arg(long)]
    pub since: Option<String>,
    /// With this reason code (e.g. `missing_field`, `invalid_encoding`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Read from this source topic.
    #[arg(long)]
    pub source_topic: Option<String>,
    /// Only this partition of the dead-letter topic.
    #[arg(long)]
    pub partition: Option<i32>,
    /// At most this many, the newest.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Options of `dlq list`.
#[derive(Debug, Args)]
pub struct DlqListArgs {
    /// Which dead letters.
    #[command(flatten)]
    pub filter: DlqFilterArgs,
}

/// Options of `dlq show`.
#[derive(Debug, Args)]
pub struct DlqShowArgs {
    /// The dead-letter topic.
    #[arg(long)]
    pub topic: String,
    /// Partition of the dead-letter topic.
    #[arg(long, default_value_t = 0)]
    pub partition: i32,
    /// Offset of the dead letter.
    #[arg(long)]
    pub offset: i64,
    /// Print the body too (UTF-8 text as is, other bytes as a hex dump).
    #[arg(long)]
    pub body: bool,
    /// Print JSON (the body, with --body, base64-encoded).
    #[arg(long)]
    pub json: bool,
}

/// Options of `dlq redrive`.
#[derive(Debug, Args)]
pub struct DlqRedriveArgs {
    /// Which dead letters.
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    /// Only the dead letter at this offset (of --partition, default 0).
    #[arg(long)]
    pub offset: Option<i64>,
    /// Produce the messages. Without it nothing is sent.
    #[arg(long)]
    pub execute: bool,
    /// Print what would be sent and send nothing (the default).
    #[arg(long, conflicts_with = "execute")]
    pub dry_run: bool,
}

/// Options of `terminate`.
#[derive(Debug, Args)]
pub struct TerminateArgs {
    /// Only count and print what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Options of `token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Scope to grant (repeatable, or space-separated).
    #[arg(long = "scope", default_value = "event:read")]
    pub scopes: Vec<String>,
    /// Lifetime, e.g. `1h` or `15m`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
    /// The `sub` claim.
    #[arg(long, default_value = "developer")]
    pub subject: String,
}

/// Parses the command line, runs the command, and maps failures to a non-zero exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "error: {}",
                event_manager::error_report::describe(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Run => {
            let config = Config::load(cli.config.as_deref())?;
            runtime()?.block_on(event_manager::app::run(config))?;
        }
        Command::Demo(args) => {
            let config = Config::load(cli.config.as_deref())?;
            runtime()?.block_on(event_manager::demo::run(config, args))?;
        }
        Command::DevBroker(args) => {
            let config = Config::load(cli.config.as_deref())?;
            runtime()?.block_on(event_manager::broker::run_dev_broker(&config, &args))?;
        }
        Command::Replay(args) => {
            let config = Config::load(cli.config.as_deref())?;
            runtime()?.block_on(replay(config, args))?;
        }
        Command::Status(args) => {
            let config = Config::load(cli.config.as_deref())?;
            runtime()?.block_on(ops::status(config, args))?;
        }
        Command::Dlq(command) => {
            let config = Config::load(cli.config.as_deref())?;
            runtime()?.block_on(ops::dlq(config, command))?;
        }
        Command::Selector(command) => return selector(&command),
        Command::Migrate => {
            let config = Config::load(cli.config.as_deref())?;
            event_manager::telemetry::init(&config.log);
            let applied = runtime()?.block_on(async {
                let store = event_manager::store::EventStore::connect(&config.database)?;
                event_manager::app::migrate_store(&store, &config).await
            })?;
            if applied.is_empty() {
                println!("database is up to date");
            } else {
                for m in applied {
                    println!("applied {m}");
                }
            }
        }
        Command::Terminate(args) => {
            let config = Config::load(cli.config.as_deref())?;
            event_manager::telemetry::init(&config.log);
            let report = runtime()?.block_on(terminate(config, args.dry_run))?;
            println!("{report}");
        }
        Command::Token(args) => {
            let config = Config::load(cli.config.as_deref())?;
            let scopes: Vec<String> = args
                .scopes
                .iter()
                .flat_map(|s| s.split_whitespace())
                .map(str::to_owned)
                .collect();
            let token = event_manager::api::auth::mint_token(
                &config.auth,
                &scopes,
                args.ttl,
                &args.subject,
            )?;
            println!("{token}");
        }
        Command::Config(ConfigCommand::Check) => {
            let config = Config::load(cli.config.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&config_check(config)?)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `config check`: assembles the application as `run` does, without connecting anywhere, and
/// reports the values that manifests and alerts depend on.
fn config_check(config: Config) -> anyhow::Result<serde_json::Value> {
    let app = event_manager::app::App::build(config)?;
    app.config.auth.require_key()?;
    // The Kafka security files (password, certificates) are read as `run` reads them.
    event_manager::kafka::client_config(&app.config.kafka, event_manager::kafka::Role::Consumer)?;
    let rules: Vec<serde_json::Value> = app
        .rules
        .rules()
        .iter()
        .map(|compiled| {
            let rule = &compiled.rule;
            serde_json::json!({
                "file": rule.file.file_name().map(|f| f.to_string_lossy()),
                "name": rule.name,
                "pattern": rule.pattern,
                "partitions": rule.partitions,
                "dead_letter_topic": rule.dead_letter_topic,
            })
        })
        .collect();
    let webhooks = &app.config.webhooks;
    let webhook_topics: Vec<serde_json::Value> = [
        ("sfs", &webhooks.sfs.topic),
        ("fhircast", &webhooks.fhircast.topic),
    ]
    .into_iter()
    .map(|(bridge, topic)| {
        serde_json::json!({
            "bridge": bridge,
            "topic": topic,
            "read_by_rule": app.rules.index_for(topic).is_some(),
        })
    })
    .collect();
    Ok(serde_json::json!({
        "http_port": app.config.http.bind.port(),
        "kafka_bootstrap_servers": app.config.kafka.bootstrap_servers,
        "kafka_group_id": app.config.kafka.group_id,
        "database_pool_size": app.config.database.pool_size,
        // Every pool's upper bound: what one replica may hold open at once.
        "database_connections": app.store.max_connections(),
        "shutdown_grace_seconds": app.config.pipeline.shutdown_grace.as_secs_f64(),
        "terminator_enabled": app.config.terminator.enabled,
        "topic_rules": rules,
        "webhook_topics": webhook_topics,
    }))
}

fn parse_time(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    event_manager::time::parse_time_or_date(text).ok_or_else(|| {
        anyhow::anyhow!("--to-time {text:?} is not an RFC 3339 date-time or a YYYY-MM-DD date")
    })
}

async fn replay(config: Config, args: ReplayArgs) -> anyhow::Result<()> {
    use event_manager::replay::{self, ReplayTarget};
    let target = match (
        args.to_offset,
        args.to_earliest,
        args.to_latest,
        &args.to_time,
        args.shift_by,
        args.by_duration,
    ) {
        (Some(o), ..) if o < 0 => anyhow::bail!("--to-offset must be 0 or more"),
        (Some(o), ..) => ReplayTarget::Offset(o),
        (_, true, ..) => ReplayTarget::Earliest,
        (_, _, true, ..) => ReplayTarget::Latest,
        (_, _, _, Some(t), ..) => ReplayTarget::Time(parse_time(t)?),
        (.., Some(n), _) => ReplayTarget::ShiftBy(n),
        (.., Some(d)) => ReplayTarget::Time(
            chrono::Utc::now()
                - chrono::Duration::from_std(d)
                    .map_err(|_| anyhow::anyhow!("--by-duration is too long"))?,
        ),
        _ => anyhow::bail!(
            "one of --to-offset, --to-earliest, --to-latest, --to-time, --shift-by or --by-duration is required"
        ),
    };
    let group = args.group.unwrap_or_else(|| config.kafka.group_id.clone());
    let store = event_manager::store::EventStore::connect(&config.database)?;
    let topics = if args.all_topics {
        replay::stored_topics(&store, &group).await?
    } else {
        args.topics.clone()
    };
    let plans = replay::plan_topics(
        &config.kafka,
        &store,
        &group,
        &topics,
        &args.partitions,
        target,
    )
    .await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "group": group,
                "executed": args.execute,
                "partitions": plans,
            }))?
        );
    } else {
        print!("{}", ops::replay_plan_table(&group, &plans));
        if plans
            .iter()
            .any(|p| p.time_lookup == Some(replay::TimeLookup::Search))
        {
            println!(
                "note: this broker does not look up offsets by time (ListOffsets by timestamp; \
                 librdkafka's MockCluster behind `demo` and `dev-broker` cannot): the new offsets \
                 were found by reading message timestamps, assuming they do not decrease"
            );
        }
    }
    if !args.execute {
        if !args.json {
            println!("dry run: nothing changed (add --execute to move the stored positions)");
        }
        return Ok(());
    }
    replay::apply(&store, &group, &plans).await?;
    if !args.json {
        println!("stored positions moved; running consumers follow within seconds");
    }
    if args.wait {
        let total: u64 = plans.iter().map(|p| p.lag_after() as u64).sum();
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} messages ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let keys: Vec<(String, i32)> = plans
            .iter()
            .map(|p| (p.topic.clone(), p.partition))
            .collect();
        let shutdown = event_manager::shutdown::on_signal();
        loop {
            let stored = store.load_offsets(&group, &keys).await?;
            let done: u64 = plans
                .iter()
                .map(|p| {
                    let at = stored
                        .get(&(p.topic.clone(), p.partition))
                        .copied()
                        .unwrap_or(p.target);
                    (at.min(p.high) - p.target).max(0) as u64
                })
                .sum();
            bar.set_position(done);
            if done >= total {
                bar.finish();
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => { bar.abandon(); break; }
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
        }
    }
    Ok(())
}

/// `selector eval` and `selector check`. Errors go to stderr (via the caller) and nothing is
/// printed on stdout, as scripts depend on.
fn selector(command: &SelectorCommand) -> anyhow::Result<ExitCode> {
    use message_selector::{OwnedValue, Selector, Truth};
    match command {
        SelectorCommand::Check { selector } => {
            Selector::parse(selector).map_err(|e| anyhow::anyhow!("invalid selector: {e}"))?;
            println!("valid");
        }
        SelectorCommand::Eval {
            properties,
            explain,
            selector,
        } => {
            let parsed =
                Selector::parse(selector).map_err(|e| anyhow::anyhow!("invalid selector: {e}"))?;
            let json: serde_json::Value = serde_json::from_str(properties)
                .map_err(|e| anyhow::anyhow!("--properties is not valid JSON: {e}"))?;
            let serde_json::Value::Object(map) = json else {
                anyhow::bail!("--properties must be a JSON object");
            };
            let mut props = std::collections::HashMap::new();
            for (name, value) in map {
                let value = match value {
                    serde_json::Value::Null => continue,
                    serde_json::Value::Bool(b) => OwnedValue::Boolean(b),
                    serde_json::Value::String(s) => OwnedValue::String(s),
                    serde_json::Value::Number(n) => match n.as_i64() {
                        Some(i) => OwnedValue::Long(i),
                        None => OwnedValue::Double(n.as_f64().ok_or_else(|| {
                            anyhow::anyhow!("property `{name}`: number out of range")
                        })?),
                    },
                    serde_json::Value::Array(_) | serde_json::Value::Object(_) => anyhow::bail!(
                        "property `{name}`: arrays and objects are not message property types"
                    ),
                };
                props.insert(name, value);
            }
            let truth = parsed.evaluate(&props);
            if *explain {
                println!("{truth}");
            } else {
                println!("{}", truth == Truth::True);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn terminate(
    config: Config,
    dry_run: bool,
) -> anyhow::Result<event_manager::terminator::TerminationReport> {
    let store = event_manager::store::EventStore::connect(&config.database)?;
    let metrics =
        event_manager::metrics::TerminatorMetrics::register(&prometheus::Registry::new())?;
    let terminator = event_manager::terminator::Terminator::new(store, config.terminator, metrics);
    let shutdown = event_manager::shutdown::on_signal();
    Ok(terminator.run_once(dry_run, &shutdown).await?)
}
