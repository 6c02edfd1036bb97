//! Nothing: this package holds benchmarks and tests only.
