//! The MDRP replay end to end: the binary on a real instance writes the evaluator's files.

use std::path::PathBuf;
use std::process::Command;

fn instance(name: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mdrp").join(name);
    if dir.join("orders.txt").exists() {
        Some(dir)
    } else {
        assert!(std::env::var("CI").is_err(), "CI must have ../shared/data/mdrp");
        eprintln!("{} is missing: MDRP replay test skipped", dir.display());
        None
    }
}

fn replay(name: &str, policy: &str) -> Option<(serde_json::Value, PathBuf)> {
    let dir = instance(name)?;
    let out = std::env::temp_dir().join(format!("ds-mdrp-{name}-{policy}-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_darkstore-sim"))
        .args(["mdrp", dir.to_str().unwrap(), "--out", out.to_str().unwrap(), "--policy", policy])
        .output()
        .expect("run darkstore-sim");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    Some((metrics, out))
}

#[test]
fn the_optimizer_writes_a_feasible_solution_that_beats_greedy() {
    let Some((opt, out)) = replay("0o50t75s1p100", "optimizer") else { return };
    let Some((greedy, _)) = replay("0o50t75s1p100", "greedy") else { return };
    assert_eq!(opt["infeasibilities"].as_array().map(Vec::len), Some(0), "{}", opt["infeasibilities"]);
    assert_eq!(greedy["infeasibilities"].as_array().map(Vec::len), Some(0));
    let orders = std::fs::read_to_string(out.join("solution_info_orders.txt")).unwrap();
    let mut lines = orders.lines();
    assert_eq!(lines.next(), Some("order placement_time ready_time pickup_time dropoff_time courier"));
    let delivered = opt["orders_delivered"].as_u64().unwrap();
    assert_eq!(lines.count() as u64, delivered);
    for file in ["solution_info_assignments.txt", "solution_info_couriers.txt"] {
        assert!(std::fs::read_to_string(out.join(file)).unwrap().lines().count() > 1, "{file}");
    }
    // Each delivered order: picked up at or after ready, delivered after pickup.
    for line in orders.lines().skip(1) {
        let f: Vec<i64> = line.split(' ').skip(1).take(4).map(|x| x.parse().unwrap()).collect();
        assert!(f[2] >= f[1] && f[3] > f[2], "{line}");
    }
    let ratio = |m: &serde_json::Value| m["click_to_door_over_lower_bound"].as_f64().unwrap();
    assert!(ratio(&opt) < ratio(&greedy), "optimizer {} vs greedy {}", ratio(&opt), ratio(&greedy));
    assert!(ratio(&opt) >= 1.0, "no solution beats the lower bound");
    assert!(opt["orders_delivered"].as_u64() >= greedy["orders_delivered"].as_u64());
}

#[test]
fn a_missing_instance_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_darkstore-sim"))
        .args(["mdrp", "/nonexistent/instance", "--out", "/tmp/ds-mdrp-none"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("restaurants.txt"));
}
