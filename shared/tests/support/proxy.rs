//! A TCP proxy in front of the S3 endpoint that injects the failures S3 really produces, at
//! random requests: `503 SlowDown`, `500 InternalError`, a connection dropped before the request
//! reaches the server, and a connection dropped after the server acted on it but before the
//! answer arrives (the client cannot know whether its write happened: a timeout mid-commit).
//!
//! It also counts the requests passing through by kind (what S3 bills by) and can hold each one
//! back for a seeded, jittered latency, so a bench can measure round trips as S3 would cost them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default)]
pub struct Injected {
    pub slow_down: AtomicUsize,
    pub internal_error: AtomicUsize,
    pub dropped_before: AtomicUsize,
    pub dropped_after: AtomicUsize,
}

impl Injected {
    pub fn total(&self) -> usize {
        self.slow_down.load(Ordering::Relaxed)
            + self.internal_error.load(Ordering::Relaxed)
            + self.dropped_before.load(Ordering::Relaxed)
            + self.dropped_after.load(Ordering::Relaxed)
    }
}

/// Requests by the kind S3 prices them by. A GET carrying `list-type=` (or any bucket-level
/// GET) is a LIST; a PUT with `x-amz-copy-source` is a COPY.
#[derive(Debug, Default)]
pub struct Requests {
    pub get: AtomicUsize,
    pub list: AtomicUsize,
    pub put: AtomicUsize,
    pub copy: AtomicUsize,
    pub head: AtomicUsize,
    pub delete: AtomicUsize,
    pub post: AtomicUsize,
    /// When each request arrived and its `METHOD path?query`, kept only while
    /// [`Requests::log`] is on.
    pub lines: Mutex<Vec<(std::time::Instant, String)>>,
    pub log: AtomicBool,
}

/// A copy of the counters at one moment; subtract two to get what happened in between.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestCounts {
    pub get: usize,
    pub list: usize,
    pub put: usize,
    pub copy: usize,
    pub head: usize,
    pub delete: usize,
    pub post: usize,
}

impl RequestCounts {
    pub fn total(&self) -> usize {
        self.get + self.list + self.put + self.copy + self.head + self.delete + self.post
    }

    pub fn minus(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            get: self.get - earlier.get,
            list: self.list - earlier.list,
            put: self.put - earlier.put,
            copy: self.copy - earlier.copy,
            head: self.head - earlier.head,
            delete: self.delete - earlier.delete,
            post: self.post - earlier.post,
        }
    }
}

impl Requests {
    pub fn counts(&self) -> RequestCounts {
        let l = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        RequestCounts {
            get: l(&self.get),
            list: l(&self.list),
            put: l(&self.put),
            copy: l(&self.copy),
            head: l(&self.head),
            delete: l(&self.delete),
            post: l(&self.post),
        }
    }

    /// The logged request lines since the last call, and logging on or off from now.
    pub fn take_lines(&self, keep_logging: bool) -> Vec<(std::time::Instant, String)> {
        self.log.store(keep_logging, Ordering::Relaxed);
        self.lines
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    fn record(&self, chunk: &[u8]) {
        let line = chunk.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        // Path style: `/bucket` or `/bucket/` alone is a bucket-level request.
        let bucket_level = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).count() <= 1;
        let counter = match method {
            "GET" if query.contains("list-type=") || bucket_level => &self.list,
            "GET" => &self.get,
            "PUT" if has_header(chunk, b"x-amz-copy-source") => &self.copy,
            "PUT" => &self.put,
            "HEAD" => &self.head,
            "DELETE" => &self.delete,
            _ => &self.post,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if self.log.load(Ordering::Relaxed) {
            if let Ok(mut l) = self.lines.lock() {
                l.push((std::time::Instant::now(), format!("{method} {target}")));
            }
        }
    }
}

fn has_header(chunk: &[u8], name: &[u8]) -> bool {
    chunk
        .split(|b| *b == b'\n')
        .skip(1)
        .take_while(|l| l.len() > 1)
        .any(|l| l.len() > name.len() && l[..name.len()].eq_ignore_ascii_case(name) && l[name.len()] == b':')
}

/// What a proxy does besides relaying.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProxyOptions {
    /// Share of requests answered with a fault.
    pub fault_rate: f64,
    pub seed: u64,
    /// Each request waits a uniform draw from this range (milliseconds) before it is sent on.
    pub latency_ms: Option<(u64, u64)>,
}

pub struct FaultProxy {
    pub url: String,
    pub injected: Arc<Injected>,
    pub requests: Arc<Requests>,
    enabled: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://host:port`) failing about `rate` of the requests.
    pub async fn start(upstream: &str, rate: f64, seed: u64) -> FaultProxy {
        FaultProxy::start_with(
            upstream,
            ProxyOptions {
                fault_rate: rate,
                seed,
                latency_ms: None,
            },
        )
        .await
    }

    /// Starts a proxy to `upstream` doing what `opts` says.
    pub async fn start_with(upstream: &str, opts: ProxyOptions) -> FaultProxy {
        let (rate, seed) = (opts.fault_rate, opts.seed);
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let injected = Arc::new(Injected::default());
        let requests = Arc::new(Requests::default());
        let enabled = Arc::new(AtomicBool::new(true));
        let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
        let (inj, en, req) = (injected.clone(), enabled.clone(), requests.clone());
        let latency = opts.latency_ms;
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, inj, en, rng, req) =
                    (upstream.clone(), inj.clone(), en.clone(), rng.clone(), req.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        let link = Link {
                            rate,
                            latency,
                            rng: &rng,
                            injected: &inj,
                            enabled: &en,
                            requests: &req,
                        };
                        let _ = relay(client, server, link).await;
                    }
                });
            }
        });
        FaultProxy {
            url,
            injected,
            requests,
            enabled,
        }
    }

    /// Stops injecting (the final read-back goes through cleanly).
    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy)]
enum Fault {
    SlowDown,
    Internal,
    DropBefore,
    DropAfter,
}

struct Link<'a> {
    rate: f64,
    latency: Option<(u64, u64)>,
    rng: &'a Mutex<fastrand::Rng>,
    injected: &'a Injected,
    enabled: &'a AtomicBool,
    requests: &'a Requests,
}

async fn relay(mut client: TcpStream, mut server: TcpStream, link: Link<'_>) -> std::io::Result<()> {
    let Link {
        rate,
        latency,
        rng,
        injected,
        enabled,
        requests,
    } = link;
    let (mut cbuf, mut sbuf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut drop_response = false;
    loop {
        tokio::select! {
            n = client.read(&mut cbuf) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                let chunk = &cbuf[..n];
                if starts_request(chunk) {
                    requests.record(chunk);
                    if let Some((lo, hi)) = latency {
                        let ms = rng.lock().map_err(|_| std::io::Error::other("rng"))?.u64(lo..=hi);
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    }
                }
                // Keep-alive connections carry one request after another; a chunk opening with a
                // method is the start of the next one.
                if enabled.load(Ordering::Relaxed) && starts_request(chunk) {
                    let fault = {
                        let mut r = rng.lock().map_err(|_| std::io::Error::other("rng"))?;
                        (r.f64() < rate).then(|| [Fault::SlowDown, Fault::Internal, Fault::DropBefore, Fault::DropAfter][r.usize(0..4)])
                    };
                    match fault {
                        Some(Fault::SlowDown) => {
                            injected.slow_down.fetch_add(1, Ordering::Relaxed);
                            return answer(&mut client, "503 Slow Down", "SlowDown", "Please reduce your request rate.").await;
                        }
                        Some(Fault::Internal) => {
                            injected.internal_error.fetch_add(1, Ordering::Relaxed);
                            return answer(&mut client, "500 Internal Server Error", "InternalError", "We encountered an internal error. Please try again.").await;
                        }
                        Some(Fault::DropBefore) => {
                            injected.dropped_before.fetch_add(1, Ordering::Relaxed);
                            return Ok(());
                        }
                        Some(Fault::DropAfter) => {
                            injected.dropped_after.fetch_add(1, Ordering::Relaxed);
                            drop_response = true;
                        }
                        None => {}
                    }
                }
                server.write_all(chunk).await?;
            }
            n = server.read(&mut sbuf) => {
                let n = n?;
                if n == 0 || drop_response {
                    return Ok(());
                }
                client.write_all(&sbuf[..n]).await?;
            }
        }
    }
}

fn starts_request(chunk: &[u8]) -> bool {
    [&b"GET "[..], b"PUT ", b"POST ", b"HEAD ", b"DELETE ", b"PATCH "]
        .iter()
        .any(|m| chunk.starts_with(m))
}

async fn answer(client: &mut TcpStream, status: &str, code: &str, message: &str) -> std::io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await?;
    client.write_all(body.as_bytes()).await?;
    client.shutdown().await
}
