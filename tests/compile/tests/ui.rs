//! Compile-time errors of the derive and of misuse of `Field`, pinned by
//! `.stderr` files in `tests/ui` (regenerate with `TRYBUILD=overwrite cargo test -p compile-tests --test ui`).

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
