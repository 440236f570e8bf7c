//! Command line and environment: every knob has a flag, an environment variable and a default.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "darkstore", version, about = "Real-time dispatch and geo-inventory server for 10-minute delivery")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeConfig),
    /// Run the server on embedded defaults with a demo city loaded.
    Demo(ServeConfig),
    /// Print a signed token.
    Token(TokenArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// HTTP listen address (port 0 picks a free port).
    #[arg(long = "http", env = "DARKSTORE_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,

    /// sqlite://FILE (created if missing) or postgres://…
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://darkstore.db")]
    pub database_url: String,

    /// An external MQTT broker (mqtt://HOST:PORT); unset starts the embedded broker.
    #[arg(long, env = "DARKSTORE_MQTT_URL")]
    pub mqtt_url: Option<String>,

    /// The embedded broker's listen address (port 0 allowed).
    #[arg(long, env = "DARKSTORE_MQTT_LISTEN", default_value = "127.0.0.1:1883")]
    pub mqtt_listen: SocketAddr,

    /// The embedded broker's TLS certificate chain (PEM). With `--mqtt-tls-key`, the embedded
    /// broker also listens with TLS on `--mqtt-tls-listen`, for riders over the public internet.
    #[arg(long, env = "DARKSTORE_MQTT_TLS_CERT", requires = "mqtt_tls_key")]
    pub mqtt_tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of `--mqtt-tls-cert`.
    #[arg(long, env = "DARKSTORE_MQTT_TLS_KEY", requires = "mqtt_tls_cert")]
    pub mqtt_tls_key: Option<std::path::PathBuf>,

    /// The embedded broker's TLS address (with `--mqtt-tls-cert` and `--mqtt-tls-key`).
    #[arg(long, env = "DARKSTORE_MQTT_TLS_LISTEN", default_value = "127.0.0.1:8883")]
    pub mqtt_tls_listen: SocketAddr,

    /// HS256 secret for bearer tokens. Unset: a random secret is made on first start and kept in
    /// the database, where `darkstore token` finds it.
    #[arg(long, env = "DARKSTORE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// The delivery promise in minutes.
    #[arg(long, env = "DARKSTORE_PROMISE_MINUTES", default_value_t = 10.0)]
    pub promise_minutes: f64,

    /// Rider speed on the road, metres per second (travel model).
    #[arg(long, env = "DARKSTORE_RIDER_SPEED_MPS", default_value_t = 5.0)]
    pub rider_speed_mps: f64,

    /// Road distance over great-circle distance (travel model).
    #[arg(long, env = "DARKSTORE_DETOUR_FACTOR", default_value_t = 1.4)]
    pub detour_factor: f64,

    /// Minutes from confirmation until the rider leaves the store (travel model).
    #[arg(long, env = "DARKSTORE_PICKING_MINUTES", default_value_t = 2.0)]
    pub picking_minutes: f64,

    /// A store whose quote is past this many minutes takes no orders (422 not_serviceable, reason
    /// busy). Unset: darkstore quotes honestly and lets the customer decide.
    #[arg(long, env = "DARKSTORE_MAX_ETA_MINUTES")]
    pub max_eta_minutes: Option<f64>,

    /// The base delivery fee, minor units. Surge multiplies it by up to `--surge-max`.
    #[arg(long, env = "DARKSTORE_DELIVERY_FEE_MINOR", default_value_t = 2_500)]
    pub delivery_fee_minor: i64,

    /// The highest multiple of the base delivery fee a busy area may charge (1 turns surge off).
    #[arg(long, env = "DARKSTORE_SURGE_MAX", default_value_t = 2.0)]
    pub surge_max: f64,

    /// Browser origins allowed to call the API (CORS), e.g. `https://shop.example.com`;
    /// repeatable, or comma-separated in the environment. None by default: browsers on other
    /// origins are refused.
    #[arg(long = "cors-origin", env = "DARKSTORE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Cluster mode: the NATS server (with JetStream) the nodes of one city share
    /// (nats://HOST:PORT). Needs PostgreSQL. Unset: one node, as before.
    #[arg(long, env = "DARKSTORE_CLUSTER_URL")]
    pub cluster_url: Option<String>,

    /// Cluster mode: this node's id, unique among the live nodes (1-64 of [A-Za-z0-9_-]).
    #[arg(long, env = "DARKSTORE_NODE_ID")]
    pub node_id: Option<String>,

    /// Cluster mode: the URL other nodes and operators reach this node's HTTP API at.
    #[arg(long, env = "DARKSTORE_ADVERTISE")]
    pub advertise: Option<String>,

    /// Cluster mode: how long a region's lease lives without renewal (ms). Every node of a
    /// cluster must use the same value (the first node creates the bucket with it).
    #[arg(long, env = "DARKSTORE_LEASE_TTL_MS", default_value_t = 5_000)]
    pub lease_ttl_ms: u64,

    /// Cluster mode: an idle rider of another region within this distance (m, straight line) of a
    /// store of a region this node holds may be given that store's orders (the border rule; the
    /// rider is claimed first, so it never has two tasks). 0: riders work for their home region
    /// only, and riders without a store are not dispatched.
    #[arg(long, env = "DARKSTORE_CLUSTER_BORDER_M", default_value_t = 2_000.0)]
    pub cluster_border_m: f64,

    /// `darkstore demo` only: run the demo's own simulated traffic (24 riders, an order every five
    /// seconds). `false` leaves the city to an outside load generator.
    #[arg(long, env = "DARKSTORE_DEMO_TRAFFIC", default_value_t = true, action = clap::ArgAction::Set)]
    pub demo_traffic: bool,

    /// CA certificates (PEM) to trust for an `mqtts://` broker, beside the Mozilla roots.
    #[arg(long, env = "DARKSTORE_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<std::path::PathBuf>,

    /// Radius of the geofences around stores and doors, metres (left beyond 1.5 × this).
    #[arg(long, env = "DARKSTORE_GEOFENCE_M", default_value_t = 60.0)]
    pub geofence_m: f64,

    /// Days of orders that rank an area's top picks.
    #[arg(long, env = "DARKSTORE_TOP_PICKS_DAYS", default_value_t = 7)]
    pub top_picks_days: u32,

    /// Orders a store picks at once (the quote's picking queue).
    #[arg(long, env = "DARKSTORE_PICKERS", default_value_t = 2)]
    pub pickers: u32,

    /// Seconds a rider spends at the door (the quote's hand-over).
    #[arg(long, env = "DARKSTORE_HANDOVER_SECS", default_value_t = 60.0)]
    pub handover_secs: f64,

    /// Secret of the payment provider's webhook. Set, orders wait in `pending_payment`.
    #[arg(long, env = "DARKSTORE_PAYMENT_WEBHOOK_SECRET", hide_env_values = true)]
    pub payment_webhook_secret: Option<String>,

    /// Minutes a payment hold keeps stock before the order expires.
    #[arg(long, env = "DARKSTORE_PAYMENT_HOLD_MINUTES", default_value_t = 15.0)]
    pub payment_hold_minutes: f64,

    /// Requests per second each client may make (0 turns rate limiting off).
    #[arg(long, env = "DARKSTORE_RATE_LIMIT_PER_SEC", default_value_t = 100.0)]
    pub rate_limit_per_sec: f64,

    /// Requests a client may burst above its rate.
    #[arg(long, env = "DARKSTORE_RATE_LIMIT_BURST", default_value_t = 400.0)]
    pub rate_limit_burst: f64,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "DARKSTORE_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Most writers' jobs committed in one transaction.
    #[arg(long, env = "DARKSTORE_COMMIT_MAX_BATCH", default_value_t = 1024)]
    pub commit_max_batch: usize,

    /// Seconds between sweeps that write off expired lots (and let go of old finished orders).
    #[arg(long, env = "DARKSTORE_EXPIRY_SWEEP_SECS", default_value_t = 60)]
    pub expiry_sweep_secs: u64,

    /// Minutes a finished (delivered, cancelled, expired) order stays in memory after its last
    /// change; after that it is read from the database when asked for.
    #[arg(long, env = "DARKSTORE_ORDER_RETENTION_MINUTES", default_value_t = 120.0)]
    pub order_retention_minutes: f64,

    /// Hours an idempotency key answers with its order; later, the key is refused (409).
    #[arg(long, env = "DARKSTORE_IDEMPOTENCY_KEY_HOURS", default_value_t = 24.0)]
    pub idempotency_key_hours: f64,

    /// Milliseconds between dispatch ticks.
    #[arg(long, env = "DARKSTORE_DISPATCH_TICK_MS", default_value_t = 2000)]
    pub dispatch_tick_ms: u64,

    /// Seconds without a message after which a rider is unavailable (and unpicked orders go back).
    #[arg(long, env = "DARKSTORE_RIDER_SILENCE_SECS", default_value_t = 30)]
    pub rider_silence_secs: u64,

    /// How close to the drop point (metres) a rider's last position must be for a `delivered`
    /// event without the order's delivery code to count.
    #[arg(long, env = "DARKSTORE_DELIVERY_RADIUS_M", default_value_t = 100.0)]
    pub delivery_radius_m: f64,

    /// Rider messages queued between the MQTT client and the ingest worker; beyond it they are shed.
    #[arg(long, env = "DARKSTORE_MQTT_QUEUE", default_value_t = 65_536)]
    pub mqtt_queue: usize,

    /// Most WebSocket connections at once; more are refused with 503.
    #[arg(long, env = "DARKSTORE_WS_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub ws_max_connections: usize,

    /// Messages queued for one WebSocket client before it counts as too slow and is closed (1013).
    #[arg(long, env = "DARKSTORE_WS_QUEUE", default_value_t = 256)]
    pub ws_queue: usize,

    /// How often a WebSocket subscription that asked for batched positions (`"batch": true`)
    /// gets one `riders` frame of the riders that moved, milliseconds (50–10,000).
    #[arg(long, env = "DARKSTORE_WS_BATCH_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(50..=10_000))]
    pub ws_batch_ms: u64,

    /// Serve `/metrics` without a token on this address as well (for Prometheus on a private
    /// network); on the main address it needs an admin token.
    #[arg(long, env = "DARKSTORE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Most WebSocket connections one client (token subject, or IP address when anonymous) may
    /// hold at once; more are refused with 429.
    #[arg(long, env = "DARKSTORE_WS_MAX_PER_CLIENT", default_value_t = 16)]
    pub ws_max_per_client: usize,

    /// Seconds a customer or rider keeps an order's WebSocket feed after the order finished.
    #[arg(long, env = "DARKSTORE_WS_ORDER_GRACE_SECS", default_value_t = 60)]
    pub ws_order_grace_secs: u64,

    /// Log format on stderr: text or json.
    #[arg(long, env = "DARKSTORE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl ServeConfig {
    /// Defaults, as if no flag and no environment variable were given.
    pub fn defaults() -> ServeConfig {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            config: ServeConfig,
        }
        Only::parse_from(["darkstore"]).config
    }

    pub fn travel_model(&self) -> darkstore_geoinv::travel::TravelModel {
        darkstore_geoinv::travel::TravelModel {
            rider_speed_mps: self.rider_speed_mps,
            detour_factor: self.detour_factor,
            picking_minutes: self.picking_minutes,
            promise_minutes: self.promise_minutes,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// customer, staff, rider or admin.
    #[arg(long)]
    pub role: String,
    /// Subject (user, rider or staff id). Defaults to the role's name.
    #[arg(long)]
    pub sub: Option<String>,
    /// The store, for staff tokens.
    #[arg(long)]
    pub store: Option<String>,
    /// Lifetime, e.g. 15m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// The secret; unset reads the one the server keeps in the database.
    #[arg(long, env = "DARKSTORE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// The server's database, to find its secret.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://darkstore.db")]
    pub database_url: String,
}
