//! The decode binary as Lambda runs it: a stand-in Runtime API hands it one real sample event;
//! its answer comes back through the API, and the CloudWatch Embedded Metric Format lines it
//! prints on stdout are parsed and checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One HTTP/1.1 request: method, path, body (Content-Length or chunked).
fn read_request(r: &mut BufReader<TcpStream>) -> Option<(String, String, Vec<u8>)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let (mut length, mut chunked) = (0usize, false);
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(length, 0);
        r.read_exact(&mut body).ok()?;
    }
    Some((method, path, body))
}

/// Serves `event` once, then sends whatever the function answers down `answers`.
fn runtime_api(event: Vec<u8>, answers: mpsc::Sender<(String, Vec<u8>)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut served = false;
        for conn in listener.incoming().flatten() {
            let event = event.clone();
            let answers = answers.clone();
            let first = !served;
            served = true;
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                let mut handed_out = !first;
                while let Some((method, path, body)) = read_request(&mut r) {
                    if method == "GET" && path.ends_with("/invocation/next") {
                        if handed_out {
                            // No second event: the test stops the process.
                            std::thread::sleep(Duration::from_secs(600));
                            return;
                        }
                        handed_out = true;
                        let deadline = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() + 60_000;
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: req-1\r\nLambda-Runtime-Deadline-Ms: {deadline}\r\nLambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:123456789012:function:decode\r\nLambda-Runtime-Trace-Id: Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1\r\nContent-Length: {}\r\n\r\n",
                            event.len()
                        );
                        w.write_all(head.as_bytes()).unwrap();
                        w.write_all(&event).unwrap();
                    } else {
                        let _ = answers.send((path, body));
                        w.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
                            .unwrap();
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn the_binary_answers_a_sample_event_and_prints_emf_metrics() {
    let out = tempfile::tempdir().unwrap();
    let config = out.path().join("config.yaml");
    let text = std::fs::read_to_string(repo().join("events/config.yaml"))
        .unwrap()
        .replace(".local/", &format!("{}/", out.path().display()))
        .replace("events/data/", &format!("{}/events/data/", repo().display()));
    std::fs::write(&config, text).unwrap();
    let event = std::fs::read(repo().join("events/s3-put.json")).unwrap();
    let (tx, rx) = mpsc::channel();
    let api = runtime_api(event, tx);

    let mut child = Command::new(env!("CARGO_BIN_EXE_decode"))
        .env("AWS_LAMBDA_RUNTIME_API", &api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "decode")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/test/decode")
        .env("AWS_REGION", "us-east-1")
        .env("DMS2DELTA_CONFIG", &config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (path, body) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("no answer from the function");
    // Give the EMF line (printed before the answer is sent) time to reach the pipe, then stop.
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let _ = child.wait();

    assert!(
        path.ends_with("/invocation/req-1/response"),
        "{path}: {}",
        String::from_utf8_lossy(&body)
    );
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["staged"][0]["tables"][0]["rows_out"], 3, "{answer}");

    let emf: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("_aws").is_some())
        .collect();
    assert_eq!(emf.len(), 1, "{stdout}");
    let m = &emf[0];
    let directive = &m["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "dms2delta");
    assert_eq!(
        directive["Dimensions"],
        serde_json::json!([["Function", "Table"], ["Function"]])
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let ts = m["_aws"]["Timestamp"].as_i64().unwrap();
    assert!((now - ts).abs() < 300_000, "timestamp {ts} vs now {now}");
    assert_eq!(
        (m["Function"].as_str(), m["Table"].as_str()),
        (Some("decode"), Some("mysql.shop.customers"))
    );
    for def in directive["Metrics"].as_array().unwrap() {
        let name = def["Name"].as_str().unwrap();
        assert!(m[name].is_number(), "{name} has no value: {m}");
        assert!(["Count", "Bytes", "Milliseconds", "Seconds"].contains(&def["Unit"].as_str().unwrap()));
    }
    assert_eq!(
        (m["Files"].as_f64(), m["RowsIn"].as_f64(), m["RowsOut"].as_f64()),
        (Some(1.0), Some(3.0), Some(3.0))
    );
    assert!(m["BytesRead"].as_f64().unwrap() > 0.0);
}
