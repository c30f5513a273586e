//! `cadre`, the command line for Cadre.

pub mod manifest;
