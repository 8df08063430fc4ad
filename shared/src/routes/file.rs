//! The routes file: JSON, read once at start; every error names its line.
//! SKELETON: the full parser replaces this.

use super::{Routes, RoutesError};
use std::path::Path;

pub fn load(path: &Path) -> Result<Routes, RoutesError> {
    let text = std::fs::read_to_string(path).map_err(|source| RoutesError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

pub fn parse(_text: &str, origin: &str) -> Result<Routes, RoutesError> {
    Err(RoutesError::Invalid {
        origin: origin.to_string(),
        line: 0,
        message: "routes files are not supported yet".into(),
    })
}
