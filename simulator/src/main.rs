//! `darkstore-sim`: drives a darkstore server with a simulated city (`run`), and
//! replays Meal Delivery Routing Problem instances through darkstore's dispatch code (`mdrp`).

use darkstore_sim::mdrp::{self, Knobs, Policy};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "darkstore-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay one MDRP instance in simulated time and write the evaluator's three files and metrics.json.
    Mdrp {
        instance_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "optimizer")]
        policy: Policy,
        /// Minutes between dispatch ticks.
        #[arg(long, default_value_t = 1)]
        tick_minutes: i64,
        #[command(flatten)]
        knobs: Knobs,
    },
    /// Backtest the server's demand forecast against seasonal-naive on simulated weeks.
    ForecastBacktest {
        #[arg(long, default_value_t = 50)]
        stores: usize,
        /// Weeks of history per store (the last days held back).
        #[arg(long, default_value_t = 8)]
        weeks: i64,
        #[arg(long, default_value_t = 7)]
        held_back_days: i64,
        /// Hours forecast from 08:00 of each held-back day.
        #[arg(long, default_value_t = 12)]
        horizon: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Replay every instance under a directory with both policies and print a Markdown table.
    MdrpBench {
        data_dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        tick_minutes: i64,
        #[command(flatten)]
        knobs: Knobs,
    },
    /// Drive a running server with a simulated city: riders over MQTT, customers over HTTP and
    /// WebSocket, staff packing and restocking.
    Run {
        /// The server, http://HOST:PORT.
        #[arg(long)]
        server: String,
        /// The server's MQTT broker, mqtt://HOST:PORT.
        #[arg(long)]
        mqtt: String,
        #[arg(long, default_value_t = 20)]
        riders: usize,
        /// Customer orders per second.
        #[arg(long, default_value_t = 1.0)]
        order_rate: f64,
        /// Seconds customers keep arriving.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Riders move and staff pick this many times faster than real time.
        #[arg(long, default_value_t = 1.0)]
        speedup: f64,
        /// Share of orders (0 to 1) their customers cancel, each at a random point of its life
        /// (right after placing, once packed, once assigned, or after pickup, when it is too late).
        #[arg(long, default_value_t = 0.0)]
        cancel_rate: f64,
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Seconds to wait after the last arrival for orders in flight.
        #[arg(long, default_value_t = 60)]
        drain: u64,
        /// The server's token secret (the simulator signs its own tokens).
        #[arg(long, env = "DARKSTORE_JWT_SECRET", hide_env_values = true)]
        jwt_secret: String,
        #[arg(long, default_value_t = 0x5eed)]
        seed: u64,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
        /// Riders are scarce: half of `--riders` come on shift.
        #[arg(long)]
        scarce: bool,
        /// How arrivals spread over the run: `flat`, or `peaks` (the run is a compressed day from
        /// 08:00 to 24:00 with a lunch and an evening peak; the mean rate stays `--order-rate`).
        #[arg(long, value_enum, default_value = "flat")]
        demand: DemandArg,
        /// Staff picking at once in each store.
        #[arg(long, default_value_t = 2)]
        pickers: usize,
        /// A server with no stores gets this many (0: never seed).
        #[arg(long, default_value_t = 8)]
        stores: usize,
        /// SKUs of a seeded city (each stocked with 200 units in every store).
        #[arg(long, default_value_t = 200)]
        skus: usize,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DemandArg {
    Flat,
    Peaks,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Mdrp { instance_dir, out, policy, tick_minutes, knobs } => {
            mdrp::replay_to_dir(&instance_dir, &out, policy, tick_minutes, &knobs).map(|m| {
                println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
            })
        }
        Command::MdrpBench { data_dir, tick_minutes, knobs } => mdrp::bench(&data_dir, tick_minutes, &knobs),
        Command::ForecastBacktest { stores, weeks, held_back_days, horizon, seed } => {
            if weeks < 2 || held_back_days < 1 || held_back_days > 7 * (weeks - 1) || horizon == 0 || horizon > 16 {
                Err("--weeks ≥ 2, --held-back-days in [1, 7 × (weeks − 1)], --horizon in [1, 16]".into())
            } else {
                let b = darkstore_sim::forecast::backtest(stores, weeks, held_back_days, horizon, seed);
                println!("{}", serde_json::to_string_pretty(&b).unwrap_or_default());
                Ok(())
            }
        }
        Command::Run {
            server,
            mqtt,
            riders,
            order_rate,
            duration,
            speedup,
            cancel_rate,
            json,
            drain,
            jwt_secret,
            seed,
            quiet,
            scarce,
            demand,
            pickers,
            stores,
            skus,
        } => {
            let mut cfg = darkstore_sim::city::RunConfig::new(&server, &mqtt, &jwt_secret);
            cfg.riders = if scarce { riders.div_ceil(2) } else { riders };
            cfg.pickers = pickers;
            cfg.seed_stores = stores.min(400);
            cfg.seed_skus = skus.clamp(1, 5_000);
            cfg.demand = match demand {
                DemandArg::Flat => darkstore_sim::city::Demand::Flat,
                DemandArg::Peaks => darkstore_sim::city::Demand::Peaks,
            };
            cfg.order_rate = order_rate;
            cfg.duration = std::time::Duration::from_secs(duration);
            cfg.drain = std::time::Duration::from_secs(drain);
            cfg.speedup = speedup;
            cfg.cancel_rate = cancel_rate;
            cfg.seed = seed;
            cfg.progress = !quiet;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string());
            runtime.and_then(|rt| rt.block_on(darkstore_sim::city::run(cfg))).and_then(|report| {
                print!("{}", report.human());
                match json {
                    Some(path) => std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap_or_default())
                        .map_err(|e| format!("{}: {e}", path.display())),
                    None => Ok(()),
                }
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("darkstore-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
