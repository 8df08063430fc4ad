//! (stub: filled by its issue)
