//! Runs every program in `examples/` (they assert what they print), so none
//! can rot. Each is built by cargo as a user would build it, then run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every example of the workspace, built by `cargo build --workspace
/// --examples` (with the features `cargo test --workspace` resolves, so
/// after that command this builds nothing): name -> executable.
fn examples() -> &'static HashMap<String, PathBuf> {
    static BUILT: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let output = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--workspace", "--examples", "--message-format=json"])
            .current_dir(workspace())
            .output()
            .unwrap_or_else(|e| panic!("cannot start cargo: {e}"));
        assert!(output.status.success(), "building the examples failed:\n{}", String::from_utf8_lossy(&output.stderr));
        let messages = String::from_utf8_lossy(&output.stdout).into_owned();
        messages.lines().filter_map(example_artifact).collect()
    })
}

/// The name and executable of a built example, from one line of cargo's JSON.
fn example_artifact(line: &str) -> Option<(String, PathBuf)> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    let target = &message["target"];
    if !target["kind"].as_array()?.iter().any(|kind| kind == "example") {
        return None;
    }
    Some((target["name"].as_str()?.to_owned(), PathBuf::from(message["executable"].as_str()?)))
}

/// Runs the example `name`; returns its standard output.
fn run_example(name: &str) -> String {
    let binary = examples().get(name).unwrap_or_else(|| panic!("no example named {name} was built"));
    let output = Command::new(binary)
        .current_dir(workspace())
        .output()
        .unwrap_or_else(|e| panic!("cannot start example {name}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "example {name} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Asserts the example ran and printed `expected` somewhere.
fn check(name: &str, expected: &str) {
    let stdout = run_example(name);
    assert!(stdout.contains(expected), "example {name} did not print {expected:?}:\n{stdout}");
}

#[test]
fn quick_start() {
    check("quick_start", "hello alice (req-1)\nhello stranger (req-2)");
}

/// The README's text and its rust blocks, in order.
fn readme_rust_blocks() -> (String, Vec<String>) {
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let blocks = readme
        .split("```rust\n")
        .skip(1)
        .map(|rest| rest[..rest.find("```").expect("the block's end")].to_string())
        .collect();
    (readme, blocks)
}

/// The README opens with the quick start example, word for word.
#[test]
fn the_readme_quick_start_is_the_example() {
    let example =
        std::fs::read_to_string(workspace().join("examples/examples/quick_start.rs")).expect("quick_start.rs");
    let (_, blocks) = readme_rust_blocks();
    assert_eq!(blocks[0], example, "the README's first rust block differs from examples/examples/quick_start.rs");
}

#[test]
fn request_context() {
    check("request_context", "50 concurrent requests, 0 saw another request's context");
}

#[test]
fn db_per_thread() {
    check("db_per_thread", "100 orders in");
}

#[test]
fn db_per_task() {
    check("db_per_task", "8 requests, 16 connections: one per task, none shared");
}

#[test]
fn logging_context() {
    check("logging_context", "29 lines, 0 with another request's id");
}

#[test]
fn transaction_scope() {
    check("transaction_scope", "2 commits, 6 rollbacks, 0 transactions with another thread's operations");
}

#[test]
fn spinner() {
    check("spinner", "all labelled [req-42]");
}

#[test]
fn thread_pool_leftovers() {
    check("thread_pool_leftovers", "0 of 10 jobs saw a previous job's task_id");
}

#[test]
fn per_session_context() {
    check("per_session_context", "3 sessions, each saw only its own cart");
}

#[test]
fn get_or_create() {
    check("get_or_create", "3 connections made: one per thread");
}

#[test]
fn two_services() {
    check("two_services", "two services: the fields and the unknown member reached B exactly");
}

/// Every rust block of the README is compiled code, word for word: each is
/// a region of an example or of a test (`readme_snippets.rs` holds the
/// excerpts), and none is marked `ignore`.
#[test]
fn every_readme_rust_block_is_compiled() {
    let root = workspace();
    let (readme, blocks) = readme_rust_blocks();
    assert!(!readme.contains("```rust,ignore"), "a README block is not compiled");
    let sources = [
        "examples/examples/quick_start.rs",
        "examples/examples/two_services.rs",
        "tests/tests/baggage_readme.rs",
        "tests/tests/readme_snippets.rs",
    ]
    .map(|path| std::fs::read_to_string(root.join(path)).expect(path));
    assert_eq!(blocks.len(), 9, "the quick start, six excerpts and the two across-services snippets");
    for block in &blocks {
        assert!(sources.iter().any(|source| source.contains(block.as_str())), "not in a compiled file:\n{block}");
    }
}
