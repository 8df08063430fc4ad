//! (stub: filled by its issue)
pub mod secrets;
