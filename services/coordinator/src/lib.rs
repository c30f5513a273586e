//! Cadre's coordinator.
pub mod domain;
