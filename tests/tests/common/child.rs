//! Runs one test's scenario in a child process, for scenarios that may abort
//! the process (a panic while unwinding, a stack overflow): the parent test
//! survives to report how the child ended.
//!
//! Used as `#[path = "common/child.rs"] mod child;` by the binaries that need
//! it, so the other test binaries are not affected.

#![allow(dead_code)]

use std::process::Command;

/// The variable that tells a re-executed test binary which scenario to run.
const SCENARIO: &str = "CONTEXT_LOCAL_CHILD_SCENARIO";

/// Prints `line` from a scenario on a line of its own (the harness has
/// already written `test name ... ` without a newline).
pub fn report(line: &str) {
    println!("\n{line}");
}

/// Runs `scenario` in a child process when called from the test `test_name`
/// (the name `--exact` matches: `module::fn_name`, or `fn_name` at the top
/// level), and asserts that the child exited successfully and printed every
/// line of `expected` (each a whole line of its stdout).
///
/// In the child (the same binary, started with `--exact test_name` and the
/// scenario variable set) this runs `scenario` directly instead.
pub fn run_isolated(test_name: &str, scenario: impl FnOnce(), expected: &[&str]) {
    if std::env::var(SCENARIO).as_deref() == Ok(test_name) {
        scenario();
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(SCENARIO, test_name)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("start the child process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // An abort prints a full backtrace; the first lines say what happened.
    let stderr: String = stderr.lines().take(40).map(|line| format!("{line}\n")).collect();
    let report = format!("child exit: {}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}", output.status);
    assert!(output.status.success(), "the scenario's process did not exit successfully\n{report}");
    assert!(stdout.contains("1 passed"), "the child ran exactly this test\n{report}");
    for line in expected {
        assert!(stdout.lines().any(|l| l == *line), "the child did not print {line:?}\n{report}");
    }
}
