//! The local S3 API server (moto, started by `scripts/moto.sh start`) for the S3 tests:
//! finding it, creating a bucket per test, and raw HTTP requests to it.
//!
//! Shared by `crates/state-dump/tests/s3.rs` and `tests/s3_storage.rs` (included with
//! `#[path]`). The server is found through `AWS_ENDPOINT` in the environment, or else
//! through the env file `scripts/moto.sh` writes (`$CAIRN_MOTO_DIR/env`, by default
//! `$HOME/.cache/cairn-moto/env`), whose variables are then set in this process so that
//! `AmazonS3Builder::from_env()` sees them. If no server answers, [`moto`] returns `None`
//! after printing that the test is skipped, unless `CI=true`, where it panics.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A reachable S3 API server on this machine.
#[derive(Debug, Clone)]
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    addr: SocketAddr,
}

fn env_file() -> PathBuf {
    match std::env::var_os("CAIRN_MOTO_DIR") {
        Some(d) => PathBuf::from(d).join("env"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/cairn-moto/env"),
    }
}

/// The endpoint, from the environment or the env file (whose variables are then set in
/// this process, once); `Err` says why there is none.
fn endpoint() -> &'static Result<String, String> {
    static ENDPOINT: OnceLock<Result<String, String>> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        if let Ok(e) = std::env::var("AWS_ENDPOINT") {
            return Ok(e);
        }
        let file = env_file();
        let text = std::fs::read_to_string(&file).map_err(|e| {
            format!(
                "AWS_ENDPOINT is not set and the env file {} cannot be read ({e}); run `bash scripts/moto.sh start`",
                file.display()
            )
        })?;
        for line in text.lines() {
            let line = line.trim().trim_start_matches("export ").trim();
            if let Some((k, v)) = line.split_once('=') {
                if k.starts_with("AWS_") {
                    // Edition 2021: set_var is safe; every test calls `moto()` before it
                    // starts threads that read the environment.
                    std::env::set_var(k, v);
                }
            }
        }
        std::env::var("AWS_ENDPOINT")
            .map_err(|_| format!("the env file {} sets no AWS_ENDPOINT", file.display()))
    })
}

/// The server, or `None` (printed as skipped) when there is none and `CI` is not `true`.
pub fn moto(test: &str) -> Option<Moto> {
    let found = endpoint().clone().and_then(|e| reach(&e));
    match found {
        Ok(m) => Some(m),
        Err(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("S3 test {test} needs the moto server (CI=true): {why}");
            }
            eprintln!("skipped: S3 test {test} needs the moto server: {why}");
            None
        }
    }
}

fn reach(endpoint: &str) -> Result<Moto, String> {
    let hostport = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| format!("AWS_ENDPOINT={endpoint} is not an http:// URL"))?
        .trim_end_matches('/');
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("AWS_ENDPOINT={endpoint}: {e}"))?
        .next()
        .ok_or_else(|| format!("AWS_ENDPOINT={endpoint} resolves to no address"))?;
    // These tests only ever talk to a server on this machine.
    if !addr.ip().is_loopback() {
        return Err(format!(
            "AWS_ENDPOINT={endpoint} is not on the loopback interface"
        ));
    }
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("no server answers at AWS_ENDPOINT={endpoint}: {e}"))?;
    Ok(Moto {
        endpoint: endpoint.trim_end_matches('/').to_string(),
        addr,
    })
}

impl Moto {
    /// A new bucket with a unique name starting with `tag` (lowercase, digits, dashes).
    pub fn bucket(&self, tag: &str) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!(
            "cairn-{tag}-{}-{}-{}",
            std::process::id(),
            nanos % 1_000_000_000_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        assert!(name.len() <= 63, "bucket name too long: {name}");
        let (status, body) = self.request("PUT", &format!("/{name}"));
        assert_eq!(status, 200, "create bucket {name}: {body}");
        name
    }

    /// One HTTP/1.1 request with an empty body; returns the status and the body. Moto does
    /// not check signatures (by default), but refuses some requests without an
    /// `Authorization` header, so the request carries an unsigned one.
    pub fn request(&self, method: &str, path_and_query: &str) -> (u16, String) {
        let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "cairn-test".into());
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "{method} {path_and_query} HTTP/1.1\r\nHost: {}\r\nAuthorization: AWS4-HMAC-SHA256 Credential={key}/20250101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {text}"));
        let body = text
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_string());
        (status, body)
    }

    /// The keys in `bucket` (one listing page: the tests keep buckets small).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let (status, body) = self.request("GET", &format!("/{bucket}?list-type=2"));
        assert_eq!(status, 200, "{body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect()
    }

    /// The multipart uploads in progress in `bucket`.
    pub fn uploads_in_progress(&self, bucket: &str) -> usize {
        let (status, body) = self.request("GET", &format!("/{bucket}?uploads"));
        assert_eq!(status, 200, "{body}");
        body.matches("<Upload>").count()
    }

    /// The environment a child process needs to reach the server.
    pub fn env(&self) -> Vec<(String, String)> {
        std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .collect()
    }
}
