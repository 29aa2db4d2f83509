//! Kernel loading and boot protocols for minivmm.
#![forbid(unsafe_code)]
