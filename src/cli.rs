//! The command line: `run`, `demo`, `dev-broker`, `migrate`, and the tools that operators use.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

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
    /// Apply pending EventDB migrations and exit.
    Migrate,
    /// Mint a development bearer token signed with `auth.hs256_secret`; prints only the token.
    Token(TokenArgs),
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

/// Options of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// HTTP address of the API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: std::net::SocketAddr,
    /// Sample messages produced per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Stop after this long (e.g. `30s`); runs until Ctrl-C when absent.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
}

/// Options of `dev-broker`.
#[derive(Debug, Args)]
pub struct DevBrokerArgs {
    /// Partitions of every topic created (overrides each rule's `partitions`).
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Number of mock brokers.
    #[arg(long, default_value_t = 1)]
    pub brokers: i32,
    /// Extra topics to create, besides those of the topic rules (repeatable).
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Write the bootstrap address to this file once the broker is up (for scripts and tests).
    #[arg(long)]
    pub bootstrap_file: Option<PathBuf>,
}

/// Parses the command line, runs the command, and maps failures to a non-zero exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run => {
            let config = Config::load(cli.config.as_deref())?;
            runtime.block_on(crate::app::run(config))?;
        }
        Command::Demo(args) => {
            let config = Config::load(cli.config.as_deref())?;
            runtime.block_on(crate::demo::run(config, args))?;
        }
        Command::DevBroker(args) => {
            let config = Config::load(cli.config.as_deref())?;
            runtime.block_on(crate::broker::run_dev_broker(&config, &args))?;
        }
        Command::Migrate => {
            let config = Config::load(cli.config.as_deref())?;
            crate::telemetry::init(&config.log);
            let applied = runtime.block_on(async {
                let store = crate::store::EventStore::connect(&config.database)?;
                store.migrate().await
            })?;
            if applied.is_empty() {
                println!("database is up to date");
            } else {
                for m in applied {
                    println!("applied {m}");
                }
            }
        }
        Command::Token(args) => {
            let config = Config::load(cli.config.as_deref())?;
            let scopes: Vec<String> = args
                .scopes
                .iter()
                .flat_map(|s| s.split_whitespace())
                .map(str::to_owned)
                .collect();
            let token =
                crate::api::auth::mint_token(&config.auth, &scopes, args.ttl, &args.subject)?;
            println!("{token}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
