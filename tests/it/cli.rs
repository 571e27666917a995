//! The command-line contracts scripts depend on: `selector eval`, `selector check`, and start-up
//! failures that name the key, file, topic and column.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_event-manager");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("EM_CONFIG")
        .output()
        .expect("run event-manager");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn eval(props: &str, selector: &str, explain: bool) -> (i32, String, String) {
    let mut args = vec!["selector", "eval", "--properties", props];
    if explain {
        args.push("--explain");
    }
    args.extend(["--", selector]);
    run(&args)
}

#[test]
fn selector_eval_prints_true_or_false_and_explains_three_values() {
    let props = r#"{"messageType":"EHealthContextEvent","resourceVersion":3,"ratio":0.5,"urgent":true,"gone":null}"#;
    let cases = [
        (
            "messageType = 'EHealthContextEvent' AND resourceVersion > 2",
            "true",
            "true",
        ),
        (
            "resourceVersion = 3.0 AND ratio < 1 AND urgent",
            "true",
            "true",
        ),
        ("resourceVersion = '3'", "false", "unknown"),
        ("missing > 1", "false", "unknown"),
        ("gone IS NULL AND missing IS NULL", "true", "true"),
        ("NOT (missing > 1)", "false", "unknown"),
        (
            "messageType LIKE 'EHealth%Event' AND messageType NOT IN ('x', 'y')",
            "true",
            "true",
        ),
        ("resourceVersion BETWEEN 4 AND 9", "false", "false"),
        ("resourceVersion / 0 > 1", "false", "unknown"),
        // Division is in double whatever the operand types, as the reference brokers do.
        ("resourceVersion / 2 = 1.5", "true", "true"),
        ("resourceVersion / 2 = 1", "false", "false"),
    ];
    for (selector, plain, explained) in cases {
        let (code, out, err) = eval(props, selector, false);
        assert_eq!(
            (code, out.trim(), err.as_str()),
            (0, plain, ""),
            "{selector}"
        );
        let (code, out, _) = eval(props, selector, true);
        assert_eq!((code, out.trim()), (0, explained), "{selector}");
    }
}

#[test]
fn selector_eval_errors_go_to_stderr_with_nothing_on_stdout() {
    for (props, selector, expected) in [
        ("{", "a = 1", "not valid JSON"),
        ("[1]", "a = 1", "JSON object"),
        (r#"{"a": [1]}"#, "a = 1", "arrays and objects"),
        ("{}", "a = ", "column 5"),
        ("{}", "a IN ()", "column"),
    ] {
        let (code, out, err) = eval(props, selector, false);
        assert_ne!(code, 0, "{selector}");
        assert_eq!(out, "", "{selector}");
        assert!(err.contains(expected), "{selector}: {err}");
    }
}

#[test]
fn selector_check_names_the_column() {
    let (code, _, _) = run(&[
        "selector",
        "check",
        "a BETWEEN 1 AND 2 OR b LIKE 'x!_%' ESCAPE '!'",
    ]);
    assert_eq!(code, 0);
    let (code, out, err) = run(&["selector", "check", "a = 1 AND (b > 2"]);
    assert_ne!(code, 0);
    assert_eq!(out, "");
    assert!(err.contains("column 17"), "{err}");
}

#[test]
fn an_invalid_selector_stops_start_up_naming_file_topic_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[[topic]]\nname = \"t1\"\nformat = \"esoz\"\ndead_letter_topic = \"t1.dlq\"\nselector = \"status = 'x' AND\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("run")
        .env("EM_PIPELINE__TOPICS_DIR", dir.path())
        .env_remove("EM_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("t1") && err.contains("column 17"),
        "{err}"
    );
}

#[test]
fn a_bad_config_value_stops_start_up_naming_the_key() {
    let out = Command::new(BIN)
        .arg("run")
        .env("EM_PIPELINE__BATCH_SIZE", "0")
        .env_remove("EM_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pipeline.batch_size"), "{err}");
}

fn config_check(env: &[(&str, &str)]) -> (i32, String, String) {
    let topics = concat!(env!("CARGO_MANIFEST_DIR"), "/topics");
    let out = Command::new(BIN)
        .args(["config", "check"])
        .env_clear()
        .env("EM_PIPELINE__TOPICS_DIR", topics)
        .envs(env.iter().copied())
        .output()
        .expect("run event-manager");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const TOKEN_KEY: (&str, &str) = (
    "EM_AUTH__HS256_SECRET",
    "config-check-test-key-of-at-least-32-bytes",
);

#[test]
fn config_check_reports_what_deployments_depend_on() {
    let (code, out, err) = config_check(&[
        TOKEN_KEY,
        ("EM_DATABASE__POOL_SIZE", "5"),
        ("EM_HTTP__BIND", "0.0.0.0:9123"),
        ("EM_KAFKA__GROUP_ID", "group-under-test"),
        ("EM_PIPELINE__SHUTDOWN_GRACE", "12s"),
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert_eq!(report["http_port"], 9123);
    assert_eq!(report["kafka_group_id"], "group-under-test");
    assert_eq!(report["database_pool_size"], 5);
    // Two pools of pool_size each: ingestion and the query API.
    assert_eq!(report["database_connections"], 10);
    assert_eq!(report["shutdown_grace_seconds"], 12.0);
    let rules = report["topic_rules"].as_array().unwrap();
    assert!(rules.iter().any(|r| r["name"] == "event_manager_topic"
        && r["file"] == "esoz.toml"
        && r["partitions"] == 6));
    for bridge in report["webhook_topics"].as_array().unwrap() {
        assert_eq!(bridge["read_by_rule"], true, "{bridge}");
    }
    assert!(
        !out.contains(TOKEN_KEY.1),
        "the check printed the token key"
    );
}

#[test]
fn config_check_names_the_key_and_says_when_no_rule_reads_a_bridge_topic() {
    let (code, out, err) = config_check(&[TOKEN_KEY, ("EM_PIPELINE__NOPE", "1")]);
    assert_ne!(code, 0);
    assert_eq!(out, "");
    assert!(err.contains("nope"), "{err}");
    // `run` refuses to start without a token key, so the check does too.
    let (code, _, err) = config_check(&[]);
    assert_ne!(code, 0);
    assert!(err.contains("auth.hs256_secret"), "{err}");
    let (code, out, err) = config_check(&[TOKEN_KEY, ("EM_WEBHOOKS__SFS__TOPIC", "unread.topic")]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sfs = &report["webhook_topics"][0];
    assert_eq!(
        (&sfs["bridge"], &sfs["read_by_rule"]),
        (&"sfs".into(), &false.into())
    );
}
