//! The embedded Kafka-protocol broker (`rdkafka::mocking::MockCluster`) used by `demo`,
//! `dev-broker` and the tests. It speaks the real protocol on local TCP ports.

use std::collections::BTreeSet;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::config::{load_topic_rules, Config, TopicRule};

/// Why the embedded broker could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The mock cluster failed.
    #[error("embedded broker: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The topic rules are invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Writing the bootstrap file failed.
    #[error("writing the bootstrap file: {0}")]
    Io(#[from] std::io::Error),
}

/// An in-process broker.
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("bootstrap", &self.bootstrap_servers())
            .finish()
    }
}

impl EmbeddedBroker {
    /// Starts a cluster of `brokers` mock brokers.
    pub fn start(brokers: i32) -> Result<Self, BrokerError> {
        Ok(Self {
            cluster: MockCluster::new(brokers)?,
        })
    }

    /// The `bootstrap.servers` value for clients.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates a topic (replication factor 1).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), BrokerError> {
        self.cluster.create_topic(name, partitions, 1)?;
        Ok(())
    }

    /// Creates the concrete topics and dead-letter topics of `rules`; returns their names.
    pub fn create_rule_topics(
        &self,
        rules: &[TopicRule],
        partitions: Option<i32>,
    ) -> Result<Vec<String>, BrokerError> {
        let mut created = BTreeSet::new();
        for rule in rules {
            for topic in rule.concrete_topics() {
                if created.insert(topic.clone()) {
                    self.create_topic(&topic, partitions.unwrap_or(rule.partitions))?;
                }
            }
            if created.insert(rule.dead_letter_topic.clone()) {
                self.create_topic(&rule.dead_letter_topic, 1)?;
            }
        }
        Ok(created.into_iter().collect())
    }

    /// The mock cluster, for failure injection in tests.
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}

/// Options of `dev-broker`.
#[derive(Debug, clap::Args)]
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
    pub bootstrap_file: Option<std::path::PathBuf>,
}

/// `event-manager dev-broker`: runs the broker until SIGTERM or SIGINT.
pub async fn run_dev_broker(config: &Config, args: &DevBrokerArgs) -> Result<(), BrokerError> {
    let rules = load_topic_rules(&config.pipeline.topics_dir)?;
    let broker = EmbeddedBroker::start(args.brokers)?;
    let mut topics = broker.create_rule_topics(&rules, args.partitions)?;
    for topic in &args.topics {
        broker.create_topic(topic, args.partitions.unwrap_or(1))?;
        topics.push(topic.clone());
    }
    let bootstrap = broker.bootstrap_servers();
    if let Some(path) = &args.bootstrap_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{bootstrap}\n"))?;
        std::fs::rename(&tmp, path)?;
    }
    println!("{bootstrap}");
    eprintln!(
        "dev-broker: bootstrap.servers={bootstrap}; topics: {}. Stop with Ctrl-C or SIGTERM.",
        topics.join(", ")
    );
    crate::shutdown::on_signal().cancelled().await;
    drop(broker);
    Ok(())
}
