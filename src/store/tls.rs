//! PostgreSQL over TLS, by libpq's rules for the URL parameters `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey` (README, "Connecting to a secured cluster"):
//!
//! | `sslmode`   | TLS                          | server certificate checked                  |
//! |-------------|------------------------------|---------------------------------------------|
//! | disable     | never                        | —                                           |
//! | prefer      | if the server offers it      | only when `sslrootcert` is given (as verify-ca) |
//! | require     | always                       | only when `sslrootcert` is given (as verify-ca) |
//! | verify-ca   | always                       | signed by `sslrootcert`                     |
//! | verify-full | always                       | signed by `sslrootcert` and naming the host |
//!
//! `prefer` is the default, as in libpq. `sslrootcert=system` trusts the Mozilla root
//! certificates (webpki-roots) instead of a file. `sslcert`/`sslkey` present a client
//! certificate. tokio-postgres knows neither verify-ca/verify-full nor these file parameters,
//! so [`parse_url`] takes them out of the URL before tokio-postgres reads the rest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, SignatureScheme};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it (the default).
    Prefer,
    /// TLS, the certificate unchecked unless `sslrootcert` is given.
    Require,
    /// TLS, the certificate signed by `sslrootcert`.
    VerifyCa,
    /// TLS, the certificate signed by `sslrootcert` and naming the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" => Err(
                "sslmode=allow is not supported (it sends the password in clear text first); \
                 use prefer or stricter"
                    .to_owned(),
            ),
            other => Err(format!(
                "unknown sslmode `{other}`: expected disable, prefer, require, verify-ca or \
                 verify-full"
            )),
        }
    }
}

/// The TLS parameters of a database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of CA certificates, or `system`.
    pub root_cert: Option<RootCert>,
    /// `sslcert`: the client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// `sslkey`: its private key (PEM, unencrypted).
    pub key: Option<PathBuf>,
}

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file.
    File(PathBuf),
    /// The Mozilla root certificates (`sslrootcert=system`).
    System,
}

/// Parameters this module takes out of the URL.
const TLS_PARAMS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits a `postgres://` URL into tokio-postgres's configuration (without the TLS parameters)
/// and the TLS settings. Errors name the parameter.
pub(crate) fn parse_url(url: &str) -> Result<(tokio_postgres::Config, TlsSettings), String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut kept = Vec::new();
    let mut mode = None;
    let mut root_cert = None;
    let mut cert = None;
    let mut key = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        if !TLS_PARAMS.contains(&name) {
            kept.push(pair);
            continue;
        }
        let value = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| format!("`{name}` is not UTF-8 after percent-decoding"))?
            .into_owned();
        if value.is_empty() {
            return Err(format!("`{name}` is empty"));
        }
        match name {
            "sslmode" => mode = Some(SslMode::parse(&value)?),
            "sslrootcert" if value == "system" => root_cert = Some(RootCert::System),
            "sslrootcert" => root_cert = Some(RootCert::File(value.into())),
            "sslcert" => cert = Some(PathBuf::from(value)),
            _ => key = Some(PathBuf::from(value)),
        }
    }
    let mode = mode.unwrap_or(SslMode::Prefer);
    if cert.is_some() != key.is_some() {
        return Err("`sslcert` and `sslkey` go together".to_owned());
    }
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
        return Err(format!(
            "sslmode={} needs `sslrootcert` (the CA file, or `system`)",
            if mode == SslMode::VerifyCa {
                "verify-ca"
            } else {
                "verify-full"
            }
        ));
    }
    if mode == SslMode::Disable && (root_cert.is_some() || cert.is_some()) {
        return Err("sslmode=disable with certificate parameters: drop them or use TLS".into());
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut pg: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| format!("not a valid PostgreSQL URL: {e}"))?;
    pg.ssl_mode(match mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    });
    Ok((
        pg,
        TlsSettings {
            mode,
            root_cert,
            cert,
            key,
        },
    ))
}

/// The connector of `settings`: reads the certificate files (errors name the parameter and
/// the file).
pub fn connector(settings: &TlsSettings) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match &settings.root_cert {
        None => Arc::new(Lenient {
            chain: None,
            provider,
        }),
        Some(root) => {
            let mut roots = rustls::RootCertStore::empty();
            match root {
                RootCert::System => {
                    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                }
                RootCert::File(file) => {
                    for cert in read_pem_certs("sslrootcert", file)? {
                        roots.add(cert).map_err(|e| {
                            format!("sslrootcert {}: not a CA certificate: {e}", file.display())
                        })?;
                    }
                }
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("sslrootcert: {e}"))?;
            if settings.mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(Lenient {
                    chain: Some(webpki),
                    provider,
                })
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => {
            let chain = read_pem_certs("sslcert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("sslkey {}: no PEM private key: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("sslcert/sslkey: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

fn read_pem_certs(param: &str, file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("{param} {}: {}", file.display(), pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{param} {}: {}", file.display(), pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!("{param} {}: no PEM certificate", file.display()));
    }
    Ok(certs)
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not PEM ({other:?})"),
    }
}

/// Explains a failed connection in terms of the URL's parameters when TLS is the cause.
pub fn explain(error: &str) -> Option<&'static str> {
    if error.contains("UnknownIssuer") {
        Some("the server's certificate is not signed by the CA in sslrootcert")
    } else if error.contains("NotValidForName") || error.contains("not valid for name") {
        Some(
            "hostname mismatch: the server's certificate does not name the host of the URL \
             (sslmode=verify-full)",
        )
    } else if error.contains("server does not support TLS") {
        Some("the server does not offer TLS, which sslmode requires")
    } else if error.contains("Expired") {
        Some("the server's certificate has expired")
    } else if error.contains("CertificateRequired") || error.contains("certificate required") {
        Some("the server requires a client certificate (sslcert and sslkey)")
    } else {
        None
    }
}

/// The checks of the modes below verify-full. Without `sslrootcert` (`require`/`prefer`): none
/// of the certificate, encryption without authentication of the server, as libpq does. With it
/// (verify-ca, and require/prefer with `sslrootcert`): the chain to a trusted CA, not the name;
/// webpki checks the chain before the name, so a name error means a valid chain. The handshake
/// signatures are checked in every mode.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

impl Lenient {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_and_the_rest_stays() {
        let (pg, tls) = parse_url(
            "postgres://u:p@db.example:5433/eventdb?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.crt",
        )
        .unwrap();
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(RootCert::File("/etc/ca.crt".into())));
        assert_eq!(pg.get_application_name(), Some("x"));
        assert_eq!(pg.get_dbname(), Some("eventdb"));
        assert_eq!(pg.get_ssl_mode(), PgSslMode::Require);

        let (pg, tls) = parse_url("postgres://u@h/db").unwrap();
        assert_eq!(tls.mode, SslMode::Prefer);
        assert_eq!(pg.get_ssl_mode(), PgSslMode::Prefer);
        let (pg, _) = parse_url("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(pg.get_ssl_mode(), PgSslMode::Disable);
        let (_, tls) = parse_url("postgres://u@h/db?sslmode=require&sslrootcert=system").unwrap();
        assert_eq!(tls.root_cert, Some(RootCert::System));
    }

    #[test]
    fn bad_tls_parameters_are_named() {
        for (url, want) in [
            ("postgres://h/db?sslmode=verify-full", "needs `sslrootcert`"),
            ("postgres://h/db?sslmode=bogus", "unknown sslmode `bogus`"),
            ("postgres://h/db?sslmode=allow", "sslmode=allow"),
            (
                "postgres://h/db?sslmode=require&sslcert=/c.pem",
                "`sslcert` and `sslkey`",
            ),
            ("postgres://h/db?sslrootcert=", "`sslrootcert` is empty"),
            (
                "postgres://h/db?sslmode=require&nonsense=1",
                "not a valid PostgreSQL URL",
            ),
        ] {
            let err = parse_url(url).unwrap_err();
            assert!(err.contains(want), "{url}: {err}");
        }
    }

    #[test]
    fn unreadable_certificate_files_are_named() {
        let (_, tls) =
            parse_url("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem").unwrap();
        let err = connector(&tls).err().unwrap();
        assert!(err.contains("sslrootcert /nonexistent/ca.pem"), "{err}");
    }
}
