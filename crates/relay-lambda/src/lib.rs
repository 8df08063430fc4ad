//! Lambda glue: turns Lambda events into calls on `ingest` and `consume` and back.
//! The functions' mains call these; nothing here decides anything about an event.

pub mod consumer;
pub mod ingest;
pub mod offline_poller;
pub mod resources;
