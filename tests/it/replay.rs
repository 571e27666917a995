//! `replay`: moving a group's stored positions back, resolving times, and rebuilding an EventDB
//! while the consumer runs.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use event_manager::replay::{self, ReplayTarget, TimeLookup};
use rdkafka::producer::FutureRecord;

use crate::pipeline::{
    compare, count, scripted_stream, setup, setup_mock, start, stored_rows, Setup,
};
use crate::support::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_the_earliest_offsets_rebuilds_an_emptied_eventdb() {
    let s = setup().await;
    let (stream, expected) = scripted_stream(1_500);
    let total: i64 = stream.iter().map(|p| p.len() as i64).sum();
    let producer = s.producer();
    for (p, msgs) in stream.iter().enumerate() {
        for (key, payload) in msgs {
            s.produce(&producer, p as i32, Some(key), payload).await;
        }
    }
    let config = s.config(&s.db.url);
    let running = start(config.clone()).await;
    wait_for(Duration::from_secs(60), || async {
        s.db.stored_offsets_total().await == total
    })
    .await;
    compare(
        "before the replay",
        total as usize,
        &expected,
        &stored_rows(&s.db).await,
    );

    // The EventDB is lost; the topic still holds every message.
    s.db.client()
        .await
        .batch_execute("TRUNCATE events, entity_state")
        .await
        .unwrap();
    let plans = replay::plan(
        &config.kafka,
        &s.db.store,
        &s.group,
        &s.topic,
        &[],
        ReplayTarget::Earliest,
    )
    .await
    .unwrap();
    assert_eq!(plans.len(), 6);
    assert!(plans
        .iter()
        .all(|p| p.target == 0 && p.stored == Some(p.high)));
    replay::apply(&s.db.store, &s.group, &plans).await.unwrap();

    // The idle consumer follows the moved positions and rebuilds exactly the same rows.
    wait_for(Duration::from_secs(60), || async {
        s.db.stored_offsets_total().await == total
            && count(&s.db, "SELECT count(*) FROM events").await == expected.len() as i64
    })
    .await;
    running.stop().await;
    compare(
        "replayed from the earliest",
        total as usize,
        &expected,
        &stored_rows(&s.db).await,
    );
}

/// The real broker answers by time (ListOffsets by timestamp).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_time_asks_the_broker() {
    replay_by_time_finds_the_first_message_at_or_after_it(setup().await, TimeLookup::Broker).await;
}

/// The MockCluster cannot: message timestamps are searched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_time_searches_timestamps_when_the_broker_cannot_answer() {
    replay_by_time_finds_the_first_message_at_or_after_it(setup_mock().await, TimeLookup::Search)
        .await;
}

async fn replay_by_time_finds_the_first_message_at_or_after_it(s: Setup, how: TimeLookup) {
    let producer = s.producer();
    let base = Utc
        .with_ymd_and_hms(2024, 5, 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis();
    for i in 0..50i64 {
        let record = FutureRecord::<str, [u8]>::to(&s.topic)
            .partition(2)
            .payload(b"{}")
            .timestamp(base + i * 60_000);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }
    let config = s.config(&s.db.url);
    let at = |minutes: i64| {
        ReplayTarget::Time(Utc.timestamp_millis_opt(base + minutes * 60_000).unwrap())
    };
    for (minutes, expected) in [(0, 0), (17, 17), (49, 49), (-5, 0), (100, 50)] {
        let plans = replay::plan(&config.kafka, &s.db.store, "g", &s.topic, &[2], at(minutes))
            .await
            .unwrap();
        assert_eq!(plans.len(), 1);
        println!(
            "replay --to-time minute {minutes}: expected offset {expected}, found {} ({:?})",
            plans[0].target, plans[0].time_lookup
        );
        assert_eq!(plans[0].target, expected, "minute {minutes}");
        // After the last message every broker's "none at or after" is believed once the last
        // message's timestamp confirms it (the MockCluster answers that for any time).
        let how = if minutes > 49 {
            TimeLookup::Broker
        } else {
            how
        };
        assert_eq!(plans[0].time_lookup, Some(how), "minute {minutes}");
    }
    // Half a minute after message 17 → message 18.
    let t = ReplayTarget::Time(
        Utc.timestamp_millis_opt(base + 17 * 60_000 + 30_000)
            .unwrap(),
    );
    let plans = replay::plan(&config.kafka, &s.db.store, "g", &s.topic, &[2], t)
        .await
        .unwrap();
    assert_eq!(plans[0].target, 18);
    assert_eq!(plans[0].time_lookup, Some(how));

    let err = replay::plan(
        &config.kafka,
        &s.db.store,
        "g",
        &s.topic,
        &[9],
        ReplayTarget::Earliest,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no partition 9"), "{err}");
    let plans = replay::plan(
        &config.kafka,
        &s.db.store,
        "g",
        &s.topic,
        &[2],
        ReplayTarget::Offset(1_000),
    )
    .await
    .unwrap();
    assert_eq!(
        plans[0].target, 50,
        "offsets are clamped to what the broker retains"
    );
}

/// `replay` builds its Kafka client from `kafka.properties` like every other client (so it can
/// reach a secured cluster): a property it would have ignored now takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_applies_kafka_properties() {
    let s = setup().await;
    let mut config = s.config(&s.db.url);
    let plan = |config: event_manager::config::Config| {
        let store = s.db.store.clone();
        let (group, topic) = (s.group.clone(), s.topic.clone());
        async move {
            replay::plan(
                &config.kafka,
                &store,
                &group,
                &topic,
                &[],
                ReplayTarget::Earliest,
            )
            .await
        }
    };
    assert!(plan(config.clone()).await.is_ok());
    config
        .kafka
        .properties
        .insert("security.protocol".into(), "carrier-pigeon".into());
    let err = plan(config).await.unwrap_err().to_string();
    assert!(
        err.contains("security.protocol") && err.contains("carrier-pigeon"),
        "{err}"
    );
}
