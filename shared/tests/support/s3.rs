//! A real S3 API for the tests: moto's server, started once per test process on a free port of
//! 127.0.0.1 by `tests/moto_server.py`, and stopped when the process ends however it ends (the
//! server exits when its standard input, held by this process, closes). Self-contained, so the
//! event-driven tests of the functions (the `tests/` crate) include the same file.

// Each test binary including this file uses a different part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use std::path::{Path, PathBuf};

pub struct Moto {
    pub url: String,
    // Kept open for the life of the process: closing it stops the server.
    _child: Child,
}

static MOTO: OnceLock<Result<Moto, String>> = OnceLock::new();

/// The endpoint, started on first use. The AWS variables point every client in this process at
/// it with moto's dummy credentials, so no test can reach a real AWS account.
pub fn moto() -> &'static Moto {
    let started = MOTO.get_or_init(|| {
        let Some(py) = python() else {
            return Err("no Python with the test tools: run `.ci/run` once or set DMS2DELTA_PYTHON".into());
        };
        let mut child = Command::new(&py)
            .arg(repo().join("tests/moto_server.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start moto with {}: {e}", py.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("moto: {e}"))?;
        let url = line
            .trim()
            .strip_prefix("READY ")
            .ok_or_else(|| format!("moto did not start (is moto[server] installed?): {line:?}"))?
            .to_string();
        // Edition 2021: set before any client reads them; every test here uses the same values.
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::remove_var("AWS_PROFILE");
        std::env::remove_var("AWS_SESSION_TOKEN");
        Ok(Moto { url, _child: child })
    });
    match started {
        Ok(m) => m,
        Err(e) => panic!("local S3 endpoint: {e}"),
    }
}

impl Moto {
    /// A new, empty bucket with a name no other test in this process uses.
    pub async fn bucket(&self, stem: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("{stem}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        self.create_bucket(&name).await;
        name
    }

    pub async fn create_bucket(&self, name: &str) {
        let r = reqwest::Client::new()
            .put(format!("{}/{name}", self.url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "create bucket {name}: {}", r.status());
    }

    /// The `storage:` block that reaches this endpoint, as a user would write it.
    pub fn storage_yaml(&self) -> String {
        storage_yaml(&self.url)
    }

    /// An S3 REST call with an XML body (bucket configuration).
    pub async fn s3_put_xml(&self, path_and_query: &str, xml: String) {
        let r = reqwest::Client::new()
            .put(format!("{}/{path_and_query}", self.url))
            .body(xml)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "PUT {path_and_query}: {status} {text}");
    }
}

/// An `Authorization` header moto accepts for S3 calls: it does not check signatures, and
/// refuses anonymous reads.
pub const UNSIGNED_S3_AUTH: &str =
    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00";

pub fn storage_yaml(endpoint: &str) -> String {
    format!("storage:\n  endpoint: {endpoint}\n  region: us-east-1\n  allow_http: true\n  path_style: true\n")
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python that has the deltalake package: DMS2DELTA_PYTHON, else the repo's .venv.
pub fn python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DMS2DELTA_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = repo().join(".venv/bin/python");
    let ok = venv.exists()
        && std::process::Command::new(&venv)
            .args(["-c", "import deltalake"])
            .output()
            .is_ok_and(|o| o.status.success());
    ok.then_some(venv)
}
