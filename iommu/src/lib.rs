//! A model of an Intel VT-d DMA and interrupt remapping unit (VT-d specification rev. 4.x).
//!
//! The model is pure: it reads guest structures through `vm-memory`, and reports translations,
//! faults, interrupt remappings and map/unmap notifications through plain types and traits. It
//! never touches KVM or VFIO.
#![forbid(unsafe_code)]

pub mod caching_mode;
pub mod config;
mod fault_reason;
pub mod faults;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod interrupt_remapping;
pub mod invalidation_queue;
mod iotlb;
pub mod limits;
pub mod ratelimit;
pub mod registers;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod translation;
mod types;
pub mod unit;

pub use caching_mode::{MapEvent, Mapping};
pub use config::IommuConfig;
pub use fault_reason::FaultReason;
pub use interrupt_remapping::InterruptRequest;
pub use types::{Bdf, BdfParseError, Iova};
pub use unit::{
    CacheInvalidation, DmaOutcome, HostEffects, InterruptOutcome, InterruptSink, MapFailure,
    RemappingUnit, TranslationCaches,
};
