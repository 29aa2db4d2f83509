//! ACPI tables for minivmm.
#![forbid(unsafe_code)]
