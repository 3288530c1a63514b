//! Split tokens: `<prefix><key><separator><secret>`, looked up by their
//! public `key` and verified against a stored HMAC-SHA256 digest of the
//! `secret` under a pepper (NetBox v2: `nbt_<key>.<token>`, stored as
//! `key`, `digest`, `pepper_id`).
//!
//! Invariant: every way a split credential can be wrong — wrong shape,
//! unknown key, unknown pepper, wrong digest — ends in the same `None`, and
//! digests are compared in constant time; peppers and secrets are never
//! formatted (`Debug` shows pepper ids only).

use std::collections::HashMap;
use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::TokenHash;

type HmacSha256 = Hmac<Sha256>;

/// A stored split-token digest: which pepper, and HMAC-SHA256(pepper,
/// secret).
#[derive(Clone, PartialEq, Eq)]
pub struct SplitDigest {
    pub pepper_id: Box<str>,
    pub hmac: [u8; 32],
}

impl fmt::Debug for SplitDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitDigest")
            .field("pepper_id", &self.pepper_id)
            .finish_non_exhaustive()
    }
}

impl SplitDigest {
    /// From its lowercase hex form (64 characters).
    pub fn from_hex(pepper_id: &str, hex_digest: &str) -> Option<SplitDigest> {
        if hex_digest.len() != 64 || hex_digest.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut hmac = [0u8; 32];
        hex::decode_to_slice(hex_digest, &mut hmac).ok()?;
        Some(SplitDigest {
            pepper_id: pepper_id.into(),
            hmac,
        })
    }
}

/// What a source stores for one split token: its public key and the
/// digest of its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SplitKey {
    pub key: Box<str>,
    pub digest: SplitDigest,
}

impl fmt::Debug for SplitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitKey")
            .field("key", &self.key)
            .field("digest", &self.digest)
            .finish()
    }
}

impl SplitKey {
    /// The `TokenHash` a split token's record carries: SHA-256 over a
    /// domain tag, the key, the pepper id and the digest. It is never put
    /// where presented tokens are looked up (a split token is found only
    /// by its key), so it matches no credential; it changes whenever the
    /// token's digest does, which is what sessions bind to.
    pub fn binding_hash(&self) -> TokenHash {
        let mut h = Sha256::new();
        h.update(b"tollgate split token\0");
        h.update(self.key.as_bytes());
        h.update(b"\0");
        h.update(self.digest.pepper_id.as_bytes());
        h.update(b"\0");
        h.update(self.digest.hmac);
        TokenHash(h.finalize().into())
    }
}

/// The split-token rules of a config: the shape, and the peppers by id.
#[derive(Clone, PartialEq, Eq)]
pub struct SplitTokens {
    prefix: Box<str>,
    separator: Box<str>,
    peppers: HashMap<Box<str>, Pepper>,
}

/// One pepper, with the HMAC state after its key block: each verification
/// clones that state rather than hashing the padded key again (two of the
/// four SHA-256 compressions of a short token's HMAC).
#[derive(Clone)]
struct Pepper {
    key: Box<[u8]>,
    keyed: HmacSha256,
}

impl PartialEq for Pepper {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Pepper {}

impl fmt::Debug for SplitTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&str> = self.peppers.keys().map(|k| &**k).collect();
        ids.sort_unstable();
        f.debug_struct("SplitTokens")
            .field("prefix", &self.prefix)
            .field("separator", &self.separator)
            .field("pepper_ids", &ids)
            .finish()
    }
}

impl SplitTokens {
    /// `prefix` and `separator` non-empty (checked by the config).
    pub fn new(prefix: &str, separator: &str, peppers: HashMap<Box<str>, Box<[u8]>>) -> Self {
        let peppers = peppers
            .into_iter()
            .map(|(id, key)| {
                let keyed =
                    HmacSha256::new_from_slice(&key).expect("HMAC takes a key of any length");
                (id, Pepper { key, keyed })
            })
            .collect();
        SplitTokens {
            prefix: prefix.into(),
            separator: separator.into(),
            peppers,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn separator(&self) -> &str {
        &self.separator
    }

    /// Whether a pepper with this id is configured.
    pub fn has_pepper(&self, id: &str) -> bool {
        self.peppers.contains_key(id)
    }

    /// Whether `token` is meant as a split token (it has the prefix); such
    /// a token is judged only as one.
    #[inline]
    pub fn claims(&self, token: &[u8]) -> bool {
        token.starts_with(self.prefix.as_bytes())
    }

    /// `(key, secret)` of a token with the prefix; `None` for a wrong shape
    /// (no separator, or an empty key or secret).
    pub fn parse<'t>(&self, token: &'t [u8]) -> Option<(&'t str, &'t [u8])> {
        let rest = token.strip_prefix(self.prefix.as_bytes())?;
        let sep = self.separator.as_bytes();
        let at = rest.windows(sep.len()).position(|w| w == sep)?;
        let (key, secret) = (&rest[..at], &rest[at + sep.len()..]);
        if key.is_empty() || secret.is_empty() {
            return None;
        }
        Some((std::str::from_utf8(key).ok()?, secret))
    }

    /// Whether `secret` matches `digest`: HMAC-SHA256 under the digest's
    /// pepper, compared in constant time. An unknown pepper never matches.
    pub fn verify(&self, digest: &SplitDigest, secret: &[u8]) -> bool {
        let Some(pepper) = self.peppers.get(&digest.pepper_id) else {
            return false;
        };
        let mut mac = pepper.keyed.clone();
        mac.update(secret);
        mac.verify_slice(&digest.hmac).is_ok()
    }
}

/// HMAC-SHA256 of `secret` under `pepper`, lowercase hex: how a digest for
/// a split token is made (`tollgate` never needs it on the request path;
/// tests and tools do).
pub fn hmac_hex(pepper: &[u8], secret: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(pepper).expect("HMAC takes a key of any length");
    mac.update(secret);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netbox() -> SplitTokens {
        let peppers = HashMap::from([(
            "1".into(),
            b"a-pepper-of-at-least-fifty-characters-as-netbox-asks"
                .to_vec()
                .into_boxed_slice(),
        )]);
        SplitTokens::new("nbt_", ".", peppers)
    }

    #[test]
    fn hmac_sha256_matches_the_rfc_4231_vectors() {
        // RFC 4231, test cases 1 and 2.
        assert_eq!(
            hmac_hex(&[0x0b; 20], b"Hi There"),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn netbox_v2_digests_follow_its_documented_procedure() {
        // NetBox v2 stores `digest = HMAC-SHA256(key=pepper, msg=token)`,
        // hex, beside the token's `key` and the pepper's id; the client
        // sends `Bearer nbt_<key>.<token>`. Vector computed independently
        // with Python's `hmac.new(pepper, token, hashlib.sha256).hexdigest()`.
        let split = netbox();
        let token = b"nbt_5yVnSt8fRzSU.0123456789abcdef0123456789abcdef01234567";
        let (key, secret) = split.parse(token).unwrap();
        assert_eq!(key, "5yVnSt8fRzSU");
        assert_eq!(secret, b"0123456789abcdef0123456789abcdef01234567");
        let hex = hmac_hex(
            b"a-pepper-of-at-least-fifty-characters-as-netbox-asks",
            secret,
        );
        assert_eq!(
            hex,
            "bb68c777f02e00373160930d8d8da0763fc117371d96bbb9f70ca36c5de56dac"
        );
        let digest = SplitDigest::from_hex("1", &hex).unwrap();
        assert!(split.verify(&digest, secret));
        assert!(!split.verify(&digest, b"0123456789abcdef0123456789abcdef01234568"));
        let other_pepper = SplitDigest::from_hex("2", &hex).unwrap();
        assert!(
            !split.verify(&other_pepper, secret),
            "an unknown pepper never matches"
        );
    }

    #[test]
    fn a_token_with_the_prefix_but_a_wrong_shape_parses_to_nothing() {
        let split = netbox();
        for bad in [
            &b"nbt_"[..],
            b"nbt_nokeyseparator",
            b"nbt_.secret",
            b"nbt_key.",
            b"nbt_\xff.x",
        ] {
            assert!(split.claims(bad));
            assert_eq!(split.parse(bad), None, "{bad:?}");
        }
        assert!(!split.claims(b"0123456789abcdef"));
        // The first separator splits: the secret may contain more.
        assert_eq!(split.parse(b"nbt_k.s.t"), Some(("k", &b"s.t"[..])));
    }

    #[test]
    fn digests_are_64_lowercase_hex_characters() {
        assert!(SplitDigest::from_hex("1", &"ab".repeat(32)).is_some());
        assert!(SplitDigest::from_hex("1", &"AB".repeat(32)).is_none());
        assert!(SplitDigest::from_hex("1", &"ab".repeat(31)).is_none());
        assert!(SplitDigest::from_hex("1", &"zz".repeat(32)).is_none());
    }

    #[test]
    fn debug_never_shows_a_pepper_or_a_digest() {
        let split = netbox();
        let shown = format!("{split:?}");
        assert!(!shown.contains("pepper-of"), "{shown}");
        assert!(shown.contains("pepper_ids: [\"1\"]"), "{shown}");
        let d = SplitDigest::from_hex("1", &"ab".repeat(32)).unwrap();
        assert!(!format!("{d:?}").contains("abab"));
    }
}
