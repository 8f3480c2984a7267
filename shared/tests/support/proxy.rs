//! A TCP proxy in front of the S3 endpoint that injects the failures S3 really produces, at
//! random requests: `503 SlowDown`, `500 InternalError`, a connection dropped before the request
//! reaches the server, and a connection dropped after the server acted on it but before the
//! answer arrives (the client cannot know whether its write happened: a timeout mid-commit).

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

pub struct FaultProxy {
    pub url: String,
    pub injected: Arc<Injected>,
    enabled: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://host:port`) failing about `rate` of the requests.
    pub async fn start(upstream: &str, rate: f64, seed: u64) -> FaultProxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let injected = Arc::new(Injected::default());
        let enabled = Arc::new(AtomicBool::new(true));
        let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
        let (inj, en) = (injected.clone(), enabled.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, inj, en, rng) = (upstream.clone(), inj.clone(), en.clone(), rng.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        let _ = relay(client, server, rate, &rng, &inj, &en).await;
                    }
                });
            }
        });
        FaultProxy { url, injected, enabled }
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

async fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    rate: f64,
    rng: &Mutex<fastrand::Rng>,
    injected: &Injected,
    enabled: &AtomicBool,
) -> std::io::Result<()> {
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
