//! Criterion benchmarks for `context-local` (see `benches/`).
