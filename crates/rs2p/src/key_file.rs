//! A node's key on disk, so that it keeps its id across restarts.
//!
//! The file is the Ed25519 secret key as PKCS#8 PEM (`-----BEGIN PRIVATE
//! KEY-----`), the format of `openssl genpkey -algorithm ed25519`, so an
//! operator can make, inspect or back it up with standard tools. A missing
//! file is created with a fresh key, readable by its owner only (mode 0600,
//! never overwriting a file that appears meanwhile).

use std::io::Write;
use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use rs2p_proto::identity::Identity;

use crate::Error;

/// Loads the identity in `path`, creating the file with a fresh key when it
/// does not exist.
///
/// # Errors
/// [`Error::KeyFile`] when the file cannot be read or created, or does not
/// hold an Ed25519 key in PKCS#8 PEM.
pub fn load_or_create(path: &Path) -> Result<Identity, Error> {
    let fail = |reason: String| Error::KeyFile { path: path.to_path_buf(), reason };
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text).map_err(fail),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let me = Identity::from_secret(rand::random());
            match create(path, &me) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), id = %me.id(), "created a new node key");
                    Ok(me)
                }
                // Another process made it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::read_to_string(path).map_err(|e| fail(e.to_string())).and_then(|t| parse(&t).map_err(fail))
                }
                Err(e) => Err(fail(format!("cannot create it: {e}"))),
            }
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Writes `identity` to a new file at `path` (owner-only permissions).
///
/// # Errors
/// The I/O error; `AlreadyExists` if the file exists (it is never
/// overwritten).
pub fn create(path: &Path, identity: &Identity) -> std::io::Result<()> {
    let pem = SigningKey::from_bytes(&identity.secret())
        .to_pkcs8_pem(Default::default())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()
}

fn parse(text: &str) -> Result<Identity, String> {
    let key = SigningKey::from_pkcs8_pem(text)
        .map_err(|e| format!("not an Ed25519 private key in PKCS#8 PEM ({e}); move it away to make a new one"))?;
    Ok(Identity::from_secret(key.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rs2p-key-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("node.key")
    }

    #[test]
    fn a_missing_key_is_made_once_and_kept() {
        let path = temp("made");
        let first = load_or_create(&path).unwrap();
        let again = load_or_create(&path).unwrap();
        assert_eq!(first.id(), again.id());
        assert_eq!(first.secret(), again.secret());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{mode:o}");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn an_existing_file_is_never_overwritten() {
        let path = temp("kept");
        std::fs::write(&path, "not a key").unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("not an Ed25519 private key") && err.contains("node.key"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key");
        assert!(create(&path, &Identity::from_secret([1; 32])).is_err());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_key_made_by_openssl_is_read() {
        // `openssl genpkey -algorithm ed25519` of RFC 8032's first test key.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
        let me = parse(pem).unwrap();
        assert_eq!(me.id().as_bytes(), b"4n2bzjajzMrt1MeiQa3NCArVHvvpDQv86QXjBj7aDm6Y7dUj7F5RTNW1LmTY8V3ry2");
    }
}
