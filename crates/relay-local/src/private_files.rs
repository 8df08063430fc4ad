//! The data folder holds portals' OAuth and application tokens: it is created 0700 and the
//! SQLite files 0600 before SQLite opens them (SQLite gives its -wal/-shm files the mode of
//! the database file), so no other local user can read a token.

use std::path::Path;

/// Creates `dir` (and parents) and narrows it to 0700, also when it already existed.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Creates `file` empty with mode 0600 when missing, and narrows it (and any `-wal`, `-shm`,
/// `-journal` beside it) to 0600 when present.
pub fn prepare_private_file(file: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(file)?;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = file.as_os_str().to_owned();
            name.push(suffix);
            let path = std::path::PathBuf::from(name);
            if path.exists() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Ok(())
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn folder_and_files_are_private_even_when_they_existed() {
        let base = std::env::temp_dir().join(format!("relay-modes-{}", std::process::id()));
        let dir = base.join("data");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = dir.join("relay.db");
        std::fs::write(dir.join("relay.db-wal"), b"").unwrap();
        std::fs::set_permissions(
            dir.join("relay.db-wal"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        create_private_dir(&dir).unwrap();
        prepare_private_file(&db).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&dir.join("relay.db-wal")), 0o600);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
