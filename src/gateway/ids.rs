//! Request ids for requests that bring none of their own.
//!
//! Invariant: ids are unique within the process without a system call or
//! a lock per request.

use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;

/// Request ids for requests that bring none: a random per-process prefix
/// and a counter, `{prefix:016x}-{counter:012x}`, unique without a system
/// call per request. Formatting is done by hand into a stack buffer: the
/// one allocation is the header value's own.
pub struct RequestIds {
    /// The prefix in hex and the `-`.
    prefix: [u8; 17],
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestIds {
    /// A generator with a fresh random prefix.
    pub fn new() -> Self {
        let mut prefix = [b'-'; 17];
        write_hex(&mut prefix[..16], rand::random());
        RequestIds {
            prefix,
            next: AtomicU64::new(0),
        }
    }

    /// The next id.
    pub fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 29];
        id[..17].copy_from_slice(&self.prefix);
        if n >> 48 != 0 {
            // Past 12 hex digits (2^48 requests) the counter grows wider.
            let mut long = id[..17].to_vec();
            long.extend_from_slice(format!("{n:x}").as_bytes());
            return HeaderValue::from_bytes(&long).expect("hex is a valid header value");
        }
        write_hex(&mut id[17..], n);
        HeaderValue::from_bytes(&id).expect("hex is a valid header value")
    }
}

/// Writes the low `out.len()` hex digits of `n`, zero-padded, into `out`.
fn write_hex(out: &mut [u8], mut n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_the_prefix_a_dash_and_a_12_digit_counter() {
        let ids = RequestIds::new();
        let prefix = std::str::from_utf8(&ids.prefix[..16]).unwrap().to_string();
        assert_eq!(ids.next(), format!("{prefix}-000000000000").as_str());
        assert_eq!(ids.next(), format!("{prefix}-000000000001").as_str());
        ids.next.store(0xabc_def0_1234, Ordering::Relaxed);
        assert_eq!(ids.next(), format!("{prefix}-0abcdef01234").as_str());
        ids.next.store(1 << 48, Ordering::Relaxed);
        assert_eq!(ids.next(), format!("{prefix}-1000000000000").as_str());
        assert!(prefix.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
