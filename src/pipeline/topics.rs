//! Topic rules: which topics to read, in which format, and what to watch (`topics/*.toml`).
//!
//! ```toml
//! [[topic]]
//! name = "event_manager_topic"          # or: pattern = "^ehealth-.*\\.status$"
//! format = "esoz"
//! dead_letter_topic = "event_manager_topic.dlq"
//! selector = "entity_type <> 'Test'"    # optional JMS message selector
//! watch = ["status", "is_suspended"]    # optional; default: every attribute the decoder reports
//! capture = ["employee_id"]             # stored with an event, never compared
//! emit_deleted = false
//! first_seen = "event"                  # or "baseline"; default per format (see README)
//! partitions = 6                        # topic size when dev-broker / demo create it
//! [topic.headers]                       # header typing for selectors (default: string)
//! resourceVersion = "long"
//! [topic.aliases]                       # property-name spellings to normalise
//! resourceelement = "resourceElement"
//! [topic.options]                       # format-specific options
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config_error::ConfigError;
use crate::detect::FirstSeen;
use crate::formats::Format;

/// How a Kafka header is typed for selectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderType {
    /// UTF-8 text (the default).
    String,
    /// 64-bit integer.
    Long,
    /// 64-bit float.
    Double,
    /// `true` / `false`.
    Boolean,
}

/// One topic rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// Exact topic name.
    #[serde(default)]
    pub name: Option<String>,
    /// Regular expression over topic names (anchored at both ends).
    #[serde(default)]
    pub pattern: Option<String>,
    /// Source format.
    pub format: Format,
    /// Where undecodable messages go.
    pub dead_letter_topic: String,
    /// JMS message selector; absent or empty selects every message.
    #[serde(default)]
    pub selector: Option<String>,
    /// Watched attributes; absent = every attribute the decoder reports.
    #[serde(default)]
    pub watch: Option<Vec<String>>,
    /// Attributes stored with an event but never compared.
    #[serde(default)]
    pub capture: Vec<String>,
    /// Record an event when an entity is deleted.
    #[serde(default)]
    pub emit_deleted: bool,
    /// What the first created or snapshot observation of an attribute records; absent = the
    /// format's default ([`Format::default_first_seen`]).
    #[serde(default)]
    pub first_seen: Option<FirstSeen>,
    /// Partition count used when dev-broker or demo create the topic.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Header typing for selectors.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderType>,
    /// Property-name aliases: spelling on the wire → canonical name.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Format-specific options.
    #[serde(default)]
    pub options: toml::Table,
    /// File the rule was read from (set by the loader).
    #[serde(skip)]
    pub file: PathBuf,
}

fn default_partitions() -> i32 {
    1
}

impl TopicRule {
    /// A short label for messages: the topic name or pattern.
    pub fn label(&self) -> &str {
        self.name
            .as_deref()
            .or(self.pattern.as_deref())
            .unwrap_or("<unnamed>")
    }

    /// Topics to create on a development broker: the exact name, else none.
    pub(crate) fn concrete_topics(&self) -> Vec<String> {
        self.name.iter().cloned().collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    topic: Vec<TopicRule>,
}

/// Reads every `*.toml` file of `dir` (in name order) and checks the rules.
pub fn load_topic_rules(dir: &Path) -> Result<Vec<TopicRule>, ConfigError> {
    let err = |file: &Path, reason: String| ConfigError::Topic {
        file: file.to_owned(),
        reason,
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| err(dir, format!("cannot read the topics directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut rules = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| err(&file, e.to_string()))?;
        let parsed: RuleFile = toml::from_str(&text).map_err(|e| err(&file, e.to_string()))?;
        for mut rule in parsed.topic {
            rule.file = file.clone();
            check_rule(&rule)
                .map_err(|reason| err(&file, format!("topic `{}`: {reason}", rule.label())))?;
            rules.push(rule);
        }
    }
    if rules.is_empty() {
        return Err(err(
            dir,
            "no topic rules found (expected [[topic]] tables in *.toml files)".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for rule in &rules {
        if let Some(name) = &rule.name {
            if !seen.insert(name.clone()) {
                return Err(err(&rule.file, format!("topic `{name}` is defined twice")));
            }
        }
    }
    Ok(rules)
}

fn check_rule(rule: &TopicRule) -> Result<(), String> {
    match (&rule.name, &rule.pattern) {
        (Some(_), Some(_)) => return Err("set either `name` or `pattern`, not both".into()),
        (None, None) => return Err("one of `name` or `pattern` is required".into()),
        (Some(name), None) => check_topic_name("name", name)?,
        (None, Some(pattern)) => {
            regex::Regex::new(pattern)
                .map_err(|e| format!("`pattern` is not a valid regex: {e}"))?;
        }
    }
    check_topic_name("dead_letter_topic", &rule.dead_letter_topic)?;
    if !(1..=1024).contains(&rule.partitions) {
        return Err("`partitions` must be between 1 and 1024".into());
    }
    if rule.watch.as_ref().is_some_and(Vec::is_empty) {
        return Err("`watch` must name at least one attribute (or be left out)".into());
    }
    Ok(())
}

fn check_topic_name(key: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{key}` = {name:?} is not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 249)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn loads_rules_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "b.toml",
            "[[topic]]\nname = \"b\"\nformat = \"esoz\"\ndead_letter_topic = \"b.dlq\"\n",
        );
        write(dir.path(), "a.toml", "[[topic]]\npattern = \"^a.*\"\nformat = \"esoz\"\ndead_letter_topic = \"a.dlq\"\ncapture = [\"employee_id\"]\n[topic.headers]\nv = \"long\"\n");
        let rules = load_topic_rules(dir.path()).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].pattern.as_deref(), Some("^a.*"));
        assert_eq!(rules[0].headers["v"], HeaderType::Long);
        assert_eq!(rules[1].name.as_deref(), Some("b"));
    }

    #[test]
    fn errors_name_file_topic_and_reason() {
        let cases = [
            ("[[topic]]\nname = \"x\"\nformat = \"esoz\"\n", "dead_letter_topic"),
            ("[[topic]]\nname = \"x y\"\nformat = \"esoz\"\ndead_letter_topic = \"d\"\n", "not a valid Kafka topic name"),
            ("[[topic]]\npattern = \"(\"\nformat = \"esoz\"\ndead_letter_topic = \"d\"\n", "not a valid regex"),
            ("[[topic]]\nname = \"x\"\nformat = \"xml\"\ndead_letter_topic = \"d\"\n", "unknown variant"),
            ("[[topic]]\nname = \"x\"\nformat = \"esoz\"\ndead_letter_topic = \"d\"\nbogus = 1\n", "bogus"),
            ("[[topic]]\nformat = \"esoz\"\ndead_letter_topic = \"d\"\n", "one of `name` or `pattern`"),
            ("[[topic]]\nname = \"x\"\nformat = \"esoz\"\ndead_letter_topic = \"d\"\nfirst_seen = \"never\"\n", "unknown variant `never`, expected `event` or `baseline`"),
        ];
        for (text, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "t.toml", text);
            let e = load_topic_rules(dir.path()).unwrap_err().to_string();
            assert!(e.contains("t.toml") && e.contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn first_seen_is_read_and_absent_by_default() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "t.toml",
            "[[topic]]\nname = \"a\"\nformat = \"esoz\"\ndead_letter_topic = \"a.dlq\"\nfirst_seen = \"baseline\"\n\
             [[topic]]\nname = \"b\"\nformat = \"esoz\"\ndead_letter_topic = \"b.dlq\"\n",
        );
        let rules = load_topic_rules(dir.path()).unwrap();
        assert_eq!(rules[0].first_seen, Some(FirstSeen::Baseline));
        assert_eq!(rules[1].first_seen, None);
    }

    #[test]
    fn shipped_rules_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("topics");
        let rules = load_topic_rules(&dir).unwrap();
        assert!(rules
            .iter()
            .any(|r| r.name.as_deref() == Some("event_manager_topic")));
    }
}
