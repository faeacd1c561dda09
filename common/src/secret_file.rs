//! Writing secrets (keys, tokens) to files only their owner can read.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Makes `dir` (created if missing) its owner's alone: the directory and
/// every directory under it mode 0700, every file 0600. Symbolic links are
/// left as they are and not followed. For a data directory an earlier
/// version created with the process's default modes.
pub fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

/// Creates `path` with mode 0600 and writes `contents`, durably.
///
/// Fails with `AlreadyExists` when the file is there, so two processes racing
/// to create a secret never overwrite each other's. The file is written under
/// a temporary name and linked into place, so a crash never leaves a partial
/// secret behind.
pub fn create_new(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "secret path has no file name",
        )
    })?;
    let mut nonce = [0u8; 8];
    crate::random::fill(&mut nonce);
    let tmp = dir.join(format!(
        ".{}.{:016x}.tmp",
        name.to_string_lossy(),
        u64::from_ne_bytes(nonce)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        // A hard link fails if the target exists: first writer wins, atomically.
        std::fs::hard_link(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_data_directory_is_made_its_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("workers")).unwrap();
        std::fs::write(data.join("registry.redb"), b"x").unwrap();
        std::fs::write(data.join("workers/a-1-v1.log"), b"x").unwrap();
        for p in [&data, &data.join("workers")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        super::make_private(&data).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("workers")), 0o700);
        assert_eq!(mode(&data.join("registry.redb")), 0o600);
        assert_eq!(mode(&data.join("workers/a-1-v1.log")), 0o600);
    }

    use super::*;

    #[test]
    fn first_writer_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        create_new(&path, b"one").unwrap();
        let err = create_new(&path, b"two").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
