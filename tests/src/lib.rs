//! Integration and compile-fail tests for `context-local` (see `tests/`).
