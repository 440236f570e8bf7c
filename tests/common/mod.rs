//! Starts the real `darkstore` binary on port 0 and talks to it over HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::time::Instant;

use darkstore::auth::{self, Claims, Role};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub const SECRET: &str = "test-secret-0123456789abcdef";

/// Indiranagar, Bengaluru.
pub const STORE_LAT: f64 = 12.9719;
pub const STORE_LNG: f64 = 77.6412;

pub struct Server {
    pub child: Child,
    pub base: String,
    pub db_url: String,
    /// The broker the ready line names.
    pub mqtt: Option<String>,
    pub client: reqwest::Client,
}

pub fn token(role: Role, sub: &str, store: Option<&str>) -> String {
    let exp = now_ms() / 1000 + 3600;
    auth::sign(SECRET.as_bytes(), &Claims { sub: sub.into(), role, store: store.map(Into::into), exp })
}

pub fn admin() -> String {
    token(Role::Admin, "admin", None)
}

impl Server {
    /// Starts the server on `db_url` with extra flags and waits for its ready line.
    pub fn start(db_url: &str, extra: &[&str]) -> Server {
        Server::start_with_env(db_url, extra, &[])
    }

    /// The same, with more environment variables for the process.
    pub fn start_with_env(db_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_darkstore"))
            .args(["serve", "--http", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0"])
            .args(["--database-url", db_url, "--jwt-secret", SECRET])
            .args(extra)
            // Limits off unless a test's flags turn them on.
            .env("DARKSTORE_RATE_LIMIT_PER_SEC", "0")
            .env("DARKSTORE_LOG", "warn,rumqttd=off")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start darkstore");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("darkstore printed its ready line");
        assert!(line.starts_with("darkstore ready http="), "ready line: {line}");
        let addr = line.split_whitespace().find_map(|w| w.strip_prefix("http=")).expect("http=").to_owned();
        let mqtt = line.split_whitespace().find_map(|w| w.strip_prefix("mqtt=")).map(str::to_owned);
        Server {
            child,
            base: format!("http://{addr}"),
            db_url: db_url.to_owned(),
            mqtt,
            client: reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut req = self.client.request(method.parse().unwrap(), self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn order(&self, token: &str, key: &str, body: Value) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url("/v1/orders"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// One store at Indiranagar, a product, and `qty` units of it.
    pub async fn seed(&self, store: &str, sku: &str, qty: i64) {
        let admin = admin();
        let (s, b) = self
            .call(
                "PUT",
                &format!("/v1/stores/{store}"),
                Some(&admin),
                Some(json!({"name": "Indiranagar", "lat": STORE_LAT, "lng": STORE_LNG})),
            )
            .await;
        assert!(s == 201 || s == 200, "{s} {b}");
        let (s, b) = self
            .call(
                "PUT",
                &format!("/v1/catalog/{sku}"),
                Some(&admin),
                Some(json!({"name": "Milk 1 l", "category": "dairy", "price_minor": 4500})),
            )
            .await;
        assert!(s == 201 || s == 200, "{s} {b}");
        if qty == 0 {
            return;
        }
        let (s, b) = self
            .call(
                "POST",
                &format!("/v1/stores/{store}/stock"),
                Some(&admin),
                Some(json!({"sku": sku, "delta": qty, "reason": "restock"})),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }

    pub async fn stock_line(&self, store: &str, sku: &str) -> Value {
        let (s, b) = self.call("GET", &format!("/v1/stores/{store}/stock"), Some(&admin()), None).await;
        assert_eq!(s, 200, "{b}");
        b["lines"].as_array().unwrap().iter().find(|l| l["sku"] == sku).cloned().unwrap_or(Value::Null)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().expect("wait")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn order_body(sku: &str, qty: i64) -> Value {
    json!({"lat": STORE_LAT + 0.001, "lng": STORE_LNG, "lines": [{"sku": sku, "qty": qty}]})
}

/// Unix milliseconds by the system clock (the test harness reads its own clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// An MQTT client as a rider app would run it; publishes it receives arrive on the channel.
/// The second value is the CONNACK outcome: true when the broker accepted the connection.
pub async fn rider_client(
    broker: &str,
    rider: &str,
    password: Option<String>,
) -> (AsyncClient, mpsc::Receiver<(String, Value)>, bool) {
    // Client ids are bound to the token's subject on the embedded broker: `{rider}:…`, or
    // `{role}:{sub}:…` for other roles.
    let role =
        password.as_deref().and_then(|p| auth::verify(SECRET.as_bytes(), p, now_ms() / 1000).ok()).map(|c| c.role);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let client_id = match role {
        Some(Role::Rider) | None => format!("{rider}:{nanos}"),
        Some(r) => format!("{}:{rider}:{nanos}", r.as_str()),
    };
    mqtt_client(broker, &client_id, rider, password).await
}

/// An MQTT client with this client id, username and password; publishes it receives arrive on
/// the channel. The third value is true when the broker accepted the connection.
pub async fn mqtt_client(
    broker: &str,
    client_id: &str,
    user: &str,
    password: Option<String>,
) -> (AsyncClient, mpsc::Receiver<(String, Value)>, bool) {
    let hostport = broker.trim_start_matches("mqtt://");
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let mut opts = MqttOptions::new(client_id, host, port.parse().unwrap());
    opts.set_keep_alive(Duration::from_secs(5));
    if let Some(p) = password {
        opts.set_credentials(user, p);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let (tx, rx) = mpsc::channel(100);
    let (ack_tx, mut ack_rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = ack_tx.try_send(true);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    let _ = tx.send((p.topic, v)).await;
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = ack_tx.try_send(false);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let accepted = tokio::time::timeout(Duration::from_secs(5), ack_rx.recv()).await.ok().flatten().unwrap_or(false);
    (client, rx, accepted)
}

pub async fn publish(client: &AsyncClient, topic: String, body: Value) {
    client.publish(topic, QoS::AtLeastOnce, false, body.to_string()).await.unwrap();
}

/// Polls `f` until it returns Some, or panics after `secs`.
pub async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, secs: u64, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn mqtt_of(server: &Server) -> String {
    server.mqtt.clone().expect("the ready line names the broker")
}

pub async fn metric(server: &Server, series: &str) -> f64 {
    let text =
        server.client.get(server.url("/metrics")).bearer_auth(admin()).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// Waits until something listens on 127.0.0.1:`port` (at most 5 s).
pub fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `nats-server` with JetStream of a test's (or bench's) own: a free port, a temporary
/// directory, stopped and cleaned up on drop. None when `nats-server` is not installed.
pub struct Nats {
    child: Child,
    pub url: String,
    dir: std::path::PathBuf,
    port: u16,
}

impl Nats {
    pub fn start() -> Option<Nats> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let dir = std::env::temp_dir().join(format!("ds_nats_{}_{port}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let child = Nats::spawn(port, &dir)?;
        Some(Nats { child, url: format!("nats://127.0.0.1:{port}"), dir, port })
    }

    fn spawn(port: u16, dir: &std::path::Path) -> Option<Child> {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd", dir.to_str()?])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        wait_for_port(port);
        Some(child)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and storage directory.
    pub fn restart(&mut self) {
        self.child = Nats::spawn(self.port, &self.dir).expect("nats-server starts again");
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs SQL on the PostgreSQL server the tests use (`DARKSTORE_TEST_POSTGRES`).
pub async fn admin_sql(sql: &str) {
    use sqlx::{Connection, Executor};
    sqlx::any::install_default_drivers();
    let url = std::env::var(darkstore_db::scratch::POSTGRES_ENV).unwrap();
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    conn.execute(sql).await.unwrap();
}

/// Makes the scratch database at `url` refuse new connections and cuts the open ones (`away`),
/// or lets them in again.
pub async fn database_away(url: &str, away: bool) {
    let name = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    admin_sql(&format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {}", !away)).await;
    if away {
        admin_sql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ))
        .await;
    }
}

/// libfaketime (Debian package `faketime`), to run a process on a skewed clock.
pub fn libfaketime() -> Option<String> {
    let dirs = std::fs::read_dir("/usr/lib").ok()?;
    dirs.flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .chain([std::path::PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|p| p.exists())
        .map(|p| p.display().to_string())
}

/// A GET as admin, retried for up to 15 s while a region changes owner (503; a GET is safe to
/// repeat).
pub async fn get_retried(server: &Server, path: &str) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v) = server.call("GET", path, Some(&admin()), None).await;
        if s != 503 || Instant::now() > deadline {
            return (s, v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ledger's sums per store (on hand, reserved), straight from PostgreSQL.
pub async fn ledger(db_url: &str) -> std::collections::BTreeMap<String, (i64, i64)> {
    use sqlx::Row;
    let pool = sqlx::PgPool::connect(db_url).await.unwrap();
    let rows = sqlx::query(
        "SELECT store_id, CAST(SUM(d_on_hand) AS BIGINT), CAST(SUM(d_reserved) AS BIGINT) FROM stock_ledger GROUP BY store_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.iter().map(|r| (r.get::<String, _>(0), (r.get::<i64, _>(1), r.get::<i64, _>(2)))).collect()
}
