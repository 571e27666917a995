//! The operators' commands on a running pipeline and the real broker: `status`, `replay` and
//! `dlq`, run as the binary, their output and exit codes compared with the truth.

use std::time::Duration;

use chrono::{DateTime, Utc};
use event_manager::ops::status::StatusReader;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt as _;

use crate::pipeline::{count, esoz, setup, start, t, Setup};
use crate::support::kafka::kafka;
use crate::support::{free_port, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_event-manager");

/// Runs the binary with the setup's broker, group, database and topic rules.
async fn em(s: &Setup, args: &[&str]) -> (i32, String, String) {
    em_env(s, args, &[]).await
}

async fn em_env(s: &Setup, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("EM_CONFIG")
        .env("EM_KAFKA__BOOTSTRAP_SERVERS", &s.bootstrap)
        .env("EM_KAFKA__GROUP_ID", &s.group)
        .env("EM_DATABASE__URL", &s.db.url)
        .env("EM_PIPELINE__TOPICS_DIR", s.topics.path())
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run event-manager");
    let result = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    println!(
        "$ event-manager {}\n{}{}",
        args.join(" "),
        result.1,
        result.2
    );
    result
}

async fn stored(s: &Setup) -> Vec<(String, i32, i64)> {
    s.db.client()
        .await
        .query(
            "SELECT topic, partition, next_offset FROM consumer_offsets \
             WHERE group_id = $1 ORDER BY 1, 2",
            &[&s.group],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// A known workload: partition p gets p + 2 status changes of entities of its own, the last
/// with event time `t(100 * p + p + 1)`; returns the message count.
async fn workload(s: &Setup) -> i64 {
    let producer = s.producer();
    let mut total = 0;
    for p in 0..6 {
        for i in 0..=(p + 1) {
            let id = format!("e{p}-{i}");
            let body = esoz(
                "EmployeeRequest",
                &id,
                &json!("NEW"),
                t(100 * i64::from(p) + i64::from(i)),
                None,
            );
            s.produce(&producer, p, Some(&id), &body).await;
            total += 1;
        }
    }
    total
}

fn at(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str().map(|s| s.parse().expect("an RFC 3339 time"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_figures_equal_the_truth_after_a_known_workload() {
    let s = setup().await;
    let total = workload(&s).await;
    let config = s.config(&s.db.url);
    let running = start(config.clone()).await;
    wait_for(Duration::from_secs(60), || async {
        s.db.stored_offsets_total().await == total
    })
    .await;
    // Kafka's commit follows the stored positions asynchronously.
    let reader = StatusReader::new(&config.kafka, s.db.store.clone(), &s.group).unwrap();
    wait_for(Duration::from_secs(30), || async {
        let status = reader.read().await.unwrap();
        status
            .partitions
            .iter()
            .all(|p| p.committed_offset.is_some() && p.committed_offset == p.stored_offset)
    })
    .await;

    let (code, out, err) = em(&s, &["status", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["group"], s.group.as_str());
    let partitions = status["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 6);
    for (p, row) in partitions.iter().enumerate() {
        let messages = p as i64 + 2;
        assert_eq!(row["topic"], s.topic.as_str());
        assert_eq!(row["partition"], p);
        assert_eq!(row["stored_offset"], messages, "{row}");
        assert_eq!(row["committed_offset"], messages, "{row}");
        assert_eq!(row["log_start"], 0, "{row}");
        assert_eq!(row["log_end"], messages, "{row}");
        assert_eq!(row["lag"], 0, "{row}");
        assert_eq!(
            at(&row["last_event_time"]),
            Some(t(100 * p as i64 + p as i64 + 1)),
            "{row}"
        );
    }
    assert_eq!(status["total"]["partitions"], 6);
    assert_eq!(status["total"]["lag"], 0);
    assert_eq!(at(&status["total"]["last_event_time"]), Some(t(506)));

    // Stopped, with 5 messages more on partition 3: the lag is theirs.
    running.stop().await;
    let producer = s.producer();
    for i in 0..5 {
        let id = format!("late-{i}");
        let body = esoz("EmployeeRequest", &id, &json!("NEW"), t(1_000 + i), None);
        s.produce(&producer, 3, Some(&id), &body).await;
    }
    let (code, out, err) = em(&s, &["status"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with(&format!("group {} at ", s.group)),
        "{out}"
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [
            "TOPIC",
            "PARTITION",
            "STORED",
            "COMMITTED",
            "LOG-START",
            "LOG-END",
            "LAG",
            "LAST-EVENT"
        ]
    );
    let row3: Vec<&str> = lines[5].split_whitespace().collect();
    assert_eq!(
        row3,
        [
            s.topic.as_str(),
            "3",
            "5",
            "5",
            "0",
            "10",
            "5",
            "2023-11-14T22:18:24Z"
        ],
        "{out}"
    );
    let total_line = lines.last().unwrap();
    assert!(
        total_line.starts_with("TOTAL (6 partitions, 1 behind)"),
        "{out}"
    );
    assert_eq!(total_line.split_whitespace().nth(5), Some("5"), "{out}");

    // --watch reads again until interrupted (one JSON object per line when asked).
    let mut child = tokio::process::Command::new(BIN)
        .args(["status", "--watch", "--json", "--interval", "100ms"])
        .env_remove("EM_CONFIG")
        .env("EM_KAFKA__BOOTSTRAP_SERVERS", &s.bootstrap)
        .env("EM_KAFKA__GROUP_ID", &s.group)
        .env("EM_DATABASE__URL", &s.db.url)
        .env("EM_PIPELINE__TOPICS_DIR", s.topics.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("a status line within 60 s")
            .unwrap()
            .expect("the watch goes on");
        let status: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(status["total"]["lag"], 5, "{line}");
    }
    // SAFETY: signalling the child this test started and has not reaped.
    unsafe {
        libc::kill(child.id().unwrap() as i32, libc::SIGINT);
    }
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the watch ends on SIGINT")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_an_unknown_group_and_an_unreachable_broker() {
    let s = setup().await;
    let (code, out, err) = em(&s, &["status", "--group", "nobody-reads-here"]).await;
    assert_ne!(code, 0);
    assert_eq!(out, "");
    assert!(
        err.contains("unknown consumer group `nobody-reads-here`"),
        "{err}"
    );

    // A group with positions, and no broker where the configuration points.
    s.db.store
        .set_offsets(&s.group, &[(s.topic.clone(), 0, 1)])
        .await
        .unwrap();
    let nowhere = format!("127.0.0.1:{}", free_port());
    let (code, out, err) = em_env(
        &s,
        &["status"],
        &[("EM_KAFKA__BOOTSTRAP_SERVERS", nowhere.as_str())],
    )
    .await;
    assert_ne!(code, 0);
    assert_eq!(out, "");
    assert!(
        err.contains(&format!("cannot reach Kafka at {nowhere}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_prints_its_plan_changes_nothing_without_execute_and_refuses_what_does_not_fit() {
    let s = setup().await;
    let total = workload(&s).await;
    let running = start(s.config(&s.db.url)).await;
    wait_for(Duration::from_secs(60), || async {
        s.db.stored_offsets_total().await == total
    })
    .await;
    let before = stored(&s).await;
    let events = count(&s.db, "SELECT count(*) FROM events").await;
    assert_eq!(events, total);

    for dry in [&[][..], &["--dry-run"][..]] {
        let mut args = vec!["replay", "--topic", s.topic.as_str(), "--to-earliest"];
        args.extend(dry);
        let (code, out, err) = em(&s, &args).await;
        assert_eq!(code, 0, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "GROUP",
                "TOPIC",
                "PARTITION",
                "CURRENT-OFFSET",
                "NEW-OFFSET",
                "LOG-START-OFFSET",
                "LOG-END-OFFSET",
                "LAG-AFTER"
            ]
        );
        for p in 0..6 {
            let n = (p + 2).to_string();
            assert_eq!(
                lines[1 + p].split_whitespace().collect::<Vec<_>>(),
                [
                    s.group.as_str(),
                    s.topic.as_str(),
                    &p.to_string(),
                    &n,
                    "0",
                    "0",
                    &n,
                    &n
                ],
                "{out}"
            );
        }
        assert!(out.contains("dry run: nothing changed"), "{out}");
        assert_eq!(stored(&s).await, before, "a dry run changes nothing");
    }

    // Each target, planned.
    let plan = |args: Vec<&'static str>| {
        let s = &s;
        async move {
            let mut all = vec!["replay", "--json"];
            all.extend(args);
            let (code, out, err) = em(s, &all).await;
            assert_eq!(code, 0, "{err}");
            let plan: Value = serde_json::from_str(&out).unwrap();
            plan["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["partition"].as_i64().unwrap(),
                        p["target"].as_i64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let topic: &'static str = Box::leak(s.topic.clone().into_boxed_str());
    assert_eq!(
        plan(vec![
            "--topic",
            topic,
            "--partition",
            "4",
            "--shift-by",
            "-3"
        ])
        .await,
        [(4, 3)]
    );
    assert_eq!(
        plan(vec![
            "--topic",
            topic,
            "--partition",
            "1",
            "--shift-by",
            "-10"
        ])
        .await,
        [(1, 0)],
        "clamped to the log"
    );
    assert_eq!(
        plan(vec!["--all-topics", "--partition", "2", "--to-latest"]).await,
        [(2, 4)]
    );
    // The messages were produced just now: the last hour holds all of them.
    assert_eq!(
        plan(vec![
            "--topic",
            topic,
            "--partition",
            "5",
            "--by-duration",
            "1h"
        ])
        .await,
        [(5, 0)]
    );
    assert_eq!(stored(&s).await, before);

    // What does not fit the topic.
    for (args, expected) in [
        (
            vec!["--topic", "no-such-topic", "--to-earliest"],
            "topic `no-such-topic` does not exist".to_owned(),
        ),
        (
            vec!["--topic", topic, "--partition", "9", "--to-earliest"],
            format!("topic `{topic}` has no partition 9 (it has 6)"),
        ),
        (
            vec!["--topic", topic, "--to-time", "2999-01-01T00:00:00Z"],
            "is in the future".to_owned(),
        ),
        (
            vec!["--topic", topic, "--to-earliest", "--execute", "--dry-run"],
            "cannot be used with".to_owned(),
        ),
    ] {
        let mut all = vec!["replay"];
        all.extend(&args);
        let (code, out, err) = em(&s, &all).await;
        assert_ne!(code, 0, "{args:?}");
        assert_eq!(out, "", "{args:?}");
        assert!(err.contains(&expected), "{args:?}: {err}");
    }
    // Retention deleted the first messages of partition 1: a time before them is outside the log.
    kafka().delete_records(&s.topic, 1, 2).await;
    let (code, _, err) = em(&s, &["replay", "--topic", topic, "--to-time", "2000-01-01"]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("outside the log") && err.contains(&format!("{topic}/1")),
        "{err}"
    );
    assert_eq!(stored(&s).await, before);

    // Executed: the position moves, the running consumer reads again, nothing is stored twice.
    let began: DateTime<Utc> =
        s.db.client()
            .await
            .query_one("SELECT now()", &[])
            .await
            .unwrap()
            .get(0);
    let (code, out, err) = em(
        &s,
        &[
            "replay",
            "--topic",
            topic,
            "--partition",
            "5",
            "--shift-by",
            "-4",
            "--execute",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stored positions moved"), "{out}");
    // Back at 7 after the replay wrote 3: the consumer read the last 4 messages again.
    wait_for(Duration::from_secs(60), || async {
        let client = s.db.client().await;
        let row = client
            .query_one(
                "SELECT next_offset, updated_at FROM consumer_offsets \
                 WHERE group_id = $1 AND topic = $2 AND partition = 5",
                &[&s.group, &s.topic],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) == 7 && row.get::<_, DateTime<Utc>>(1) > began
    })
    .await;
    running.stop().await;
    assert_eq!(count(&s.db, "SELECT count(*) FROM events").await, events);
}

/// Dead letters of a rule with the wrong format: listed, shown, and after the fix sent back —
/// the fixed ones stored once (also when sent back twice), the broken one dead-lettered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_and_redriven_after_a_fix() {
    let s = setup().await;
    let rule = |format: &str| {
        format!(
            "[[topic]]\nname = \"{}\"\nformat = \"{format}\"\ndead_letter_topic = \"{}\"\npartitions = 6\n",
            s.topic, s.dlq
        )
    };
    std::fs::write(s.topics.path().join("esoz.toml"), rule("rcp-v2")).unwrap();
    let producer = s.producer();
    let good_a = esoz("EmployeeRequest", "a", &json!("APPROVED"), t(1), None);
    let good_b = esoz("EmployeeRequest", "b", &json!("REJECTED"), t(2), None);
    s.produce(&producer, 2, Some("a"), &good_a).await;
    s.produce(&producer, 2, Some("garbage"), b"\x83not a term")
        .await;
    s.produce(&producer, 2, Some("b"), &good_b).await;
    let running = start(s.config(&s.db.url)).await;
    wait_for(Duration::from_secs(60), || async {
        s.db.stored_offsets_total().await == 3
    })
    .await;
    running.stop().await;
    assert_eq!(count(&s.db, "SELECT count(*) FROM events").await, 0);
    let dlq: &str = &s.dlq;

    let (code, out, err) = em(&s, &["dlq", "list", "--topic", dlq]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "PARTITION",
            "OFFSET",
            "TIME",
            "SOURCE-TOPIC",
            "SOURCE-PARTITION",
            "SOURCE-OFFSET",
            "REASON",
            "DETAIL"
        ]
    );
    let rows: Vec<(&str, &str, &str, &str, &str)> = lines[1..4]
        .iter()
        .map(|l| (l[1], l[3], l[4], l[5], l[6]))
        .collect();
    let topic = s.topic.as_str();
    assert_eq!(
        rows,
        [
            ("0", topic, "2", "0", "missing_field"),
            ("1", topic, "2", "1", "invalid_encoding"),
            ("2", topic, "2", "2", "missing_field"),
        ],
        "{out}"
    );
    assert!(
        out.contains("3 of 3 matching dead letters shown (3 read"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["missing_field", "2"]))
            && out
                .lines()
                .any(|l| l.split_whitespace().eq(["invalid_encoding", "1"])),
        "{out}"
    );
    assert!(!out.contains("APPROVED"), "no bodies in a list: {out}");

    let (code, out, _) = em(
        &s,
        &[
            "dlq",
            "list",
            "--topic",
            dlq,
            "--reason",
            "invalid_encoding",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["matched"], 1);
    assert_eq!(list["letters"][0]["offset"], 1);
    let (_, out, _) = em(&s, &["dlq", "list", "--topic", dlq, "--limit", "1"]).await;
    assert!(out.contains("1 of 3 matching"), "{out}");
    let (_, out, _) = em(
        &s,
        &["dlq", "list", "--topic", dlq, "--since", "2999-01-01"],
    )
    .await;
    assert!(out.contains("0 of 0 matching dead letters shown"), "{out}");

    let (code, out, err) = em(&s, &["dlq", "show", "--topic", dlq, "--offset", "0"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("dead letter {dlq}/0/0")), "{out}");
    assert!(out.contains(&format!("source:   {topic}/2/0")), "{out}");
    assert!(out.contains("reason:   missing_field"), "{out}");
    assert!(out.contains("  em-dlq-format: rcp-v2"), "{out}");
    assert!(out.contains("key:      a"), "{out}");
    assert!(out.contains("not shown (add --body"), "{out}");
    assert!(!out.contains("APPROVED"), "no body without --body: {out}");
    let (code, out, _) = em(
        &s,
        &["dlq", "show", "--topic", dlq, "--offset", "0", "--body"],
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.contains(r#""new_value":"APPROVED""#), "{out}");
    let (code, _, err) = em(&s, &["dlq", "show", "--topic", dlq, "--offset", "7"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("no message at offset 7"), "{err}");
    let (code, _, err) = em(&s, &["dlq", "list", "--topic", "no-such-dlq"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("topic `no-such-dlq` does not exist"), "{err}");

    // The fix: the rule reads the topic in its real format.
    std::fs::write(s.topics.path().join("esoz.toml"), rule("esoz")).unwrap();
    let running = start(s.config(&s.db.url)).await;
    let (code, out, err) = em(&s, &["dlq", "redrive", "--topic", dlq]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("dry run: 3 dead letters would be sent back"),
        "{out}"
    );
    assert_eq!(
        s.db.stored_offsets_total().await,
        3,
        "a dry run sends nothing"
    );

    let (code, out, err) = em(&s, &["dlq", "redrive", "--topic", dlq, "--execute"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sent 3 dead letters back"), "{out}");
    wait_for(Duration::from_secs(60), || async {
        s.db.stored_offsets_total().await == 6
    })
    .await;
    // A and b stored once; the broken message is a dead letter again, saying where it came from.
    let stored_events = || async {
        s.db.client()
            .await
            .query(
                "SELECT entity_id, properties->'status'->>'new_value', source_partition \
                 FROM events ORDER BY entity_id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i32>(2),
                )
            })
            .collect::<Vec<_>>()
    };
    let expected = vec![
        ("a".to_owned(), "APPROVED".to_owned(), 2),
        ("b".to_owned(), "REJECTED".to_owned(), 2),
    ];
    assert_eq!(stored_events().await, expected);
    let (_, out, _) = em(&s, &["dlq", "list", "--topic", dlq, "--json"]).await;
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["matched"], 4, "{list}");
    let again = &list["letters"][3];
    assert_eq!(again["reason"], "unsupported_type", "{again}");
    assert_eq!(again["source_partition"], 2);
    assert_eq!(again["source_offset"], 4, "the redriven copy's own offset");
    assert_eq!(again["redriven_from"], format!("{dlq}/0/1"));
    assert_eq!(again["format"], "esoz");

    // Sent back a second time, the fixed messages change nothing.
    let (code, out, err) = em(
        &s,
        &[
            "dlq",
            "redrive",
            "--topic",
            dlq,
            "--reason",
            "missing_field",
            "--execute",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sent 2 dead letters back"), "{out}");
    wait_for(Duration::from_secs(60), || async {
        s.db.stored_offsets_total().await == 8
    })
    .await;
    running.stop().await;
    assert_eq!(stored_events().await, expected);
}

#[test]
fn every_operator_command_has_help() {
    for args in [
        &["status", "--help"][..],
        &["replay", "--help"],
        &["dlq", "--help"],
        &["dlq", "list", "--help"],
        &["dlq", "show", "--help"],
        &["dlq", "redrive", "--help"],
    ] {
        let out = std::process::Command::new(BIN).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}");
        assert!(text.contains("Usage: event-manager"), "{args:?}: {text}");
    }
    let out = std::process::Command::new(BIN)
        .args(["replay", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--to-latest",
        "--shift-by",
        "--by-duration",
        "--all-topics",
        "--execute",
        "--dry-run",
        "--to-datetime",
    ] {
        assert!(text.contains(option), "{option}: {text}");
    }
}
