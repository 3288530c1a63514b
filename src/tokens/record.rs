//! `TokenRecord`: one validated token as a source returns it, before it is
//! put into an index. Sources (file, SQLite, PostgreSQL, custom query) all
//! produce this one shape.

use ipnet::IpNet;
use time::OffsetDateTime;

use super::split::SplitKey;
use super::{Scope, TokenHash, TokenId};
use crate::config::Rate;

/// One token as loaded from a source.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    /// Unique, non-secret; appears in logs, metrics and identity headers.
    pub id: TokenId,
    pub hash: TokenHash,
    pub scopes: Vec<Scope>,
    pub read_only: bool,
    pub expires_at: Option<OffsetDateTime>,
    /// Empty: any address.
    pub allowed_ips: Vec<IpNet>,
    /// Override of `limits.per_token`.
    pub rate_limit: Option<Rate>,
    pub disabled: bool,
    pub description: Option<String>,
    pub created_at: Option<OffsetDateTime>,
    pub updated_at: Option<OffsetDateTime>,
    pub last_used_at: Option<OffsetDateTime>,
    /// Loaded from a plaintext `token:` entry (development only).
    pub from_plaintext: bool,
    /// A split token (the contract, §7.2): found by its public key and
    /// verified against a digest, never by `hash` (which then only binds
    /// sessions to this digest; see [`SplitKey::binding_hash`]).
    pub split: Option<SplitKey>,
}

impl TokenRecord {
    /// A record with defaults for everything but id, hash and scopes.
    pub fn new(id: TokenId, hash: TokenHash, scopes: Vec<Scope>) -> Self {
        TokenRecord {
            id,
            hash,
            scopes,
            read_only: false,
            expires_at: None,
            allowed_ips: Vec::new(),
            rate_limit: None,
            disabled: false,
            description: None,
            created_at: None,
            updated_at: None,
            last_used_at: None,
            from_plaintext: false,
            split: None,
        }
    }
}
