//! What the benchmarks share: a deterministic generator, starting the release server, tokens,
//! reading `/metrics`, and the process's resident size.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use darkstore::auth::{self, Claims, Role};

pub const SECRET: &str = "bench-secret-0123456789abcdef";

/// A small deterministic generator (xorshift), so runs are comparable.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The release server, started with `serve`, rate limits off, on `db_url`, plus `extra` flags.
pub struct BenchServer {
    pub child: Child,
    /// `http://HOST:PORT`
    pub base: String,
    /// `mqtt://HOST:PORT`
    pub mqtt: String,
}

impl BenchServer {
    pub fn start(db_url: &str, extra: &[&str]) -> BenchServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_darkstore"))
            .args(["serve", "--http", "127.0.0.1:0", "--database-url", db_url, "--jwt-secret", SECRET])
            .args(["--rate-limit-per-sec", "0"])
            .args(extra)
            .env("DARKSTORE_LOG", "warn,rumqttd=off")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start darkstore");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready line");
        let field =
            |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name)).expect("ready line").to_owned();
        BenchServer { base: format!("http://{}", field("http=")), mqtt: field("mqtt="), child }
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn token(role: Role, sub: &str, store: Option<&str>) -> String {
    let exp = now_ms() / 1000 + 3600;
    auth::sign(SECRET.as_bytes(), &Claims { sub: sub.into(), role, store: store.map(Into::into), exp })
}

/// The value of one series in a Prometheus text page (`name` includes labels and a space).
/// The server's `/metrics` text (read with an admin token).
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    let r = http.get(format!("{base}/metrics")).bearer_auth(token(Role::Admin, "bench-admin", None)).send().await;
    r.expect("metrics").text().await.expect("metrics text")
}

pub fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// Unix milliseconds by the system clock (the test harness reads its own clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The process's resident set size (Linux), bytes.
pub fn rss_bytes() -> u64 {
    rss_bytes_of("self")
}

/// The resident set size of process `pid` (Linux; "self" for this one), bytes.
pub fn rss_bytes_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .map_or(0, |kib: u64| kib * 1024)
}
