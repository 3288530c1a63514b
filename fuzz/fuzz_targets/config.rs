//! Config and token-file loading: never panics, bounded time, located errors that never quote a secret.
//! The properties are in `fuzz/oracles.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../oracles.rs"]
mod oracles;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracles::config(data));
