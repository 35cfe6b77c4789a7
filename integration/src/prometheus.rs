//! A real Prometheus (Debian's `prometheus`) the tests start on 127.0.0.1,
//! scraping the targets they name every second, and the two HTTP calls
//! they make: a plain GET and an instant query of its HTTP API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::{free_port, wait_listening, Proc};

/// A GET of `path` at `addr` (HOST:PORT) over HTTP/1.1: (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The body of a chunked response.
fn unchunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// `%`-escapes everything but unreserved characters, for a query string.
fn escape(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server, stopped when dropped.
pub struct Prometheus {
    pub addr: String,
    log: std::path::PathBuf,
    _proc: Proc,
}

impl Prometheus {
    /// Starts Prometheus under `dir` (config, data, log) scraping each of
    /// `targets` (HOST:PORT, path `/metrics`) once a second as job
    /// `slayerfs`; returns once its API answers.
    pub fn start(dir: &Path, targets: &[&str]) -> Prometheus {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: slayerfs\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .expect("writing the Prometheus config");
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).expect("creating the Prometheus log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("starting prometheus (scripts/install-deps.sh installs it)");
        let p = Prometheus {
            addr,
            log,
            _proc: Proc(child),
        };
        wait_listening(&p.addr, "prometheus");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(http_get(&p.addr, "/-/ready"), Ok((200, _))) {
            assert!(
                Instant::now() < deadline,
                "prometheus never became ready:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An instant query: each series' labels (as JSON) and value. Panics on
    /// an answer that is not a successful vector result.
    pub fn query(&self, q: &str) -> Vec<(serde_json::Value, f64)> {
        let (status, body) = http_get(&self.addr, &format!("/api/v1/query?query={}", escape(q)))
            .unwrap_or_else(|e| panic!("querying prometheus for {q}: {e}"));
        assert_eq!(status, 200, "query {q}: {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("query {q}: {e}: {body}"));
        assert_eq!(v["status"], "success", "query {q}: {body}");
        assert_eq!(v["data"]["resultType"], "vector", "query {q}: {body}");
        v["data"]["result"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        let value = r["value"][1]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(f64::NAN);
                        (r["metric"].clone(), value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The single value of `q` (a sum, say), or None while it has no series.
    pub fn value(&self, q: &str) -> Option<f64> {
        self.query(q).first().map(|(_, v)| *v)
    }
}
