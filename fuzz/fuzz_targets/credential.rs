//! Credential extraction: never panics; agrees with a model of the SPEC; tokens are borrowed from their header.
//! The properties are in `fuzz/oracles.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../oracles.rs"]
mod oracles;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracles::credential(data));
