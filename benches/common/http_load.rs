//! The benches' HTTP load generator (`benches/api.rs`, `benches/pipeline.rs`): keep-alive
//! HTTP/1.1 clients, each sending its requests one after another with a bearer token — a lean
//! generator (like `wrk`), since it shares the machine's cores with the server and PostgreSQL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a load run measured.
pub struct Outcome {
    /// Per request: its kind (as the request's maker named it) and its latency, failures
    /// included.
    pub samples: Vec<(usize, Duration)>,
    /// Requests that failed or were answered with a status other than 2xx.
    pub errors: u64,
    /// How long the run took, from the first client's start to the last one's end.
    pub elapsed: Duration,
}

impl Outcome {
    /// The latencies of the requests of `kind` (all requests when `None`), sorted.
    pub fn latencies(&self, kind: Option<usize>) -> Vec<Duration> {
        let mut out: Vec<Duration> = self
            .samples
            .iter()
            .filter(|(k, _)| kind.is_none_or(|kind| kind == *k))
            .map(|(_, latency)| *latency)
            .collect();
        out.sort_unstable();
        out
    }

    /// Requests answered per second.
    pub fn requests_per_s(&self) -> f64 {
        self.samples.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// The `p` quantile (0–1) of sorted latencies; zero when there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs `clients` clients against `addr` for `duration`, one connection each. Client `c` sends
/// requests `c`, `c + clients`, `c + 2 × clients`, …; `request(i)` makes request `i`: its kind
/// (for [`Outcome::latencies`]) and its path with query.
pub async fn load<F>(
    addr: SocketAddr,
    token: &str,
    clients: usize,
    duration: Duration,
    request: F,
) -> Outcome
where
    F: Fn(usize) -> (usize, String) + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let request = request.clone();
        let auth = format!("Bearer {token}");
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0u64;
            let connect = async {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let (sender, conn) = hyper::client::conn::http1::handshake::<
                    _,
                    http_body_util::Empty<bytes::Bytes>,
                >(hyper_util::rt::TokioIo::new(stream))
                .await?;
                tokio::spawn(conn);
                Ok::<_, BoxError>(sender)
            };
            let Ok(mut sender) = connect.await else {
                return (samples, 1);
            };
            let mut i = client;
            while Instant::now() < deadline {
                let (kind, path) = request(i);
                i += clients;
                let t = Instant::now();
                let request = hyper::Request::get(path.as_str())
                    .header("host", "bench")
                    .header("authorization", &auth)
                    .body(http_body_util::Empty::new());
                let ok = match request {
                    Ok(request) => match sender.send_request(request).await {
                        Ok(response) => {
                            let success = response.status().is_success();
                            response.into_body().collect().await.is_ok() && success
                        }
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                if !ok {
                    errors += 1;
                    if sender.ready().await.is_err() {
                        break;
                    }
                }
                samples.push((kind, t.elapsed()));
            }
            (samples, errors)
        }));
    }
    let mut outcome = Outcome {
        samples: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        if let Ok((samples, errors)) = task.await {
            outcome.samples.extend(samples);
            outcome.errors += errors;
        }
    }
    outcome.elapsed = started.elapsed();
    outcome
}
