//! Runnable examples for `context-local` (see `examples/`).
