//! What only a real broker does to a running consumer: partitions added to a topic, a topic
//! created that matches a rule's pattern, and retention removing messages the group has not
//! read yet.

use std::time::Duration;

use serde_json::json;

use crate::pipeline::{
    compare, esoz, produce, scripted_stream, setup, start, stored_rows, t, Setup,
};
use crate::support::kafka::{kafka, unique};
use crate::support::{fresh_database, wait_for};

/// One topic of a rule's pattern grows from 2 to 4 partitions while consumed, and a second
/// topic matching the pattern is created: both are consumed without a restart (the consumer
/// refreshes metadata every `topic.metadata.refresh.interval.ms`, 1 s here, 30 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_added_and_a_topic_created_while_consuming_are_picked_up() {
    let broker = kafka();
    let prefix = unique("grow");
    let (a, b, dlq) = (
        format!("{prefix}-a"),
        format!("{prefix}-b"),
        format!("{prefix}.dlq"),
    );
    broker.create_topic(&a, 2, &[]).await;
    broker.create_topic(&dlq, 1, &[]).await;
    let topics = tempfile::tempdir().unwrap();
    std::fs::write(
        topics.path().join("esoz.toml"),
        format!(
            "[[topic]]\npattern = \"^{prefix}-.*\"\nformat = \"esoz\"\ndead_letter_topic = \"{dlq}\"\ncapture = [\"employee_id\"]\n"
        ),
    )
    .unwrap();
    let s = Setup {
        _mock: None,
        bootstrap: broker.bootstrap(),
        topic: a.clone(),
        dlq,
        group: unique("group"),
        db: fresh_database().await,
        topics,
    };
    // The model's six partitions: 0, 1 → a/0, a/1; 2, 3 → a/2, a/3 (added); 4, 5 → b/0, b/1.
    let (stream, expected) = scripted_stream(6_000);
    let place = [(&a, 0), (&a, 1), (&a, 2), (&a, 3), (&b, 0), (&b, 1)];
    let expected: Vec<_> = {
        let mut rows: Vec<_> = expected
            .into_iter()
            .map(|r| {
                let p = place[r.partition() as usize].1;
                r.on_partition(p)
            })
            .collect();
        rows.sort();
        rows
    };
    // A producer made after the topic changed knows its partitions.
    let send = |model: std::ops::Range<usize>| {
        let (stream, place) = (&stream, &place);
        let producer = s.producer();
        async move {
            let producer = &producer;
            for m in model {
                let (topic, partition) = place[m];
                for (key, payload) in &stream[m] {
                    produce(producer, topic, partition, Some(key), payload).await;
                }
            }
        }
    };
    let sent = |model: std::ops::Range<usize>| -> i64 {
        stream[model].iter().map(|p| p.len() as i64).sum()
    };

    let mut config = s.config(&s.db.url);
    config
        .kafka
        .properties
        .insert("topic.metadata.refresh.interval.ms".into(), "1000".into());
    let running = start(config).await;
    send(0..2).await;
    wait_for(Duration::from_secs(120), || async {
        s.db.stored_offsets_total().await == sent(0..2)
    })
    .await;
    println!("grow: {} stored from {a} with 2 partitions", sent(0..2));

    broker.add_partitions(&a, 4).await;
    partitions_known(&s, &a, 4).await;
    send(2..4).await;
    wait_for(Duration::from_secs(120), || async {
        s.db.stored_offsets_total().await == sent(0..4)
    })
    .await;
    println!("grow: {} stored after {a} grew to 4 partitions", sent(0..4));

    broker.create_topic(&b, 2, &[]).await;
    partitions_known(&s, &b, 2).await;
    send(4..6).await;
    wait_for(Duration::from_secs(120), || async {
        s.db.stored_offsets_total().await == sent(0..6)
    })
    .await;
    println!("grow: {} stored after {b} was created", sent(0..6));
    running.stop().await;
    compare(
        "partition added, topic created",
        sent(0..6) as usize,
        &expected,
        &stored_rows(&s.db).await,
    );
}

/// Waits until the broker's metadata gives `topic` `n` partitions.
async fn partitions_known(s: &Setup, topic: &str, n: usize) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let probe: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &s.bootstrap)
        .create()
        .unwrap();
    let topic = topic.to_owned();
    wait_for(Duration::from_secs(30), || {
        let metadata = probe.fetch_metadata(Some(&topic), Duration::from_secs(5));
        let count = metadata
            .ok()
            .and_then(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map(|t| t.partitions().len())
            })
            .unwrap_or(0);
        async move { count == n }
    })
    .await;
}

/// Retention moves a partition's log start past the group's stored position while the group is
/// away: on its return the consumer continues at the log start, counts the messages it never
/// read in `retention_gap_messages_total{topic,partition}` (and warns once, naming the offsets),
/// and stores everything after the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_that_removes_unread_messages_is_reported_and_passed() {
    let s = setup().await;
    let producer = s.producer();
    // Every message is a new entity: one event each (from NULL), whatever came before.
    let message = |i: i64| {
        esoz(
            "Declaration",
            &format!("r{i:04}"),
            &json!("active"),
            t(i),
            None,
        )
    };
    for i in 0..100 {
        s.produce(&producer, 1, Some("k"), &message(i)).await;
    }
    let first = start(s.config(&s.db.url)).await;
    wait_for(Duration::from_secs(120), || async {
        s.db.stored_offsets_total().await == 100
    })
    .await;
    first.stop().await;

    // While the group is away: 200 more, and retention removes offsets 0..250.
    for i in 100..300 {
        s.produce(&producer, 1, Some("k"), &message(i)).await;
    }
    kafka().delete_records(&s.topic, 1, 250).await;

    let second = start(s.config(&s.db.url)).await;
    wait_for(Duration::from_secs(120), || async {
        s.db.stored_offsets_total().await == 300
    })
    .await;
    let gap = second
        .app
        .pipeline_metrics
        .retention_gap
        .with_label_values(&[s.topic.as_str(), "1"])
        .get();
    second.stop().await;

    let found: Vec<i64> =
        s.db.client()
            .await
            .query(
                "SELECT source_offset FROM events WHERE source_partition = 1 ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    let expected: Vec<i64> = (0..100).chain(250..300).collect();
    let distinct: std::collections::BTreeSet<i64> = found.iter().copied().collect();
    let lost = expected.iter().filter(|o| !distinct.contains(o)).count();
    println!(
        "retention gap: sent 300, removed unread 150 (offsets 100..=249), expected {}, found {}, \
         duplicates {}, lost {lost}, gap reported {gap}",
        expected.len(),
        found.len(),
        found.len() - distinct.len()
    );
    assert_eq!(found, expected);
    assert_eq!(gap, 150, "the gap is counted once, exactly");
}
