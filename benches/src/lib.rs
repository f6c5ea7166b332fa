//! Shared pieces of the benchmark suite: a 64-field context struct for the
//! snapshot and copy-on-write groups, and the reader of criterion's saved
//! estimates used by the `compare` binary.

use std::path::{Path, PathBuf};

use context_local::{ContextLocal, Field};

/// A task-scoped struct with 64 `u64` fields, for timing snapshots and the
/// first write after one with many fields set.
#[derive(ContextLocal)]
#[allow(missing_docs)]
pub struct Wide {
    f00: u64,
    f01: u64,
    f02: u64,
    f03: u64,
    f04: u64,
    f05: u64,
    f06: u64,
    f07: u64,
    f08: u64,
    f09: u64,
    f10: u64,
    f11: u64,
    f12: u64,
    f13: u64,
    f14: u64,
    f15: u64,
    f16: u64,
    f17: u64,
    f18: u64,
    f19: u64,
    f20: u64,
    f21: u64,
    f22: u64,
    f23: u64,
    f24: u64,
    f25: u64,
    f26: u64,
    f27: u64,
    f28: u64,
    f29: u64,
    f30: u64,
    f31: u64,
    f32: u64,
    f33: u64,
    f34: u64,
    f35: u64,
    f36: u64,
    f37: u64,
    f38: u64,
    f39: u64,
    f40: u64,
    f41: u64,
    f42: u64,
    f43: u64,
    f44: u64,
    f45: u64,
    f46: u64,
    f47: u64,
    f48: u64,
    f49: u64,
    f50: u64,
    f51: u64,
    f52: u64,
    f53: u64,
    f54: u64,
    f55: u64,
    f56: u64,
    f57: u64,
    f58: u64,
    f59: u64,
    f60: u64,
    f61: u64,
    f62: u64,
    f63: u64,
}

/// Every field of [`Wide`], in order.
pub const WIDE_FIELDS: [Field<u64>; 64] = [
    Wide::f00(),
    Wide::f01(),
    Wide::f02(),
    Wide::f03(),
    Wide::f04(),
    Wide::f05(),
    Wide::f06(),
    Wide::f07(),
    Wide::f08(),
    Wide::f09(),
    Wide::f10(),
    Wide::f11(),
    Wide::f12(),
    Wide::f13(),
    Wide::f14(),
    Wide::f15(),
    Wide::f16(),
    Wide::f17(),
    Wide::f18(),
    Wide::f19(),
    Wide::f20(),
    Wide::f21(),
    Wide::f22(),
    Wide::f23(),
    Wide::f24(),
    Wide::f25(),
    Wide::f26(),
    Wide::f27(),
    Wide::f28(),
    Wide::f29(),
    Wide::f30(),
    Wide::f31(),
    Wide::f32(),
    Wide::f33(),
    Wide::f34(),
    Wide::f35(),
    Wide::f36(),
    Wide::f37(),
    Wide::f38(),
    Wide::f39(),
    Wide::f40(),
    Wide::f41(),
    Wide::f42(),
    Wide::f43(),
    Wide::f44(),
    Wide::f45(),
    Wide::f46(),
    Wide::f47(),
    Wide::f48(),
    Wide::f49(),
    Wide::f50(),
    Wide::f51(),
    Wide::f52(),
    Wide::f53(),
    Wide::f54(),
    Wide::f55(),
    Wide::f56(),
    Wide::f57(),
    Wide::f58(),
    Wide::f59(),
    Wide::f60(),
    Wide::f61(),
    Wide::f62(),
    Wide::f63(),
];

/// Sets the first `n` fields of [`Wide`] in the current context.
pub fn fill_wide(n: usize) {
    for (i, field) in WIDE_FIELDS.iter().take(n).enumerate() {
        field.set(i as u64);
    }
}

/// Where criterion and the memory bench keep their results: the workspace's
/// `target/criterion`, or `$CARGO_TARGET_DIR/criterion`.
pub fn criterion_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    target.join("criterion")
}

/// The median time, in nanoseconds, criterion saved for `group/bench`.
///
/// # Errors
///
/// A message naming the file when it is missing or unreadable (the bench has
/// not been run yet).
pub fn median_ns(group: &str, bench: &str) -> Result<f64, String> {
    let path = criterion_dir().join(group).join(bench).join("new").join("estimates.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (run `cargo bench -p benches` first)", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    json["median"]["point_estimate"].as_f64().ok_or_else(|| format!("{}: no median.point_estimate", path.display()))
}

/// Where the memory bench writes its figures (JSON: bytes per task per variant).
pub fn memory_report() -> PathBuf {
    criterion_dir().join("memory").join("report.json")
}
