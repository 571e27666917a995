//! A private, throwaway PostgreSQL server started from the installed server binaries, for the
//! demo and the tests when no `DATABASE_URL` is given.
//!
//! PostgreSQL refuses to run as root; when we are root the server runs as the `postgres` system
//! user in a directory it owns. The server is a child of a dedicated thread with a parent-death
//! signal, so it stops with this process even when the process is killed.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Why a private server could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalPostgresError {
    /// No server binaries were found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH or in \
         /usr/lib/postgresql/*/bin. Install them (Debian/Ubuntu: `apt-get install -y postgresql`, \
         Fedora: `dnf install postgresql-server`, macOS: `brew install postgresql`) or set \
         DATABASE_URL to an existing server"
    )]
    BinariesNotFound,
    /// Running as root without a `postgres` user to run the server as.
    #[error("running as root, and there is no `postgres` system user to run PostgreSQL as")]
    NoPostgresUser,
    /// A step failed.
    #[error("{step}: {detail}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// What went wrong (with the server log's tail where useful).
        detail: String,
    },
}

fn step(step: &'static str, detail: impl ToString) -> LocalPostgresError {
    LocalPostgresError::Step {
        step,
        detail: detail.to_string(),
    }
}

/// A running private PostgreSQL server. Stopped (and its files removed) on drop.
#[derive(Debug)]
pub struct LocalPostgres {
    dir: PathBuf,
    port: u16,
    stop: Option<mpsc::Sender<()>>,
    keeper: Option<thread::JoinHandle<()>>,
}

#[derive(Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// A server certificate and key (PEM) for a private server with `ssl=on`.
#[derive(Clone)]
pub struct ServerTls {
    /// The certificate chain.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls { .. }")
    }
}

impl LocalPostgres {
    /// Creates a cluster in a fresh temporary directory and starts it on a free port.
    pub fn start() -> Result<Self, LocalPostgresError> {
        Self::start_with(None)
    }

    /// Like [`Self::start`], with TLS on (`ssl=on`) with `tls`'s certificate when given.
    pub fn start_with(tls: Option<&ServerTls>) -> Result<Self, LocalPostgresError> {
        let bin = find_bin_dir().ok_or(LocalPostgresError::BinariesNotFound)?;
        let run_as = run_as()?;
        let base = std::env::temp_dir().join("event-manager-pg");
        std::fs::create_dir_all(&base).map_err(|e| step("creating the temp directory", e))?;
        let _ = std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755));
        sweep_stale(&base);
        let dir = base.join(format!(
            "{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir(&dir).map_err(|e| step("creating the cluster directory", e))?;
        chown(&dir, run_as)?;
        let data = dir.join("data");

        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .arg("--locale=C")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        drop_privileges(&mut initdb, run_as, false);
        let out = initdb.output().map_err(|e| step("running initdb", e))?;
        if !out.status.success() {
            return Err(step(
                "initdb failed",
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }

        let mut settings = Vec::new();
        if let Some(tls) = tls {
            for (name, pem) in [("server.crt", &tls.cert_pem), ("server.key", &tls.key_pem)] {
                let path = dir.join(name);
                std::fs::write(&path, pem).map_err(|e| step("writing the TLS files", e))?;
                // PostgreSQL refuses a key file others may read.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| step("writing the TLS files", e))?;
                chown(&path, run_as)?;
            }
            settings.push("ssl=on".to_owned());
            settings.push(format!(
                "ssl_cert_file={}",
                dir.join("server.crt").display()
            ));
            settings.push(format!("ssl_key_file={}", dir.join("server.key").display()));
        }

        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port()?;
            match Self::launch(&bin, &dir, &data, port, run_as, &settings) {
                Ok((stop, keeper)) => {
                    return Ok(Self {
                        dir,
                        port,
                        stop: Some(stop),
                        keeper: Some(keeper),
                    })
                }
                Err(e) => last_error = Some(e),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last_error.unwrap_or_else(|| step("starting postgres", "unknown failure")))
    }

    fn launch(
        bin: &Path,
        dir: &Path,
        data: &Path,
        port: u16,
        run_as: Option<RunAs>,
        settings: &[String],
    ) -> Result<(mpsc::Sender<()>, thread::JoinHandle<()>), LocalPostgresError> {
        let log_path = dir.join("postgres.log");
        let log = std::fs::File::create(&log_path).map_err(|e| step("creating the log", e))?;
        chown(&log_path, run_as)?;
        let log_err = log.try_clone().map_err(|e| step("creating the log", e))?;
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=400",
                "-c",
                "shared_buffers=128MB",
            ])
            .args(settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        drop_privileges(&mut cmd, run_as, true);

        // The child's parent-death signal fires when the thread that forked it ends, so a
        // dedicated thread forks it and lives exactly as long as the server should.
        let (started_tx, started_rx) = mpsc::channel::<Result<(), String>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let keeper = thread::Builder::new()
            .name("local-postgres".into())
            .spawn(move || {
                let mut child: Child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = started_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(()));
                loop {
                    match stop_rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if let Ok(Some(_)) = child.try_wait() {
                                return;
                            }
                        }
                    }
                }
                stop_child(&mut child);
            })
            .map_err(|e| step("spawning the keeper thread", e))?;
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(step("starting postgres", e)),
            Err(_) => return Err(step("starting postgres", "keeper thread ended")),
        }

        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if keeper.is_finished() {
                return Err(step("postgres exited during start-up", log_tail(&log_path)));
            }
            if ready(port) {
                return Ok((stop_tx, keeper));
            }
            if Instant::now() > deadline {
                let _ = stop_tx.send(());
                let _ = keeper.join();
                return Err(step(
                    "postgres did not become ready in 60s",
                    log_tail(&log_path),
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates the database `name` (letters, digits and `_`) and returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String, LocalPostgresError> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(step(
                "create the database",
                format!("{name:?} is not a plain name"),
            ));
        }
        let (admin, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .map_err(|e| step("connect to the private server", e))?;
        let connection = tokio::spawn(connection);
        let created = admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| step("create the database", e));
        drop(admin);
        let _ = connection.await;
        created.map(|()| self.url(name))
    }

    /// Stops the server and removes its files.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stop_child(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: signalling our own child process by pid.
    unsafe {
        libc::kill(pid, libc::SIGINT); // fast shutdown
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above; immediate shutdown after the grace period.
    unsafe {
        libc::kill(pid, libc::SIGQUIT);
    }
    let _ = child.wait();
}

/// Accepting connections: a startup packet gets an answer other than "starting up".
fn ready(port: u16) -> bool {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    // StartupMessage: protocol 3.0, user=postgres, database=postgres.
    let mut body = Vec::new();
    body.extend_from_slice(&196608i32.to_be_bytes());
    for s in ["user", "postgres", "database", "postgres"] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    if s.write_all(&msg).is_err() {
        return false;
    }
    let mut first = [0u8; 1];
    // 'R' = authentication request (trust → AuthenticationOk); 'E' = error (e.g. starting up).
    matches!(s.read_exact(&mut first), Ok(()) if first[0] == b'R')
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

fn free_port() -> Result<u16, LocalPostgresError> {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).map_err(|e| step("finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| step("finding a free port", e))
}

fn find_bin_dir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    versioned.sort();
    if let Some((_, dir)) = versioned.pop() {
        return Some(dir);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        let initdb = dir.join("initdb");
        if !initdb.is_file() {
            return None;
        }
        let real = std::fs::canonicalize(&initdb).ok()?;
        let real_dir = real.parent()?.to_path_buf();
        if has_server(&real_dir) {
            Some(real_dir)
        } else if has_server(&dir) {
            Some(dir)
        } else {
            None
        }
    })
}

fn run_as() -> Result<Option<RunAs>, LocalPostgresError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").map_err(|e| step("user lookup", e))?;
    // SAFETY: getpwnam with a valid C string; the result is read immediately.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(LocalPostgresError::NoPostgresUser);
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some(RunAs { uid, gid }))
}

fn chown(path: &Path, run_as: Option<RunAs>) -> Result<(), LocalPostgresError> {
    if let Some(r) = run_as {
        std::os::unix::fs::chown(path, Some(r.uid), Some(r.gid))
            .map_err(|e| step("handing the directory to the postgres user", e))?;
    }
    Ok(())
}

fn drop_privileges(cmd: &mut Command, run_as: Option<RunAs>, die_with_parent: bool) {
    // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid, prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(r) = run_as {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(r.gid) != 0
                    || libc::setuid(r.uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Set after the uid change, which would clear it.
            if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Removes clusters left behind by processes that no longer exist.
fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
