//! The coordinator's pure core: no clock, no I/O, no randomness. Everything here is a function
//! of its arguments, so it is tested as given-events / when-command / then-events.

pub mod assignment;
pub mod execution;
pub mod validation;

#[cfg(test)]
mod tests;
