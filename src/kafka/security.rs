//! How every Kafka client authenticates: `kafka.security_protocol`, `kafka.sasl.*` and
//! `kafka.tls.*` (README, "Connecting to a secured cluster"), turned into librdkafka properties.
//!
//! The binary's librdkafka is built with OpenSSL (vendored) and without Cyrus SASL or libcurl:
//! SASL PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 work; GSSAPI (Kerberos) and OAUTHBEARER with OIDC
//! do not, and are refused by configuration validation rather than failing at connect time.

use std::ffi::{CStr, CString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config_error::ConfigError;
use crate::secret::Secret;

/// `kafka.security_protocol`: how the connection to the brokers is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    Plaintext,
    /// TLS (with a client certificate when `kafka.tls.cert_file` is set).
    Ssl,
    /// SASL without TLS (the password crosses the network in clear text with PLAIN).
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether the connection uses TLS.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether the connection authenticates with SASL.
    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SecurityProtocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.to_ascii_lowercase().as_str() {
            "plaintext" => Ok(SecurityProtocol::Plaintext),
            "ssl" => Ok(SecurityProtocol::Ssl),
            "sasl_plaintext" => Ok(SecurityProtocol::SaslPlaintext),
            "sasl_ssl" => Ok(SecurityProtocol::SaslSsl),
            _ => Err(serde::de::Error::custom(format!(
                "unknown security protocol `{text}`: expected plaintext, ssl, sasl_plaintext or \
                 sasl_ssl"
            ))),
        }
    }
}

/// SASL mechanisms this binary's librdkafka supports.
pub(crate) const SASL_MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// `kafka.sasl.*`: SASL credentials.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaslConfig {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: Option<String>,
    /// The SASL user name.
    pub username: Option<String>,
    /// The password (prefer `password_file`).
    pub password: Option<Secret>,
    /// A file holding the password (e.g. a mounted Kubernetes Secret), read when a client is
    /// made; one trailing line break is ignored.
    pub password_file: Option<PathBuf>,
}

/// `kafka.tls.*`: certificates (PEM files).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The CA that signed the brokers' certificates (default: the system's trust store).
    pub ca_file: Option<PathBuf>,
    /// The client certificate, for brokers that require one (mTLS).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (unencrypted PEM; an encrypted one takes
    /// `kafka.properties."ssl.key.password"`).
    pub key_file: Option<PathBuf>,
}

/// librdkafka properties the keys above own: `kafka.properties` may set them only while the
/// corresponding key is unset.
const OWNED_PROPERTIES: &[(&str, &str)] = &[
    ("security.protocol", "kafka.security_protocol"),
    ("sasl.mechanism", "kafka.sasl.mechanism"),
    ("sasl.mechanisms", "kafka.sasl.mechanism"),
    ("sasl.username", "kafka.sasl.username"),
    ("sasl.password", "kafka.sasl.password"),
    ("ssl.ca.location", "kafka.tls.ca_file"),
    ("ssl.certificate.location", "kafka.tls.cert_file"),
    ("ssl.key.location", "kafka.tls.key_file"),
];

/// The security settings of [`crate::kafka::KafkaConfig`], borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Security<'a> {
    /// `kafka.security_protocol`.
    pub protocol: Option<SecurityProtocol>,
    /// `kafka.sasl`.
    pub sasl: &'a SaslConfig,
    /// `kafka.tls`.
    pub tls: &'a TlsConfig,
}

impl Security<'_> {
    /// Checks the combination of keys (files are read when a client is made, see
    /// [`Self::properties`]).
    pub(crate) fn validate(
        &self,
        properties: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: key.to_owned(),
            reason,
        };
        for (property, key) in OWNED_PROPERTIES {
            if properties.contains_key(*property) && self.key_is_set(key) {
                return Err(invalid(
                    &format!("kafka.properties.{property}"),
                    format!("conflicts with `{key}`: set one of them"),
                ));
            }
        }
        let sasl = self.sasl;
        let sasl_set = sasl.mechanism.is_some()
            || sasl.username.is_some()
            || sasl.password.is_some()
            || sasl.password_file.is_some();
        let tls_set = self.tls.ca_file.is_some()
            || self.tls.cert_file.is_some()
            || self.tls.key_file.is_some();
        let protocol = self.protocol;
        if sasl_set && !protocol.is_some_and(SecurityProtocol::sasl) {
            return Err(invalid(
                "kafka.security_protocol",
                "must be `sasl_ssl` or `sasl_plaintext` when kafka.sasl.* is set".into(),
            ));
        }
        if tls_set && !protocol.is_some_and(SecurityProtocol::tls) {
            return Err(invalid(
                "kafka.security_protocol",
                "must be `ssl` or `sasl_ssl` when kafka.tls.* is set".into(),
            ));
        }
        if protocol.is_some_and(SecurityProtocol::sasl) {
            let Some(mechanism) = sasl.mechanism.as_deref() else {
                return Err(invalid(
                    "kafka.sasl.mechanism",
                    format!(
                        "is required with security protocol {}: one of {}",
                        protocol.map_or("", SecurityProtocol::as_str),
                        SASL_MECHANISMS.join(", ")
                    ),
                ));
            };
            if !SASL_MECHANISMS.contains(&mechanism) {
                let why = match mechanism.to_ascii_uppercase().as_str() {
                    "GSSAPI" => "Kerberos (GSSAPI) is not built into this binary".to_owned(),
                    "OAUTHBEARER" => "OAUTHBEARER (OIDC) is not built into this binary".to_owned(),
                    upper if SASL_MECHANISMS.contains(&upper) => {
                        format!("mechanisms are upper case: `{upper}`")
                    }
                    _ => format!("unknown mechanism `{mechanism}`"),
                };
                return Err(invalid(
                    "kafka.sasl.mechanism",
                    format!("{why}; supported: {}", SASL_MECHANISMS.join(", ")),
                ));
            }
            if sasl.username.as_deref().is_none_or(|u| u.trim().is_empty()) {
                return Err(invalid(
                    "kafka.sasl.username",
                    format!("is required with SASL mechanism {mechanism}"),
                ));
            }
            match (&sasl.password, &sasl.password_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "kafka.sasl.password_file",
                        "set either kafka.sasl.password or kafka.sasl.password_file".into(),
                    ))
                }
                (None, None) => {
                    return Err(invalid(
                        "kafka.sasl.password",
                        format!(
                            "is required with SASL mechanism {mechanism} (or \
                             kafka.sasl.password_file)"
                        ),
                    ))
                }
                _ => {}
            }
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => Err(invalid(
                "kafka.tls.key_file",
                "is required with kafka.tls.cert_file".into(),
            )),
            (None, Some(_)) => Err(invalid(
                "kafka.tls.cert_file",
                "is required with kafka.tls.key_file".into(),
            )),
            _ => Ok(()),
        }
    }

    fn key_is_set(&self, key: &str) -> bool {
        match key {
            "kafka.security_protocol" => self.protocol.is_some(),
            "kafka.sasl.mechanism" => self.sasl.mechanism.is_some(),
            "kafka.sasl.username" => self.sasl.username.is_some(),
            "kafka.sasl.password" => {
                self.sasl.password.is_some() || self.sasl.password_file.is_some()
            }
            "kafka.tls.ca_file" => self.tls.ca_file.is_some(),
            "kafka.tls.cert_file" => self.tls.cert_file.is_some(),
            "kafka.tls.key_file" => self.tls.key_file.is_some(),
            _ => false,
        }
    }

    /// The librdkafka properties of these settings. Reads `kafka.sasl.password_file` and checks
    /// that the certificate files are readable, so that a missing file names its key.
    pub fn properties(&self) -> Result<Vec<(&'static str, Property)>, SecurityError> {
        let mut out = Vec::new();
        let Some(protocol) = self.protocol else {
            return Ok(out);
        };
        out.push(("security.protocol", Property::plain(protocol.as_str())));
        if protocol.sasl() {
            if let Some(mechanism) = &self.sasl.mechanism {
                out.push(("sasl.mechanism", Property::plain(mechanism)));
            }
            if let Some(username) = &self.sasl.username {
                out.push(("sasl.username", Property::plain(username)));
            }
            if let Some(password) = &self.sasl.password {
                out.push(("sasl.password", Property::Secret(password.clone())));
            } else if let Some(file) = &self.sasl.password_file {
                out.push((
                    "sasl.password",
                    Property::Secret(read_password("kafka.sasl.password_file", file)?),
                ));
            }
        }
        for (key, property, file) in [
            ("kafka.tls.ca_file", "ssl.ca.location", &self.tls.ca_file),
            (
                "kafka.tls.cert_file",
                "ssl.certificate.location",
                &self.tls.cert_file,
            ),
            ("kafka.tls.key_file", "ssl.key.location", &self.tls.key_file),
        ] {
            if let Some(file) = file {
                readable(key, file)?;
                out.push((property, Property::plain(&file.to_string_lossy())));
            }
        }
        Ok(out)
    }
}

/// A librdkafka property value; secrets are never shown by `Debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Property {
    /// An ordinary value.
    Plain(String),
    /// A password.
    Secret(Secret),
}

impl Property {
    fn plain(value: &str) -> Self {
        Property::Plain(value.to_owned())
    }

    /// The value to hand to librdkafka.
    pub(crate) fn expose(&self) -> &str {
        match self {
            Property::Plain(v) => v,
            Property::Secret(s) => s.expose(),
        }
    }
}

/// A file a security key names cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {reason}")]
pub struct SecurityError {
    /// The key.
    pub key: &'static str,
    /// What is wrong with its file (never its contents).
    pub reason: String,
}

fn readable(key: &'static str, file: &Path) -> Result<(), SecurityError> {
    std::fs::File::open(file)
        .map(drop)
        .map_err(|e| SecurityError {
            key,
            reason: format!("cannot read {}: {e}", file.display()),
        })
}

fn read_password(key: &'static str, file: &Path) -> Result<Secret, SecurityError> {
    let text = std::fs::read_to_string(file).map_err(|e| SecurityError {
        key,
        reason: format!("cannot read {}: {e}", file.display()),
    })?;
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(SecurityError {
            key,
            reason: format!("{} is empty", file.display()),
        });
    }
    Ok(Secret::new(password))
}

/// How often a running client's `kafka.sasl.password_file` is read again.
pub(crate) const PASSWORD_FILE_CHECK: Duration = Duration::from_secs(5);

/// `kafka.sasl.password_file`, read again while the process runs, so that a rotated secret (a
/// mounted Kubernetes Secret is updated in place) reaches running clients without a restart:
/// librdkafka uses the new password from the next authentication.
#[derive(Debug)]
pub struct PasswordFile {
    username: String,
    path: PathBuf,
    /// When the file was last read, and the password it held.
    state: Mutex<(Instant, Secret)>,
}

impl PasswordFile {
    /// The watch of `sasl.password_file`, when SASL with a password file is configured.
    pub fn watch(sasl: &SaslConfig) -> Option<Self> {
        let path = sasl.password_file.clone()?;
        let username = sasl.username.clone()?;
        let current = read_password("kafka.sasl.password_file", &path).ok()?;
        Some(Self {
            username,
            path,
            state: Mutex::new((Instant::now(), current)),
        })
    }

    /// Reads the file again if [`PASSWORD_FILE_CHECK`] has passed; the new password when it
    /// changed.
    pub fn changed(&self) -> Option<Secret> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.0.elapsed() < PASSWORD_FILE_CHECK {
            return None;
        }
        state.0 = Instant::now();
        match read_password("kafka.sasl.password_file", &self.path) {
            Ok(password) if password != state.1 => {
                state.1 = password.clone();
                Some(password)
            }
            Ok(_) => None,
            // Mid-rotation (the kubelet swaps a symlink); the next check reads it.
            Err(e) => {
                tracing::debug!(error = %e, "re-reading the SASL password file");
                None
            }
        }
    }

    /// Hands `password` to a running client (librdkafka's `rd_kafka_sasl_set_credentials`).
    pub fn apply<C: rdkafka::ClientContext>(
        &self,
        client: &rdkafka::client::Client<C>,
        password: &Secret,
    ) -> Result<(), String> {
        let username = CString::new(self.username.as_str())
            .map_err(|_| "kafka.sasl.username contains a NUL byte".to_owned())?;
        let password = CString::new(password.expose())
            .map_err(|_| "the password contains a NUL byte".to_owned())?;
        // SAFETY: the client's handle is valid while `client` is borrowed; librdkafka copies
        // both strings before returning.
        let error = unsafe {
            rdkafka::bindings::rd_kafka_sasl_set_credentials(
                client.native_ptr(),
                username.as_ptr(),
                password.as_ptr(),
            )
        };
        if error.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null error from librdkafka, read once and then destroyed.
        let message = unsafe {
            let text = CStr::from_ptr(rdkafka::bindings::rd_kafka_error_string(error))
                .to_string_lossy()
                .into_owned();
            rdkafka::bindings::rd_kafka_error_destroy(error);
            text
        };
        Err(message)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn sasl(mechanism: &str) -> SaslConfig {
        SaslConfig {
            mechanism: Some(mechanism.into()),
            username: Some("user".into()),
            password: Some(Secret::new("hunter2-secret")),
            password_file: None,
        }
    }

    fn check(
        protocol: Option<SecurityProtocol>,
        sasl: &SaslConfig,
        tls: &TlsConfig,
    ) -> Result<(), String> {
        Security {
            protocol,
            sasl,
            tls,
        }
        .validate(&BTreeMap::new())
        .map_err(|e| e.to_string())
    }

    #[test]
    fn protocols_parse_in_any_case_and_unknown_ones_are_named() {
        for (text, want) in [
            ("SASL_SSL", SecurityProtocol::SaslSsl),
            ("ssl", SecurityProtocol::Ssl),
            ("Plaintext", SecurityProtocol::Plaintext),
            ("sasl_plaintext", SecurityProtocol::SaslPlaintext),
        ] {
            let parsed: SecurityProtocol =
                serde_json::from_value(serde_json::json!(text)).expect(text);
            assert_eq!(parsed, want);
        }
        let err = serde_json::from_value::<SecurityProtocol>(serde_json::json!("tls"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`tls`") && err.contains("sasl_ssl"), "{err}");
    }

    #[test]
    fn sasl_needs_a_sasl_protocol_a_known_mechanism_a_user_and_one_password() {
        let tls = TlsConfig::default();
        let ok = check(
            Some(SecurityProtocol::SaslSsl),
            &sasl("SCRAM-SHA-512"),
            &tls,
        );
        assert_eq!(ok, Ok(()));
        let err = check(Some(SecurityProtocol::Ssl), &sasl("PLAIN"), &tls).unwrap_err();
        assert!(err.contains("kafka.security_protocol"), "{err}");
        let err = check(Some(SecurityProtocol::SaslSsl), &sasl("GSSAPI"), &tls).unwrap_err();
        assert!(
            err.contains("kafka.sasl.mechanism") && err.contains("not built"),
            "{err}"
        );
        let err = check(
            Some(SecurityProtocol::SaslSsl),
            &sasl("scram-sha-256"),
            &tls,
        )
        .unwrap_err();
        assert!(err.contains("`SCRAM-SHA-256`"), "{err}");
        let mut no_user = sasl("PLAIN");
        no_user.username = None;
        let err = check(Some(SecurityProtocol::SaslSsl), &no_user, &tls).unwrap_err();
        assert!(err.contains("kafka.sasl.username"), "{err}");
        let mut both = sasl("PLAIN");
        both.password_file = Some("/run/secret".into());
        let err = check(Some(SecurityProtocol::SaslSsl), &both, &tls).unwrap_err();
        assert!(err.contains("kafka.sasl.password_file"), "{err}");
        let mut neither = sasl("PLAIN");
        neither.password = None;
        let err = check(Some(SecurityProtocol::SaslSsl), &neither, &tls).unwrap_err();
        assert!(err.contains("kafka.sasl.password"), "{err}");
        let err = check(
            Some(SecurityProtocol::SaslSsl),
            &SaslConfig::default(),
            &tls,
        )
        .unwrap_err();
        assert!(err.contains("kafka.sasl.mechanism"), "{err}");
    }

    #[test]
    fn tls_files_need_a_tls_protocol_and_come_in_pairs() {
        let none = SaslConfig::default();
        let ca = TlsConfig {
            ca_file: Some("/ca.pem".into()),
            ..TlsConfig::default()
        };
        let err = check(Some(SecurityProtocol::Plaintext), &none, &ca).unwrap_err();
        assert!(err.contains("`ssl` or `sasl_ssl`"), "{err}");
        assert_eq!(check(Some(SecurityProtocol::Ssl), &none, &ca), Ok(()));
        let cert_only = TlsConfig {
            cert_file: Some("/c.pem".into()),
            ..TlsConfig::default()
        };
        let err = check(Some(SecurityProtocol::Ssl), &none, &cert_only).unwrap_err();
        assert!(err.contains("kafka.tls.key_file"), "{err}");
    }

    #[test]
    fn kafka_properties_may_not_contradict_the_keys() {
        let mut properties = BTreeMap::new();
        properties.insert("sasl.password".to_owned(), "x".to_owned());
        let err = Security {
            protocol: Some(SecurityProtocol::SaslSsl),
            sasl: &sasl("PLAIN"),
            tls: &TlsConfig::default(),
        }
        .validate(&properties)
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("kafka.properties.sasl.password") && err.contains("kafka.sasl.password"),
            "{err}"
        );
    }

    #[test]
    fn the_password_file_is_read_without_its_line_break_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret-from-file\n").unwrap();
        let sasl = SaslConfig {
            password: None,
            password_file: Some(file),
            ..sasl("SCRAM-SHA-512")
        };
        let tls = TlsConfig::default();
        let security = Security {
            protocol: Some(SecurityProtocol::SaslSsl),
            sasl: &sasl,
            tls: &tls,
        };
        let props = security.properties().unwrap();
        let password = props.iter().find(|(k, _)| *k == "sasl.password").unwrap();
        assert_eq!(password.1.expose(), "s3cret-from-file");
        let shown = format!("{props:?} {sasl:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );

        let missing = SaslConfig {
            password_file: Some(dir.path().join("absent")),
            ..sasl.clone()
        };
        let err = Security {
            sasl: &missing,
            ..security
        }
        .properties()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("kafka.sasl.password_file") && err.contains("absent"),
            "{err}"
        );
        let missing_ca = TlsConfig {
            ca_file: Some(dir.path().join("no-ca.pem")),
            ..TlsConfig::default()
        };
        let err = Security {
            tls: &missing_ca,
            ..security
        }
        .properties()
        .unwrap_err()
        .to_string();
        assert!(err.contains("kafka.tls.ca_file"), "{err}");
    }
}
