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
/// `BENCH_DARKSTORE_BIN` runs another build of the server instead (a previous version, for a
/// comparison in the same run).
pub struct BenchServer {
    pub child: Child,
    /// `http://HOST:PORT`
    pub base: String,
    /// `mqtt://HOST:PORT`
    pub mqtt: String,
}

impl BenchServer {
    pub fn start(db_url: &str, extra: &[&str]) -> BenchServer {
        let bin = std::env::var("BENCH_DARKSTORE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_darkstore").to_owned());
        let mut child = Command::new(bin)
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

/// This process's resident set size after giving the system back what the allocator holds free
/// (glibc's `malloc_trim`), bytes: what a structure built from rows since freed really keeps.
pub fn trimmed_rss_bytes() -> u64 {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: glibc's malloc_trim only returns free memory to the system.
    unsafe { malloc_trim(0) };
    rss_bytes()
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

/// The system allocator, counting the bytes the process holds (allocated and not yet freed).
/// A bench that reports memory per item declares it `#[global_allocator]`; the count is the heap
/// the program asked for, without the allocator's own overhead (which the resident size shows).
pub struct Counting;

static LIVE_BYTES: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        }
        p
    }
}

/// Bytes held on the heap now (with [`Counting`] as the global allocator; 0 otherwise).
pub fn live_bytes() -> i64 {
    LIVE_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}
