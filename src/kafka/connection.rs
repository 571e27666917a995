//! Why a Kafka client cannot connect, in one log line per cause.
//!
//! librdkafka reports a failing broker connection through the client's error callback, again at
//! every reconnect, in words that name OpenSSL or the protocol rather than the setting to fix.
//! [`ConnectionReporter`] turns each report into a [`Cause`] that names the configuration key,
//! logs a cause once (again only after [`REPEAT_AFTER`], or after the connection recovered and
//! failed anew), and remembers the current cause for `/readyz` (via the consumer's context).
//!
//! OpenSSL says only "certificate verify failed" for both an unknown CA and a hostname mismatch;
//! to tell them apart the reporter checks the broker's certificate once itself (rustls, with
//! `kafka.tls.ca_file`).

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::kafka::KafkaConfig;

/// A cause already logged is logged again after this long if it persists.
pub(crate) const REPEAT_AFTER: Duration = Duration::from_secs(600);

/// Why the connection to a broker failed, naming what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// The broker rejected the SASL credentials.
    Authentication {
        /// The mechanism used.
        mechanism: String,
    },
    /// The broker's certificate is not signed by the configured CA.
    UnknownCa {
        /// Whether `kafka.tls.ca_file` is set (else the system's trust store was used).
        ca_file: bool,
    },
    /// The broker's certificate does not name the host connected to.
    HostnameMismatch {
        /// The host name or address in `bootstrap.servers` or the broker's advertised listener.
        host: String,
    },
    /// The certificate could not be verified for another reason (e.g. expired).
    Certificate(String),
    /// The broker requires a client certificate and none (or an unknown one) was presented.
    ClientCertificate,
    /// TLS was spoken to a listener that does not speak it.
    TlsToPlaintextListener,
    /// Plain Kafka protocol was spoken to a TLS listener.
    PlaintextToTlsListener,
    /// Anything else, in librdkafka's words.
    Other(String),
}

impl Cause {
    /// Whether the cause is a setting (or a certificate) to fix rather than a transient failure
    /// such as a broker restarting.
    pub(crate) fn is_misconfiguration(&self) -> bool {
        !matches!(self, Cause::Other(_))
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Authentication { mechanism } => write!(
                f,
                "authentication failed: the broker rejected the SASL {mechanism} credentials \
                 (wrong kafka.sasl.username or kafka.sasl.password)"
            ),
            Cause::UnknownCa { ca_file: true } => f.write_str(
                "unknown CA: the broker's certificate is not signed by the CA in \
                 kafka.tls.ca_file",
            ),
            Cause::UnknownCa { ca_file: false } => f.write_str(
                "unknown CA: the broker's certificate is not signed by a CA of the system's \
                 trust store (set kafka.tls.ca_file), or does not name the broker's host",
            ),
            Cause::HostnameMismatch { host } => write!(
                f,
                "hostname mismatch: the broker's certificate does not name `{host}` (the host \
                 in kafka.bootstrap_servers or the broker's advertised listener)"
            ),
            Cause::Certificate(why) => write!(f, "the broker's certificate is not valid: {why}"),
            Cause::ClientCertificate => f.write_str(
                "the broker requires a client certificate it trusts: set kafka.tls.cert_file \
                 and kafka.tls.key_file",
            ),
            Cause::TlsToPlaintextListener => f.write_str(
                "protocol mismatch: TLS to a listener without TLS (kafka.security_protocol is \
                 ssl or sasl_ssl; the listener is plaintext or sasl_plaintext)",
            ),
            Cause::PlaintextToTlsListener => f.write_str(
                "protocol mismatch: plain Kafka protocol to a TLS listener (set \
                 kafka.security_protocol to ssl or sasl_ssl)",
            ),
            Cause::Other(text) => f.write_str(text),
        }
    }
}

/// What the reporter needs to know of the configuration.
#[derive(Debug, Clone, Default)]
struct Settings {
    /// Whether the clients speak TLS.
    tls: bool,
    mechanism: Option<String>,
    ca_file: Option<PathBuf>,
}

/// Classifies, deduplicates and logs connection errors of the clients made with it. Which
/// causes were logged is kept for the whole process, so that clients with reporters of their
/// own (the consumer, the dead-letter producer, the webhook producer) log a cause once between
/// them.
#[derive(Debug, Clone, Default)]
pub struct ConnectionReporter {
    settings: Arc<Settings>,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// The newest cause, until the connection recovers.
    current: Option<String>,
    /// Certificate checks already made: broker address → their verdict.
    probed: HashMap<String, Option<Cause>>,
}

/// Causes logged in this process (with the broker), and when.
static LOGGED: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);

fn first_report(key: String, now: Instant) -> bool {
    let mut logged = LOGGED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let logged = logged.get_or_insert_with(HashMap::new);
    let due = logged
        .get(&key)
        .is_none_or(|at| now.duration_since(*at) >= REPEAT_AFTER);
    if due {
        logged.insert(key, now);
    }
    due
}

impl ConnectionReporter {
    /// A reporter for clients made from `kafka`.
    pub fn new(kafka: &KafkaConfig) -> Self {
        Self {
            settings: Arc::new(Settings {
                tls: kafka.security_protocol.map_or_else(
                    || {
                        kafka
                            .properties
                            .get("security.protocol")
                            .is_some_and(|p| p.to_ascii_lowercase().ends_with("ssl"))
                    },
                    crate::kafka::SecurityProtocol::tls,
                ),
                mechanism: kafka
                    .sasl
                    .mechanism
                    .clone()
                    .or_else(|| kafka.properties.get("sasl.mechanism").cloned())
                    .or_else(|| kafka.properties.get("sasl.mechanisms").cloned()),
                ca_file: kafka
                    .tls
                    .ca_file
                    .clone()
                    .or_else(|| kafka.properties.get("ssl.ca.location").map(PathBuf::from)),
            }),
            state: Arc::default(),
        }
    }

    /// Handles librdkafka's error callback: logs the cause unless logged recently and returns
    /// it, or `None` for reports that are not about the connection.
    pub fn report(&self, error: &KafkaError, reason: &str) -> Option<Cause> {
        let code = error.rdkafka_error_code();
        let (broker, text) = split_broker(reason);
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            // The summary of the per-broker failures already reported; only news when no
            // per-broker cause is known.
            if lock(&self.state).current.is_some() {
                return None;
            }
        }
        let cause = self.classify(code, broker, text);
        self.record(cause, broker, text)
    }

    /// Handles librdkafka's log callback. A broker failure (facility `FAIL`) reaches the error
    /// callback too when librdkafka deems it an error, but a connection the broker closes during
    /// the handshake (plain protocol to a TLS listener) is only logged, at info: such lines are
    /// recorded like errors when they name a misconfiguration, and logged at debug otherwise.
    /// Returns the cause so recorded.
    pub fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) -> Option<Cause> {
        if fac == "FAIL" {
            let (broker, text) = split_broker(strip_thread(message));
            let cause = self.classify(None, broker, text);
            if cause.is_misconfiguration() {
                return self.record(cause, broker, text);
            }
            tracing::debug!(target: "librdkafka", fac, "{message}");
            return None;
        }
        match level {
            // Error events reach the error callback (see `report`).
            _ if fac == "ERROR" => tracing::debug!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
        }
        None
    }

    /// Remembers `cause` as the current one and logs it unless logged recently.
    fn record(&self, cause: Cause, broker: Option<&str>, text: &str) -> Option<Cause> {
        let shown = cause.to_string();
        lock(&self.state).current = Some(shown.clone());
        let key = format!("{} {shown}", broker.unwrap_or("-"));
        if first_report(key, Instant::now()) {
            let broker = broker.unwrap_or("-");
            let detail = strip_timing(text);
            if cause.is_misconfiguration() {
                tracing::error!(broker, detail, "kafka connection failed: {cause}");
            } else {
                tracing::warn!(broker, "kafka client error: {cause}");
            }
        }
        Some(cause)
    }

    /// Records that a broker connection works (the statistics show a broker up): the next
    /// failure is logged at once.
    pub fn connected(&self) {
        let mut state = lock(&self.state);
        if state.current.take().is_some() {
            state.probed.clear();
            drop(state);
            if let Some(logged) = LOGGED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_mut()
            {
                logged.clear();
            }
            tracing::info!("kafka connection established");
        }
    }

    /// The newest cause, until the connection recovers.
    pub fn current(&self) -> Option<String> {
        lock(&self.state).current.clone()
    }

    fn classify(&self, code: Option<RDKafkaErrorCode>, broker: Option<&str>, text: &str) -> Cause {
        let lower = text.to_ascii_lowercase();
        if code == Some(RDKafkaErrorCode::Authentication)
            || lower.contains("sasl authentication error")
            || lower.contains("authentication failed")
        {
            return Cause::Authentication {
                mechanism: self
                    .settings
                    .mechanism
                    .clone()
                    .unwrap_or_else(|| "PLAIN".to_owned()),
            };
        }
        if lower.contains("certificate verify failed")
            || lower.contains("could not be verified")
            || lower.contains("failed to verify broker certificate")
        {
            return self.diagnose_certificate(broker);
        }
        if lower.contains("client ssl authentication might be required")
            || lower.contains("certificate required")
            || lower.contains("alert bad certificate")
            || lower.contains("alert unknown ca")
        {
            return Cause::ClientCertificate;
        }
        if lower.contains("connecting to a plaintext broker listener")
            || lower.contains("wrong version number")
            || lower.contains("packet length too long")
            || lower.contains("record layer failure")
        {
            return Cause::TlsToPlaintextListener;
        }
        // A TLS listener closes a connection that does not start with a TLS handshake; when it
        // closes during the first request librdkafka only says "Disconnected".
        if lower.contains("connecting to a ssl listener")
            || (!self.settings.tls
                && lower.starts_with("disconnected")
                && lower.contains("in state apiversion_query"))
        {
            return Cause::PlaintextToTlsListener;
        }
        Cause::Other(strip_timing(text).to_owned())
    }

    fn diagnose_certificate(&self, broker: Option<&str>) -> Cause {
        let ca_file = self.settings.ca_file.clone();
        let fallback = Cause::UnknownCa {
            ca_file: ca_file.is_some(),
        };
        let (Some(broker), Some(ca)) = (broker, ca_file) else {
            return fallback;
        };
        if let Some(verdict) = lock(&self.state).probed.get(broker) {
            return verdict.clone().unwrap_or(fallback);
        }
        let verdict = probe_certificate(broker, &ca);
        lock(&self.state)
            .probed
            .insert(broker.to_owned(), verdict.clone());
        verdict.unwrap_or(fallback)
    }
}

/// The context of every Kafka client but the pipeline's consumer (which has its own and hands
/// its errors to the same reporter).
#[derive(Debug, Clone)]
pub struct ClientErrors(pub ConnectionReporter);

impl ClientContext for ClientErrors {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.0.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.report(&error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        if statistics.brokers.values().any(|b| b.state == "UP") {
            self.0.connected();
        }
    }
}

impl ConsumerContext for ClientErrors {}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Drops the `[thrd:…]: ` with which librdkafka's log lines name their thread (its
/// `log.thread.name`, on by default); error reports have none.
fn strip_thread(message: &str) -> &str {
    message
        .strip_prefix("[thrd:")
        .and_then(|rest| rest.split_once("]: "))
        .map_or(message, |(_, text)| text)
}

/// `sasl_ssl://host:9094/bootstrap: text` → (`host:9094`, `text`).
fn split_broker(reason: &str) -> (Option<&str>, &str) {
    let Some((head, text)) = reason.split_once(": ") else {
        return (None, reason);
    };
    // librdkafka names a broker `proto://host:port/id`, without `proto://` for plaintext.
    let rest = head.split_once("://").map_or(head, |(_, rest)| rest);
    if rest.contains(' ') || !rest.contains('/') || !rest.contains(':') {
        return (None, reason);
    }
    let addr = rest.split('/').next().unwrap_or(rest);
    (Some(addr), text)
}

/// Drops librdkafka's `(after 12ms in state X)` and `(N identical error(s) suppressed)`, which
/// differ between repeats of one failure.
fn strip_timing(text: &str) -> &str {
    let mut end = text.len();
    for marker in [" (after ", " (", ": "] {
        if let Some(at) = text[..end].rfind(marker) {
            let tail = &text[at..end];
            if tail.contains("ms in state") || tail.contains("suppressed") {
                end = at;
            }
        }
    }
    text[..end].trim_end()
}

/// Checks the broker's certificate with rustls against `ca`: `Some(cause)` when rustls names
/// why it is not valid for `broker`, `None` when it finds nothing (or cannot connect).
fn probe_certificate(broker: &str, ca: &Path) -> Option<Cause> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{CertificateError, Error};

    let host = broker.rsplit_once(':').map_or(broker, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).ok()? {
        roots.add(cert.ok()?).ok()?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned()).ok()?;
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    let addr = broker.to_socket_addrs().ok()?.next()?;
    let mut socket = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    socket
        .set_write_timeout(Some(Duration::from_secs(3)))
        .ok()?;
    // The handshake is all that is needed; nothing is sent to the broker.
    let outcome = rustls::Stream::new(&mut tls, &mut socket).flush();
    let err = outcome.err()?;
    let tls_err = err.get_ref()?.downcast_ref::<Error>()?;
    match tls_err {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            Some(Cause::UnknownCa { ca_file: true })
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => Some(Cause::HostnameMismatch {
            host: host.to_owned(),
        }),
        Error::InvalidCertificate(other) => Some(Cause::Certificate(format!("{other:?}"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_and_text_are_split_and_timings_dropped() {
        let (broker, text) = split_broker(
            "sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: Authentication \
             failed (after 5ms in state AUTH_REQ)",
        );
        assert_eq!(broker, Some("127.0.0.1:9094"));
        assert_eq!(
            strip_timing(text),
            "SASL authentication error: Authentication failed"
        );
        assert_eq!(
            strip_timing("Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT, 4 identical error(s) suppressed)"),
            "Connect to ipv4#127.0.0.1:1 failed: Connection refused"
        );
        assert_eq!(
            split_broker("1/1 brokers are down"),
            (None, "1/1 brokers are down")
        );
        assert_eq!(
            split_broker("127.0.0.1:9092/bootstrap: Disconnected"),
            (Some("127.0.0.1:9092"), "Disconnected")
        );
        assert_eq!(
            split_broker(strip_thread(
                "[thrd:ssl://127.0.0.1:9093/bootstrap]: ssl://127.0.0.1:9093/bootstrap: Disconnected"
            )),
            (Some("127.0.0.1:9093"), "Disconnected")
        );
        assert_eq!(strip_thread("[thrd:app]"), "[thrd:app]");
    }

    #[test]
    fn librdkafka_reports_are_classified_by_cause() {
        let reporter = ConnectionReporter::new(&KafkaConfig {
            sasl: crate::kafka::SaslConfig {
                mechanism: Some("SCRAM-SHA-512".into()),
                ..Default::default()
            },
            ..KafkaConfig::default()
        });
        let global = |code| KafkaError::Global(code);
        let cases = [
            (
                global(RDKafkaErrorCode::Authentication),
                "sasl_ssl://h:1/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 3ms in state AUTH_REQ)",
                "authentication failed: the broker rejected the SASL SCRAM-SHA-512 credentials",
            ),
            (
                global(RDKafkaErrorCode::SSL),
                "ssl://h:1/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 4ms in state SSL_HANDSHAKE)",
                "unknown CA",
            ),
            (
                global(RDKafkaErrorCode::BrokerTransportFailure),
                "ssl://h:1/bootstrap: SSL handshake failed: Disconnected: connecting to a PLAINTEXT broker listener? (after 2ms in state SSL_HANDSHAKE)",
                "TLS to a listener without TLS",
            ),
            (
                global(RDKafkaErrorCode::BrokerTransportFailure),
                "h:1/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10 (see api.version.request) (after 1ms in state APIVERSION_QUERY)",
                "plain Kafka protocol to a TLS listener",
            ),
            (
                global(RDKafkaErrorCode::SSL),
                "ssl://h:1/bootstrap: SSL handshake failed: error:0A00045C:SSL routines::tlsv13 alert certificate required: SSL alert number 116",
                "requires a client certificate",
            ),
        ];
        for (error, reason, want) in cases {
            let cause = reporter.report(&error, reason).expect(reason);
            assert!(cause.to_string().contains(want), "{reason} → {cause}");
        }
        // A handshake the broker cuts is only logged by librdkafka (facility FAIL, at info),
        // its thread named first (as librdkafka 2.12 words it on a plaintext client's
        // connection to the real broker's SSL and SASL_SSL listeners).
        for message in [
            "[thrd:h:2/bootstrap]: h:2/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN (after 3ms in state APIVERSION_QUERY)",
            "[thrd:h:3/bootstrap]: h:3/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN (after 7ms in state APIVERSION_QUERY, 1 identical error(s) suppressed)",
            "[thrd:h:4/bootstrap]: h:4/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10 (see api.version.request) (after 1ms in state APIVERSION_QUERY)",
            "h:5/bootstrap: Disconnected (after 2ms in state APIVERSION_QUERY)",
        ] {
            let cause = reporter
                .log(RDKafkaLogLevel::Info, "FAIL", message)
                .expect(message);
            assert_eq!(cause, Cause::PlaintextToTlsListener, "{message}");
        }
        assert_eq!(
            reporter.log(
                RDKafkaLogLevel::Info,
                "FAIL",
                "[thrd:h:2/1]: h:2/1: Disconnected (after 600012ms in state UP)"
            ),
            None,
            "an idle connection closed is no misconfiguration"
        );
        // The summary is no news while a per-broker cause is known.
        assert_eq!(
            reporter.report(
                &global(RDKafkaErrorCode::AllBrokersDown),
                "1/1 brokers are down"
            ),
            None
        );
        assert!(reporter.current().is_some());
        reporter.connected();
        assert_eq!(reporter.current(), None);
    }
}
