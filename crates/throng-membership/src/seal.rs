//! Sealing: the authenticated encryption every gossip datagram goes through.
//!
//! foca (like SWIM itself) has no notion of authentication: anyone who can reach the UDP port could
//! join the cluster, declare members down or read who is in it. So nothing reaches foca — and
//! nothing leaves this node — without being sealed with a key derived from the cluster secret.
//!
//! Wire format of a sealed datagram:
//!
//! ```text
//! +---------+------------------+----------------------+-----------+
//! | version | nonce (24 bytes) | ciphertext           | tag (16)  |
//! +---------+------------------+----------------------+-----------+
//! ```
//!
//! XChaCha20-Poly1305 is used because its 24-byte nonce can be drawn at random for every datagram
//! without any risk of reuse (no counter to persist across restarts). The version byte travels in
//! the clear, so a future format can be recognised, and is also the associated data, so it cannot
//! be altered. The key is `blake3::derive_key` of the secret under a context string that names the
//! protocol and its version, so the same secret used elsewhere never yields the same key.
//!
//! Randomness is an input: [`Sealer::seal`] takes the nonce from its caller.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};

/// Wire-format version; also the associated data of every seal.
pub(crate) const VERSION: u8 = 1;
/// Length of the random nonce that follows the version byte.
pub(crate) const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag at the end of the datagram.
pub(crate) const TAG_LEN: usize = 16;
/// Bytes a seal adds to its plaintext.
pub(crate) const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// blake3 key-derivation context: names the protocol and its version (see the module docs).
const KEY_CONTEXT: &str = "throng 2026-11 gossip v1";

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UnsealError {
    /// Too short to even hold the version, nonce and tag.
    #[error("datagram of {len} bytes is shorter than a seal ({OVERHEAD} bytes)")]
    TooShort {
        /// Length of the datagram.
        len: usize,
    },
    /// The version byte is not one this build speaks.
    #[error("unknown wire version {0}")]
    Version(u8),
    /// The tag does not verify: wrong secret, corruption or forgery.
    #[error("authentication failed")]
    Forged,
}

/// Plaintext too long to seal (cannot happen with this crate's datagram bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("plaintext too long to seal")]
pub(crate) struct SealError;

/// Seals and unseals datagrams with the key of one cluster secret.
pub(crate) struct Sealer {
    cipher: XChaCha20Poly1305,
}

// Never print key material.
impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer { .. }")
    }
}

impl Sealer {
    /// A sealer whose key is derived from `secret`.
    pub(crate) fn new(secret: &[u8]) -> Self {
        let key = blake3::derive_key(KEY_CONTEXT, secret);
        Self {
            cipher: XChaCha20Poly1305::new(&key.into()),
        }
    }

    /// Seals the concatenation of `parts` under `nonce` (which must be fresh randomness).
    pub(crate) fn seal(
        &self,
        nonce: [u8; NONCE_LEN],
        parts: &[&[u8]],
    ) -> Result<Vec<u8>, SealError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut out = Vec::with_capacity(OVERHEAD + len);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        for part in parts {
            out.extend_from_slice(part);
        }
        let tag = self
            .cipher
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &[VERSION],
                &mut out[1 + NONCE_LEN..],
            )
            .map_err(|_| SealError)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Verifies and decrypts `datagram` in place, returning the plaintext.
    ///
    /// Never panics, whatever the input; on error the buffer's contents are unspecified.
    pub(crate) fn unseal<'a>(&self, datagram: &'a mut [u8]) -> Result<&'a [u8], UnsealError> {
        let len = datagram.len();
        if len < OVERHEAD {
            return Err(UnsealError::TooShort { len });
        }
        if datagram[0] != VERSION {
            return Err(UnsealError::Version(datagram[0]));
        }
        let (head, rest) = datagram.split_at_mut(1 + NONCE_LEN);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        self.cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(&head[1..]),
                &[VERSION],
                body,
                Tag::from_slice(tag),
            )
            .map_err(|_| UnsealError::Forged)?;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"correct horse battery staple";

    #[test]
    fn round_trip_and_layout() {
        let sealer = Sealer::new(SECRET);
        let mut sealed = sealer.seal([7; NONCE_LEN], &[b"ab", b"", b"cde"]).unwrap();
        assert_eq!(sealed.len(), OVERHEAD + 5);
        assert_eq!(sealed[0], VERSION);
        assert_eq!(&sealed[1..1 + NONCE_LEN], &[7; NONCE_LEN]);
        assert_ne!(&sealed[1 + NONCE_LEN..1 + NONCE_LEN + 5], b"abcde");
        assert_eq!(sealer.unseal(&mut sealed).unwrap(), b"abcde");
    }

    #[test]
    fn wrong_secret_is_refused() {
        let mut sealed = Sealer::new(SECRET).seal([1; NONCE_LEN], &[b"hi"]).unwrap();
        let other = Sealer::new(b"another secret, same length!");
        assert_eq!(other.unseal(&mut sealed), Err(UnsealError::Forged));
    }

    #[test]
    fn short_and_versioned_inputs_are_refused() {
        let sealer = Sealer::new(SECRET);
        assert_eq!(
            sealer.unseal(&mut []),
            Err(UnsealError::TooShort { len: 0 })
        );
        assert_eq!(
            sealer.unseal(&mut [VERSION; OVERHEAD - 1]),
            Err(UnsealError::TooShort { len: OVERHEAD - 1 })
        );
        let mut sealed = sealer.seal([0; NONCE_LEN], &[]).unwrap();
        assert_eq!(sealed.len(), OVERHEAD);
        sealed[0] = VERSION + 1;
        assert_eq!(
            sealer.unseal(&mut sealed),
            Err(UnsealError::Version(VERSION + 1))
        );
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(format!("{:?}", Sealer::new(SECRET)), "Sealer { .. }");
    }

    proptest! {
        #[test]
        fn unseal_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Sealer::new(SECRET).unseal(&mut bytes);
        }

        #[test]
        fn seal_then_unseal_round_trips(
            secret in proptest::collection::vec(any::<u8>(), 0..64),
            nonce in any::<[u8; NONCE_LEN]>(),
            plaintext in proptest::collection::vec(any::<u8>(), 0..1500),
        ) {
            let sealer = Sealer::new(&secret);
            let mut sealed = sealer.seal(nonce, &[&plaintext]).unwrap();
            prop_assert_eq!(sealer.unseal(&mut sealed).unwrap(), &plaintext[..]);
        }

        #[test]
        fn any_flipped_bit_is_refused(
            nonce in any::<[u8; NONCE_LEN]>(),
            plaintext in proptest::collection::vec(any::<u8>(), 0..256),
            bit in any::<proptest::sample::Index>(),
        ) {
            let sealer = Sealer::new(SECRET);
            let mut sealed = sealer.seal(nonce, &[&plaintext]).unwrap();
            let bit = bit.index(sealed.len() * 8);
            sealed[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(sealer.unseal(&mut sealed).is_err());
        }
    }
}
