//! Files that hold secrets (the generated TLS key, the admin API key, the key that
//! authenticates the compiled-plugin cache): written atomically with mode 0600, and
//! tightened to 0600 when an older release left them readable by others.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `path` (mode 0600) through a temporary file and a rename, so a
/// crash never leaves half a secret. Replaces an existing file.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_beside(path);
    write_new(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    // The rename itself durable: a key deleted or rotated must not come back after a
    // power cut.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Creates `path` (mode 0600) with `bytes` unless it exists. Returns false when another
/// writer got there first (the file then holds their bytes, not these).
pub fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let tmp = temp_beside(path);
    write_new(&tmp, bytes)?;
    // A hard link never replaces an existing file: of two racing writers, one wins.
    let r = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes an existing secret file readable by its owner only; true if it had to.
pub fn tighten(path: &Path) -> std::io::Result<bool> {
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
    Ok(true)
}

/// A 32-byte key kept in `path`: read, or generated and stored (0600) on first use.
pub fn key_file(path: &Path) -> std::io::Result<[u8; 32]> {
    if !path.exists() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        create_private(path, &rand::random::<[u8; 32]>())?;
    }
    if tighten(path)? {
        tracing::warn!(path = %path.display(), "key file was readable by others; now mode 0600");
    }
    let bytes = std::fs::read(path)?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} holds {} bytes, not a 32-byte key (delete it to have a new one made)",
                path.display(),
                b.len()
            ),
        )
    })
}

fn temp_beside(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{:016x}.tmp", rand::random::<u64>()))
}

fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_private_and_keys_stable() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        let k1 = key_file(&p).unwrap();
        assert_eq!(key_file(&p).unwrap(), k1, "read back, not regenerated");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!create_private(&p, b"other").unwrap(), "never replaced");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(key_file(&p).unwrap(), k1);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "tightened");
        std::fs::write(&p, b"short").unwrap();
        assert!(key_file(&p).is_err());
    }
}
