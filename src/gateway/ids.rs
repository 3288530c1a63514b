//! Request ids for requests that bring none of their own: UUIDs, version 4,
//! lowercase and hyphenated (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`), as
//! applications that key their records by request id expect.
//!
//! Invariant: no system call and no lock per id: the 122 random bits come
//! from the thread's user-space generator (seeded from the OS once), and the
//! text is formatted by hand on the stack; the one allocation is the header
//! value's own.

use http::HeaderValue;

/// Generates request ids.
#[derive(Debug, Default)]
pub struct RequestIds;

impl RequestIds {
    pub fn new() -> Self {
        RequestIds
    }

    /// A new version-4 UUID as a header value.
    pub fn next(&self) -> HeaderValue {
        uuid_v4(rand::random())
    }
}

/// The UUID of version 4 and the RFC 9562 variant made from `random`.
fn uuid_v4(random: u128) -> HeaderValue {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    /// Where each byte's two digits go: hyphens follow bytes 4, 6, 8, 10.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut bits = random;
    // Version 4 in bits 48–51 (from the top), variant `10` in bits 64–65.
    bits = (bits & !(0xf << 76)) | (0x4 << 76);
    bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    let mut out = [b'-'; 36];
    for (byte, at) in bits.to_be_bytes().into_iter().zip(AT) {
        out[at] = DIGITS[usize::from(byte >> 4)];
        out[at + 1] = DIGITS[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&out).expect("hex and '-' are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_lowercase_hyphenated_version_4_uuids() {
        let ids = RequestIds::new();
        let a = ids.next();
        let parsed = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(parsed.hyphenated().to_string(), a.to_str().unwrap());
        assert_ne!(ids.next(), a);
    }

    #[test]
    fn the_bits_are_placed_as_the_uuid_layout_says() {
        assert_eq!(uuid_v4(0), "00000000-0000-4000-8000-000000000000");
        assert_eq!(uuid_v4(u128::MAX), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(
            uuid_v4(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            "01234567-89ab-4def-8123-456789abcdef"
        );
    }
}
