//! Request-target canonicalisation: never panics; what it accepts is canonical and forwarded exactly as authorised.
//! The properties are in `fuzz/oracles.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../oracles.rs"]
mod oracles;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracles::target(data));
