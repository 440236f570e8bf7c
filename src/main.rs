//! The `darkstore` binary: parse the command line, then serve, run the demo or print a token.

use std::process::ExitCode;

use std::sync::Arc;

use clap::Parser;
use darkstore::clock::{Clock, SystemClock};
use darkstore::config::{Cli, Command, ServeConfig, TokenArgs};
use darkstore::{BoxError, JWT_SECRET_KEY, auth, demo};

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("darkstore: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(config) => serve(config, false).await,
            Command::Demo(config) => serve(config, true).await,
            Command::Token(args) => token(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("darkstore: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DARKSTORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,mqtt5=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

/// Keeps glibc's allocator from letting resident memory creep under a steady load (measured in
/// BENCHMARKS.md, Soak). Left alone, glibc raises its mmap threshold each time a large buffer is
/// freed, so the broker's and the connections' buffers of 64 KiB and more end up inside the
/// arenas, whose freed holes are reused poorly; and it creates up to eight arenas per core. A fixed
/// threshold returns large buffers to the kernel when they are freed, and two arenas are plenty
/// for a two-thread runtime. The `MALLOC_ARENA_MAX` and `MALLOC_MMAP_THRESHOLD_` environment
/// variables still override these.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters. It runs first thing in main, before any
    // other thread exists.
    unsafe {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

async fn serve(mut config: ServeConfig, with_demo: bool) -> Result<(), BoxError> {
    init_logs(&config.log_format);
    let listener = match tokio::net::TcpListener::bind(config.http).await {
        Ok(l) => l,
        // The demo is for trying things out: a taken port is no reason to stop.
        Err(e) if with_demo => {
            tracing::warn!(addr = %config.http, error = %e, "HTTP address taken; the demo uses a free port instead");
            tokio::net::TcpListener::bind((config.http.ip(), 0)).await?
        }
        Err(e) => return Err(format!("cannot listen on {}: {e}", config.http).into()),
    };
    if with_demo && config.mqtt_url.is_none() && std::net::TcpListener::bind(config.mqtt_listen).is_err() {
        tracing::warn!(addr = %config.mqtt_listen, "MQTT address taken; the demo's broker uses a free port instead");
        config.mqtt_listen.set_port(0);
    }
    // The one place the server reads the system clock: everything else is handed this clock.
    let server = darkstore::start(&config, listener, Arc::new(SystemClock)).await?;
    if with_demo {
        demo::load_city(&server.app.state, &server.app.riders).await?;
        let secret = String::from_utf8_lossy(&server.app.jwt_secret).into_owned();
        demo::print_welcome(&server, &secret);
        if config.demo_traffic {
            demo::start_traffic(&server, &secret);
        }
    }
    println!("{}", server.ready_line());
    server.run_until(shutdown_signal()).await
}

async fn token(args: TokenArgs) -> Result<(), BoxError> {
    let role = auth::Role::parse(&args.role).ok_or("--role must be customer, staff, rider or admin")?;
    if role == auth::Role::Staff && args.store.is_none() {
        return Err("a staff token needs --store STORE_ID".into());
    }
    let ttl = humantime::parse_duration(&args.ttl).map_err(|e| format!("--ttl {:?}: {e}", args.ttl))?;
    let secret = match args.jwt_secret {
        Some(s) => s,
        None => {
            let db = darkstore_db::Db::connect(&args.database_url).await?;
            let secret = db.setting(JWT_SECRET_KEY).await?;
            db.close().await;
            secret.ok_or("no token secret: pass --jwt-secret, or start the server once on this database")?
        }
    };
    let now = SystemClock.now_secs();
    let claims = auth::Claims {
        sub: args.sub.unwrap_or_else(|| args.role.clone()),
        role,
        store: args.store,
        exp: now + ttl.as_secs() as i64,
    };
    println!("{}", auth::sign(secret.as_bytes(), &claims));
    Ok(())
}
