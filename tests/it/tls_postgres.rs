//! PostgreSQL over TLS by libpq's `sslmode` rules: a private cluster with `ssl=on` and a
//! certificate made here (a CA and a server certificate naming `localhost` only).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use event_manager::config::DatabaseConfig;
use event_manager::store::{EventStore, LocalPostgres, ServerTls};

struct TlsServer {
    server: LocalPostgres,
    dir: tempfile::TempDir,
}

/// A CA: its certificate (PEM) and the issuer that signs with it.
fn ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, rcgen::Issuer::new(params, key))
}

/// One server with TLS for the tests of this module, and the CA files.
fn tls_server() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (ca_pem, issuer) = ca("event-manager test CA");
        let server_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let server_cert = params.signed_by(&server_key, &issuer).unwrap();
        let tls = ServerTls {
            cert_pem: server_cert.pem(),
            key_pem: server_key.serialize_pem(),
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
        std::fs::write(dir.path().join("other-ca.pem"), ca("some other CA").0).unwrap();
        let server = LocalPostgres::start_with(Some(&tls)).expect("a private server with TLS");
        TlsServer { server, dir }
    })
}

impl TlsServer {
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    /// A URL to `host` (connecting to 127.0.0.1 whatever the name) with `params`.
    fn url(&self, host: &str, params: &str) -> String {
        format!(
            "postgres://postgres@{host}:{}/postgres?hostaddr=127.0.0.1&{params}",
            self.server.port()
        )
    }
}

fn store(url: &str) -> EventStore {
    EventStore::connect(&DatabaseConfig {
        url: url.parse().unwrap(),
        pool_size: 2,
        ..DatabaseConfig::default()
    })
    .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// Whether the pools' connections use TLS (asked of the server), or the connection error.
async fn uses_tls(url: &str) -> Result<bool, String> {
    let answers = store(url)
        .connections_encrypted()
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(answers[0], answers[1], "both pools connect alike");
    Ok(answers[0])
}

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn verify_full_connects_over_tls_and_migrations_run_through_it() {
    let s = tls_server();
    let url = s.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", p(&s.ca())),
    );
    assert_eq!(uses_tls(&url).await, Ok(true));
    let store = store(&url);
    store.migrate().await.expect("migrations over TLS");
    store.ping().await.expect("ping over TLS");
}

#[tokio::test]
async fn verify_full_with_a_wrong_root_certificate_fails_clearly() {
    let s = tls_server();
    let url = s.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", p(&s.other_ca())),
    );
    let err = uses_tls(&url).await.unwrap_err();
    assert!(
        err.contains("the server's certificate is not signed by the CA in sslrootcert"),
        "{err}"
    );
    // require with a root certificate checks it too (libpq: as verify-ca).
    let url = s.url(
        "localhost",
        &format!("sslmode=require&sslrootcert={}", p(&s.other_ca())),
    );
    let err = uses_tls(&url).await.unwrap_err();
    assert!(err.contains("not signed by the CA in sslrootcert"), "{err}");
}

#[tokio::test]
async fn verify_full_with_a_wrong_host_name_fails_clearly_and_verify_ca_does_not_check_it() {
    let s = tls_server();
    // The certificate names `localhost` only.
    let url = s.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", p(&s.ca())),
    );
    let err = uses_tls(&url).await.unwrap_err();
    assert!(
        err.contains("hostname mismatch: the server's certificate does not name the host"),
        "{err}"
    );
    let url = s.url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", p(&s.ca())),
    );
    assert_eq!(uses_tls(&url).await, Ok(true));
}

#[tokio::test]
async fn require_and_prefer_encrypt_without_a_root_certificate_and_disable_does_not() {
    let s = tls_server();
    assert_eq!(
        uses_tls(&s.url("127.0.0.1", "sslmode=require")).await,
        Ok(true)
    );
    assert_eq!(
        uses_tls(&s.url("127.0.0.1", "sslmode=prefer")).await,
        Ok(true)
    );
    // libpq's default is prefer.
    assert_eq!(
        uses_tls(&s.url("127.0.0.1", "connect_timeout=5")).await,
        Ok(true)
    );
    assert_eq!(
        uses_tls(&s.url("127.0.0.1", "sslmode=disable")).await,
        Ok(false)
    );
}

#[tokio::test]
async fn require_against_a_server_without_tls_fails_clearly_and_prefer_falls_back() {
    let plain = tokio::task::spawn_blocking(|| LocalPostgres::start().expect("a server"))
        .await
        .unwrap();
    let url = |params: &str| {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{params}",
            plain.port()
        )
    };
    let err = uses_tls(&url("sslmode=require")).await.unwrap_err();
    assert!(
        err.contains("the server does not offer TLS, which sslmode requires"),
        "{err}"
    );
    assert_eq!(uses_tls(&url("sslmode=prefer")).await, Ok(false));
}

#[test]
fn config_check_names_a_bad_sslmode_and_a_missing_root_certificate() {
    for (url, want) in [
        (
            "postgres://u@h/db?sslmode=verify-everything",
            "unknown sslmode `verify-everything`",
        ),
        (
            "postgres://u@h/db?sslmode=verify-full",
            "needs `sslrootcert`",
        ),
        (
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "sslrootcert /nonexistent/ca.pem",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_event-manager"))
            .args(["config", "check"])
            .env("DATABASE_URL", url)
            .env("EM_AUTH__DISABLED", "true")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}");
        assert!(
            stderr.contains("database.url") && stderr.contains(want),
            "{url}: {stderr}"
        );
    }
}
