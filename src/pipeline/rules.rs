//! Compiled topic rules: matcher, selector, decoder and detector for each rule.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;

use message_selector::Selector;
use regex::Regex;

use super::topics::{HeaderType, TopicRule};
use crate::config_error::ConfigError;
use crate::detect::{ChangeDetector, DetectOptions};
use crate::formats::{decoder_with, Decoder, DecoderContext};

/// Kafka metadata offered to selectors under JMS header names (see [`super::process::properties`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metadata {
    /// `JMSDestination`: the topic.
    Destination,
    /// `JMSTimestamp`: the message timestamp in milliseconds.
    Timestamp,
    /// `JMSMessageID`: `ID:<topic>-<partition>-<offset>`.
    MessageId,
    /// `JMSCorrelationID`: the key as UTF-8.
    CorrelationId,
    /// `JMSDeliveryMode`: `PERSISTENT`.
    DeliveryMode,
    /// `JMSPriority`: 4.
    Priority,
    /// `JMSRedelivered`: false.
    Redelivered,
    /// `kafka_topic`.
    KafkaTopic,
    /// `kafka_partition`.
    KafkaPartition,
    /// `kafka_offset`.
    KafkaOffset,
}

impl Metadata {
    const ALL: [Metadata; 10] = [
        Metadata::Destination,
        Metadata::Timestamp,
        Metadata::MessageId,
        Metadata::CorrelationId,
        Metadata::DeliveryMode,
        Metadata::Priority,
        Metadata::Redelivered,
        Metadata::KafkaTopic,
        Metadata::KafkaPartition,
        Metadata::KafkaOffset,
    ];

    /// The property name.
    pub fn as_str(self) -> &'static str {
        match self {
            Metadata::Destination => "JMSDestination",
            Metadata::Timestamp => "JMSTimestamp",
            Metadata::MessageId => "JMSMessageID",
            Metadata::CorrelationId => "JMSCorrelationID",
            Metadata::DeliveryMode => "JMSDeliveryMode",
            Metadata::Priority => "JMSPriority",
            Metadata::Redelivered => "JMSRedelivered",
            Metadata::KafkaTopic => "kafka_topic",
            Metadata::KafkaPartition => "kafka_partition",
            Metadata::KafkaOffset => "kafka_offset",
        }
    }
}

/// One rule, ready to use.
#[derive(Debug)]
pub struct CompiledRule {
    /// The rule as configured.
    pub rule: TopicRule,
    /// Its selector (empty = every message).
    pub selector: Selector,
    /// Its decoder.
    pub decoder: Box<dyn Decoder>,
    /// Its change detector.
    pub detector: ChangeDetector,
    matcher: Option<Regex>,
    watch: Option<HashSet<String>>,
    capture: HashSet<String>,
    /// Header name on the wire → canonical property name.
    pub aliases: HashMap<String, String>,
    /// Canonical property name → type.
    pub header_types: BTreeMap<String, HeaderType>,
    metadata: Vec<Metadata>,
}

impl CompiledRule {
    fn compile(rule: TopicRule, context: &DecoderContext) -> Result<Self, ConfigError> {
        let err = |reason: String| ConfigError::Topic {
            file: rule.file.clone(),
            reason: format!("topic `{}`: {reason}", rule.label()),
        };
        let selector = Selector::parse(rule.selector.as_deref().unwrap_or(""))
            .map_err(|e| err(format!("selector: {e}")))?;
        let decoder =
            decoder_with(rule.format, &rule.options, context).map_err(|e| err(e.to_string()))?;
        let matcher = match &rule.pattern {
            Some(p) => {
                let body = p.trim_start_matches('^').trim_end_matches('$');
                Some(Regex::new(&format!("^(?:{body})$")).map_err(|e| err(e.to_string()))?)
            }
            None => None,
        };
        let referenced: HashSet<&str> = selector.identifiers().collect();
        let metadata = Metadata::ALL
            .into_iter()
            .filter(|m| referenced.contains(m.as_str()))
            .collect();
        let watch = rule.watch.as_ref().map(|w| w.iter().cloned().collect());
        let capture = rule.capture.iter().cloned().collect();
        let aliases = rule
            .aliases
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Self {
            selector,
            decoder,
            detector: ChangeDetector::new(DetectOptions {
                emit_deleted: rule.emit_deleted,
                first_seen: rule
                    .first_seen
                    .unwrap_or_else(|| rule.format.default_first_seen()),
            }),
            matcher,
            watch,
            capture,
            aliases,
            header_types: rule.headers.clone(),
            metadata,
            rule,
        })
    }

    fn matches(&self, topic: &str) -> bool {
        match (&self.rule.name, &self.matcher) {
            (Some(name), _) => name == topic,
            (None, Some(re)) => re.is_match(topic),
            (None, None) => false,
        }
    }

    /// The metadata properties the selector refers to.
    pub fn metadata(&self) -> &[Metadata] {
        &self.metadata
    }

    /// Whether an attribute is compared (watched).
    pub(crate) fn watches(&self, attribute: &str) -> bool {
        !self.capture.contains(attribute)
            && self.watch.as_ref().is_none_or(|w| w.contains(attribute))
    }

    /// Whether an attribute is captured.
    pub(crate) fn captures(&self, attribute: &str) -> bool {
        self.capture.contains(attribute)
    }
}

/// All rules, with a topic → rule cache.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<CompiledRule>,
    dead_letter_topics: HashSet<String>,
    cache: RwLock<HashMap<String, Option<usize>>>,
}

impl RuleSet {
    /// Compiles every rule; an invalid selector or format option stops start-up naming the file,
    /// the topic and the problem (with the selector's column).
    pub fn compile(rules: Vec<TopicRule>) -> Result<Self, ConfigError> {
        Self::compile_with(rules, &DecoderContext::default())
    }

    /// [`RuleSet::compile`] with what the decoders take from the service's configuration.
    pub(crate) fn compile_with(
        rules: Vec<TopicRule>,
        context: &DecoderContext,
    ) -> Result<Self, ConfigError> {
        let dead_letter_topics = rules.iter().map(|r| r.dead_letter_topic.clone()).collect();
        let rules = rules
            .into_iter()
            .map(|rule| CompiledRule::compile(rule, context))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            rules,
            dead_letter_topics,
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// The rules.
    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// Subscription list for librdkafka: exact names, and `^regex` for patterns.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut subs: Vec<String> = self
            .rules
            .iter()
            .map(|r| match (&r.rule.name, &r.rule.pattern) {
                (Some(name), _) => name.clone(),
                (None, Some(p)) if p.starts_with('^') => p.clone(),
                (None, Some(p)) => format!("^{p}"),
                (None, None) => String::new(),
            })
            .filter(|s| !s.is_empty())
            .collect();
        subs.sort();
        subs.dedup();
        subs
    }

    /// Index of the rule for a topic: the first exact name, else the first matching pattern.
    /// Dead-letter and internal topics never match.
    pub fn index_for(&self, topic: &str) -> Option<usize> {
        if let Some(hit) = self.cache.read().ok().and_then(|c| c.get(topic).copied()) {
            return hit;
        }
        let found = if topic.starts_with("__") || self.dead_letter_topics.contains(topic) {
            None
        } else {
            self.rules
                .iter()
                .position(|r| r.rule.name.as_deref() == Some(topic))
                .or_else(|| self.rules.iter().position(|r| r.matches(topic)))
        };
        if let Ok(mut cache) = self.cache.write() {
            cache.insert(topic.to_owned(), found);
        }
        found
    }

    /// The rule at `index`.
    pub fn get(&self, index: usize) -> Option<&CompiledRule> {
        self.rules.get(index)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::detect::FirstSeen;
    use crate::pipeline::topics::load_topic_rules;

    #[test]
    fn first_seen_defaults_per_format_and_a_rule_overrides_it() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("topics");
        let mut rules = load_topic_rules(&dir).unwrap();
        let shipped = RuleSet::compile(rules.clone()).unwrap();
        for rule in shipped.rules() {
            let expected = match rule.rule.format {
                crate::formats::Format::Esoz => FirstSeen::Event,
                _ => FirstSeen::Baseline,
            };
            assert_eq!(
                rule.detector.options().first_seen,
                expected,
                "{}",
                rule.rule.label()
            );
        }
        for rule in &mut rules {
            rule.first_seen = Some(match rule.format {
                crate::formats::Format::Esoz => FirstSeen::Baseline,
                _ => FirstSeen::Event,
            });
        }
        let overridden = RuleSet::compile(rules).unwrap();
        for rule in overridden.rules() {
            assert_eq!(
                Some(rule.detector.options().first_seen),
                rule.rule.first_seen
            );
        }
    }
}
