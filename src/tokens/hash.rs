//! `TokenHash`: the SHA-256 of a token's exact bytes.
//!
//! Invariant: `Debug` and `Display` never print the full digest.

use std::fmt;

use sha2::{Digest, Sha256};

/// SHA-256 of a token's exact bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hashes a presented secret.
    pub fn of(secret: &[u8]) -> Self {
        TokenHash(Sha256::digest(secret).into())
    }

    /// Parses 64 lowercase hex characters (as stored in §3/§4).
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(TokenHash(out))
    }

    /// Lowercase hex, for storing (never for logging).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_of_test_matches_known_vector() {
        let h = TokenHash::of(b"test");
        assert_eq!(
            h.to_hex(),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
    }

    #[test]
    fn uppercase_or_short_hex_is_refused() {
        assert!(TokenHash::from_hex(
            "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"
        )
        .is_none());
        assert!(TokenHash::from_hex("abcd").is_none());
    }

    #[test]
    fn debug_prints_only_a_fingerprint() {
        let h = TokenHash::of(b"test");
        assert_eq!(format!("{h:?}"), "TokenHash(9f86…)");
    }
}
