//! Helpers for minivmm integration tests.
