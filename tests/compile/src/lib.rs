//! Compile-time tests of context-local (no library code): `tests/ui.rs` pins
//! the derive's compile errors, `tests/derive_fuzz.rs` compiles and runs
//! generated definitions. Both are run by `cargo test --workspace`.
