//! `darkstore-sim`: drives a darkstore server with a simulated city (`run`, not built yet), and
//! replays Meal Delivery Routing Problem instances through darkstore's dispatch code (`mdrp`).

mod mdrp;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "darkstore-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// darkstore's optimizer: bundling, min-cost assignment, hold-back.
    Optimizer,
    /// First come, first served: each order alone to the courier who picks it up earliest.
    Greedy,
}

/// The optimizer's knobs (defaults are darkstore-dispatch's).
#[derive(Clone, Args)]
pub struct Knobs {
    /// Most orders in one bundle.
    #[arg(long)]
    pub max_bundle: Option<usize>,
    /// Bundle when adding an order costs less than this share of a separate trip.
    #[arg(long)]
    pub bundle_saving: Option<f64>,
    /// Candidate riders per bundle.
    #[arg(long)]
    pub candidates: Option<usize>,
    /// Weight of lateness past the promise.
    #[arg(long)]
    pub late_weight: Option<f64>,
    /// Weight of rider time on the route.
    #[arg(long)]
    pub rider_time_weight: Option<f64>,
    /// Weight of time already waited, for orders left unassigned.
    #[arg(long)]
    pub age_weight: Option<f64>,
    /// Turn holding back off.
    #[arg(long)]
    pub no_hold_back: bool,
}

impl Knobs {
    pub fn apply(&self, mut p: darkstore_dispatch::Params) -> darkstore_dispatch::Params {
        if let Some(v) = self.max_bundle {
            p.max_bundle = v;
        }
        if let Some(v) = self.bundle_saving {
            p.bundle_saving = v;
        }
        if let Some(v) = self.candidates {
            p.candidates = v;
        }
        if let Some(v) = self.late_weight {
            p.late_weight = v;
        }
        if let Some(v) = self.rider_time_weight {
            p.rider_time_weight = v;
        }
        if let Some(v) = self.age_weight {
            p.age_weight = v;
        }
        if self.no_hold_back {
            p.hold_back = false;
        }
        p
    }
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
    /// Replay every instance under a directory with both policies and print a Markdown table.
    MdrpBench {
        data_dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        tick_minutes: i64,
        #[command(flatten)]
        knobs: Knobs,
    },
    /// Drive a running server (issue 5; not built yet).
    Run,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Mdrp { instance_dir, out, policy, tick_minutes, knobs } => {
            mdrp::replay_to_dir(&instance_dir, &out, policy, tick_minutes, &knobs).map(|m| {
                println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
            })
        }
        Command::MdrpBench { data_dir, tick_minutes, knobs } => mdrp::bench(&data_dir, tick_minutes, &knobs),
        Command::Run => Err("darkstore-sim run is not built yet (issue 5)".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("darkstore-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
