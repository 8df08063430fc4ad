//! Scratch directories for tests that open an embedded store: unique per test, under the
//! system temp dir, removed on drop (the `tempfile` crate would be one more dependency).

use std::path::{Path, PathBuf};

pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new(label: &str) -> ScratchDir {
        let path = std::env::temp_dir()
            .join("crm-relay-tests")
            .join(crate::moto::unique_name(label));
        std::fs::create_dir_all(&path).expect("create scratch dir");
        ScratchDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
