//! API tokens: hashes, the records sources return, generated secrets, and
//! the sources themselves (file, SQLite, PostgreSQL).
//!
//! Invariant: a plaintext secret never outlives the function that hashes
//! it, and neither a secret nor a hash is ever formatted into a log line,
//! a metric or an error (`TokenHash`'s `Debug` prints a short fingerprint).

pub mod hash;
pub mod id;
pub mod index;
pub mod published;
pub mod record;
pub mod secret;
pub mod source;
pub mod split;
pub mod usage;

pub use hash::TokenHash;
pub use id::{Scope, TokenId};
pub use index::{IndexBuilder, TokenEntry, TokenIndex};
pub use record::TokenRecord;
pub use source::{Source, SourceError};
pub use usage::TokenUsage;
