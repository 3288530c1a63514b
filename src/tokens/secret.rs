//! Generated secrets (§1, §5): `tg_` + 32 random base-62 characters + the
//! base-62 CRC32 of the first 35 characters, so secret scanners recognise
//! them and a mistyped one is refused before any lookup.
//!
//! Invariant: the checks (`looks_like_tg`, `checksum_ok`, `is_mistyped`)
//! allocate nothing and never look at a token's bytes beyond its 41.

use rand::distr::Alphanumeric;
use rand::Rng;

/// The prefix of every generated secret.
pub const PREFIX: &str = "tg_";

/// Length of a generated secret: prefix, 32 random, 6 checksum characters.
pub const LEN: usize = PREFIX.len() + RANDOM_LEN + CHECK_LEN;

const RANDOM_LEN: usize = 32;
const CHECK_LEN: usize = 6;
const BODY_LEN: usize = PREFIX.len() + RANDOM_LEN;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new secret from the thread-local CSPRNG (seeded from the OS).
///
/// The 32 random characters are drawn uniformly from `0-9A-Za-z`
/// (rejection sampling, no modulo bias).
pub fn generate() -> String {
    let mut secret = String::with_capacity(LEN);
    secret.push_str(PREFIX);
    secret.extend(
        rand::rng()
            .sample_iter(Alphanumeric)
            .take(RANDOM_LEN)
            .map(char::from),
    );
    secret.extend(checksum(secret.as_bytes()).iter().map(|&b| char::from(b)));
    secret
}

/// `tg_` followed by exactly 38 characters of `0-9A-Za-z`.
pub fn looks_like_tg(token: &[u8]) -> bool {
    token.len() == LEN
        && token.starts_with(PREFIX.as_bytes())
        && token[PREFIX.len()..].iter().all(u8::is_ascii_alphanumeric)
}

/// Whether the last 6 characters are the base-62 CRC32 of the first 35.
/// False for anything that is not 41 bytes long.
pub fn checksum_ok(token: &[u8]) -> bool {
    token.len() == LEN && checksum(&token[..BODY_LEN]) == token[BODY_LEN..]
}

/// A `tg_` token whose checksum is wrong: answered like an unknown token,
/// without a lookup.
pub fn is_mistyped(token: &[u8]) -> bool {
    looks_like_tg(token) && !checksum_ok(token)
}

/// CRC32 (IEEE) of `body` in base 62, left-padded with `0` to 6 characters
/// (62^6 > 2^32, so six always suffice).
fn checksum(body: &[u8]) -> [u8; CHECK_LEN] {
    let mut n = crc32fast::hash(body);
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Base 62 by repeated subtraction of place values, independent of the
    /// division loop above.
    fn base62_by_place_values(mut n: u64) -> String {
        let alphabet: Vec<char> = ('0'..='9').chain('A'..='Z').chain('a'..='z').collect();
        let mut out = String::new();
        for place in (0..6).rev() {
            let weight = 62u64.pow(place);
            let mut digit = 0;
            while n >= weight {
                n -= weight;
                digit += 1;
            }
            out.push(alphabet[digit]);
        }
        out
    }

    #[test]
    fn known_vector_matches_an_independent_crc32_and_base62() {
        let body = "tg_0123456789abcdefghijklmnopqrstuv";
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(body.as_bytes());
        let expected = format!("{body}{}", base62_by_place_values(hasher.finalize().into()));
        // The same vector from Python's zlib.crc32 (315860075), to anchor
        // both computations to the outside world; note the padding zero.
        assert_eq!(expected, "tg_0123456789abcdefghijklmnopqrstuv0LNJdL");
        assert!(looks_like_tg(expected.as_bytes()));
        assert!(checksum_ok(expected.as_bytes()));
        assert!(!is_mistyped(expected.as_bytes()));
    }

    #[test]
    fn generated_secrets_have_the_format_and_a_valid_checksum() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let s = generate();
            assert_eq!(s.len(), LEN);
            assert!(looks_like_tg(s.as_bytes()), "{s}");
            assert!(checksum_ok(s.as_bytes()), "{s}");
            assert!(!is_mistyped(s.as_bytes()));
            assert!(seen.insert(s));
        }
    }

    #[test]
    fn generated_characters_cover_the_whole_alphabet() {
        let mut seen = [false; 128];
        for _ in 0..100 {
            for b in generate().bytes().skip(3).take(RANDOM_LEN) {
                seen[b as usize] = true;
            }
        }
        for &c in BASE62 {
            assert!(seen[c as usize], "{} never drawn in 3200 draws", c as char);
        }
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let secret = generate().into_bytes();
        for i in PREFIX.len()..LEN {
            for &c in BASE62 {
                if c == secret[i] {
                    continue;
                }
                let mut typo = secret.clone();
                typo[i] = c;
                assert!(is_mistyped(&typo), "typo at {i} not caught");
            }
        }
    }

    #[test]
    fn adjacent_swaps_are_caught() {
        let secret = generate().into_bytes();
        for i in PREFIX.len()..LEN - 1 {
            if secret[i] == secret[i + 1] {
                continue;
            }
            let mut typo = secret.clone();
            typo.swap(i, i + 1);
            assert!(is_mistyped(&typo), "swap at {i} not caught");
        }
    }

    #[test]
    fn other_formats_are_not_tg_and_so_not_mistyped() {
        let secret = generate();
        let long = format!("{secret}x");
        let cases: [&[u8]; 6] = [
            b"",
            b"0123456789abcdef0123456789abcdef01234567", // NetBox: 40 hex
            b"nc_pat_abcdefghijklmnopqrstuvwxyz0123456",
            &secret.as_bytes()[..LEN - 1],                // one short
            long.as_bytes(),                              // one long
            b"tg_0123456789abcdefghijklmnopqrst-v0LNJdL", // '-' is not base 62
        ];
        for case in cases {
            assert!(!looks_like_tg(case), "{:?}", String::from_utf8_lossy(case));
            assert!(!is_mistyped(case));
        }
        assert!(!looks_like_tg(b"TG_0123456789abcdefghijklmnopqrstuv0LNJdL"));
    }
}
