//! `scripts/real-kafka` itself: what it prints, and a client producing and consuming on it.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;

use crate::support::kafka::{kafka, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_prints_its_facts_then_serves_a_producer_and_a_consumer() {
    let broker = kafka();
    let keys: Vec<&str> = broker
        .lines()
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(
        keys,
        [
            "PLAINTEXT",
            "SSL",
            "SASL_SSL",
            "SSL_SERVER_AUTH",
            "CA_FILE",
            "CLIENT_CERT",
            "CLIENT_KEY",
            "SCRAM_USER"
        ],
        "{:?}",
        broker.lines()
    );
    let l = broker.listeners();
    for addr in [&l.plaintext, &l.ssl, &l.sasl_ssl, &l.ssl_server_auth] {
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        std::net::TcpStream::connect(addr.as_str())
            .unwrap_or_else(|e| panic!("{addr} accepts connections: {e}"));
    }
    for (file, begins) in [
        (&l.ca_file, "-----BEGIN CERTIFICATE-----"),
        (&l.client_cert, "-----BEGIN CERTIFICATE-----"),
        (&l.client_key, "-----BEGIN PRIVATE KEY-----"),
    ] {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        assert!(text.starts_with(begins), "{file:?} is PEM");
    }
    assert!(!l.scram_user.is_empty() && l.scram_password.len() >= 16);

    let topic = unique("smoke");
    broker.create_topic(&topic, 3, &[]).await;
    let producer = broker.producer();
    let sent: Vec<String> = (0..30).map(|i| format!("message {i}")).collect();
    for (i, text) in sent.iter().enumerate() {
        producer
            .send(
                FutureRecord::<str, str>::to(&topic)
                    .partition((i % 3) as i32)
                    .payload(text),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", unique("smoke-group"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.len() < sent.len() && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("consume");
            received.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
        }
    }
    received.sort();
    let mut expected = sent.clone();
    expected.sort();
    println!(
        "smoke: sent {}, received {} on {}",
        sent.len(),
        received.len(),
        l.plaintext
    );
    assert_eq!(received, expected);
}
