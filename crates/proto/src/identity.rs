//! Node identities bound to a key: an Ed25519 key pair whose public key
//! determines the node id.
//!
//! The id keeps py2p's format, so py2p peers see an ordinary id: base58
//! (Bitcoin alphabet, as `b58encode_int` writes it) of the big-endian
//! integer SHA-384 of the 32-byte Ed25519 public key. Anyone holding the
//! public key can check an id ([`id_of_key`]); only the holder of the
//! secret key can sign for it ([`Identity::sign`], [`verify`]).
//!
//! Pure: the driver supplies the randomness of a fresh key (as a seed) and
//! does the file I/O of a persistent one.

use std::fmt;

pub use ed25519_dalek::VerifyingKey;
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha384};

use crate::id::{b58encode_int, PeerId};

/// Length of an Ed25519 public key, in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;

/// Length of an Ed25519 signature, in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// A node's key pair. Its [`Identity::id`] is the node id.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    /// The key pair whose 32-byte secret key is `secret` (Ed25519's seed).
    /// For a fresh identity, pass 32 bytes of OS randomness.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Identity { key: SigningKey::from_bytes(&secret) }
    }

    /// The 32-byte secret key (keep it secret: it is the identity).
    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.key.verifying_key().to_bytes()
    }

    /// The node id this key stands for ([`id_of_key`] of the public key).
    pub fn id(&self) -> PeerId {
        id_of_key(&self.public_key())
    }

    /// Signs `message` (Ed25519, deterministic).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.key.sign(message).to_bytes()
    }
}

impl fmt::Debug for Identity {
    // Never prints the secret key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("id", &self.id().as_str_lossy()).finish_non_exhaustive()
    }
}

/// The node id of an Ed25519 public key: base58 of the integer SHA-384 of
/// its 32 bytes (py2p's id format).
pub fn id_of_key(public_key: &[u8; PUBLIC_KEY_LEN]) -> PeerId {
    PeerId::from_bytes(b58encode_int(&Sha384::digest(public_key)).into_bytes())
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The bytes are not a valid Ed25519 public key.
    #[error("{}", self.as_reason())]
    BadKey,
    /// The public key does not hash to the id the message claims.
    #[error("{}", self.as_reason())]
    WrongKey,
    /// The signature does not match the message and key.
    #[error("{}", self.as_reason())]
    BadSignature,
}

impl VerifyError {
    /// The reason as a static string, for logs (and the error's text).
    pub fn as_reason(self) -> &'static str {
        match self {
            VerifyError::BadKey => "not an Ed25519 public key",
            VerifyError::WrongKey => "the public key is not the claimed id's",
            VerifyError::BadSignature => "bad signature",
        }
    }
}

/// The key behind `id`: `public_key` must hash to `id` ([`id_of_key`]) and
/// be a valid Ed25519 key. Kept, it spares [`verify`]'s checks of the key
/// on the next message of the same sender ([`verify_with`]).
pub fn key_of(id: &PeerId, public_key: &[u8; PUBLIC_KEY_LEN]) -> Result<VerifyingKey, VerifyError> {
    if id_of_key(public_key) != *id {
        return Err(VerifyError::WrongKey);
    }
    VerifyingKey::from_bytes(public_key).map_err(|_| VerifyError::BadKey)
}

/// Checks `signature` over `message` with a key already checked by
/// [`key_of`] (strict verification).
pub fn verify_with(key: &VerifyingKey, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> Result<(), VerifyError> {
    let signature = ed25519_dalek::Signature::from_bytes(signature);
    key.verify_strict(message, &signature).map_err(|_| VerifyError::BadSignature)
}

/// Checks several signatures at once, each `(key, message, signature)`
/// with a key already checked by [`key_of`]: about half the work of
/// checking them one by one (Ed25519 batch verification, deterministic).
/// It tells only whether all hold; check one by one to find a bad one.
///
/// # Errors
/// [`VerifyError::BadSignature`] if any does not hold.
pub fn verify_batch(items: &[(&VerifyingKey, &[u8], &[u8; SIGNATURE_LEN])]) -> Result<(), VerifyError> {
    let messages: Vec<&[u8]> = items.iter().map(|i| i.1).collect();
    let signatures: Vec<ed25519_dalek::Signature> =
        items.iter().map(|i| ed25519_dalek::Signature::from_bytes(i.2)).collect();
    let keys: Vec<VerifyingKey> = items.iter().map(|i| *i.0).collect();
    ed25519_dalek::verify_batch(&messages, &signatures, &keys).map_err(|_| VerifyError::BadSignature)
}

/// Checks that `signature` is `id`'s over `message`: `public_key` must be
/// the key behind `id` ([`id_of_key`]) and the signature valid for it
/// (strict verification: no malleable or small-order forms).
///
/// # Errors
/// The first check that failed.
pub fn verify(
    id: &PeerId,
    public_key: &[u8; PUBLIC_KEY_LEN],
    message: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<(), VerifyError> {
    verify_with(&key_of(id, public_key)?, message, signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 8032, section 7.1, test 1: the secret key, its public key, and
    /// the signature of the empty message.
    const RFC_SECRET: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const RFC_SIGNATURE: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    fn hex<const N: usize>(s: &str) -> [u8; N] {
        let v: Vec<u8> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect();
        v.try_into().unwrap()
    }

    #[test]
    fn keys_and_signatures_follow_rfc_8032() {
        let me = Identity::from_secret(hex(RFC_SECRET));
        assert_eq!(me.public_key(), hex::<32>(RFC_PUBLIC));
        assert_eq!(me.sign(b""), hex::<64>(RFC_SIGNATURE));
        assert_eq!(verify(&me.id(), &me.public_key(), b"", &me.sign(b"")), Ok(()));
    }

    #[test]
    fn the_id_is_base58_of_the_sha384_of_the_public_key() {
        // Computed independently, with Python's hashlib and the `base58`
        // package py2p uses:
        // base58.b58encode_int(int.from_bytes(hashlib.sha384(pk).digest(), "big"))
        let id = id_of_key(&hex(RFC_PUBLIC));
        assert_eq!(id.as_bytes(), PYTHON_ID_OF_RFC_PUBLIC.as_bytes());
        assert_eq!(Identity::from_secret(hex(RFC_SECRET)).id(), id);
    }

    const PYTHON_ID_OF_RFC_PUBLIC: &str = "4n2bzjajzMrt1MeiQa3NCArVHvvpDQv86QXjBj7aDm6Y7dUj7F5RTNW1LmTY8V3ry2";

    #[test]
    fn debug_output_hides_the_secret() {
        let me = Identity::from_secret([7; 32]);
        let text = format!("{me:?}");
        assert!(text.contains(&*me.id().as_str_lossy()), "{text}");
        assert!(!text.contains("secret") && !text.contains("07, 07"), "{text}");
    }

    proptest! {
        #[test]
        fn a_signature_verifies_for_its_message_and_key_only(
            secret in any::<[u8; 32]>(),
            other in any::<[u8; 32]>(),
            message in proptest::collection::vec(any::<u8>(), 0..200),
            flip in any::<usize>(),
        ) {
            let me = Identity::from_secret(secret);
            let sig = me.sign(&message);
            prop_assert_eq!(verify(&me.id(), &me.public_key(), &message, &sig), Ok(()));
            // Any other message: refused.
            let mut changed = message.clone();
            if changed.is_empty() { changed.push(0) } else { let i = flip % changed.len(); changed[i] ^= 1 << (flip % 8); }
            prop_assert_eq!(verify(&me.id(), &me.public_key(), &changed, &sig), Err(VerifyError::BadSignature));
            // Any changed bit of the signature: refused.
            let mut bad = sig;
            bad[flip % SIGNATURE_LEN] ^= 1 << (flip % 8);
            prop_assert!(verify(&me.id(), &me.public_key(), &message, &bad).is_err());
            // Another key claiming this id, or this key claiming another id.
            let them = Identity::from_secret(other);
            prop_assume!(them.public_key() != me.public_key());
            prop_assert_eq!(verify(&me.id(), &them.public_key(), &message, &them.sign(&message)), Err(VerifyError::WrongKey));
            prop_assert_eq!(verify(&them.id(), &me.public_key(), &message, &sig), Err(VerifyError::WrongKey));
            // The id is py2p-shaped: base58, 384 bits (at most 66 digits).
            let id = me.id();
            prop_assert!(PeerId::valid_len(id.as_bytes().len()) && id.as_bytes().len() <= 66);
            prop_assert!(id.as_bytes().iter().all(|c| c.is_ascii_alphanumeric() && !b"0OIl".contains(c)));
        }
    }
}
