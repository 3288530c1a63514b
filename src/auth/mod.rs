//! Authentication and authorisation: which header carries a request's
//! credential, which token it names, and whether that token may make the
//! request (the contract's steps 5 and 6).
//!
//! [`Credentials`] is the one place that says which headers are
//! credentials; header hygiene asks it which to remove, so "what is read as
//! a credential" and "what is removed before forwarding" cannot disagree.
//! Invariant: a credential is borrowed, hashed and compared; never stored,
//! logged or copied. Does no I/O.

pub mod credential;
pub mod session;

pub use credential::{Ambiguous, Credential, CredentialHeader};
pub use session::Sessions;

use std::net::IpAddr;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{AuthSettings, RouteScopes};
use crate::reject::Reject;
use crate::tokens::{secret, TokenEntry, TokenHash, TokenIndex};

/// The configured credential forms: `Authorization` schemes and raw-token
/// headers, and whether they are forwarded.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `auth.schemes`, lowercase.
    schemes: Vec<String>,
    /// `auth.headers`.
    headers: Vec<HeaderName>,
    /// `auth.forward_credentials`.
    forward: bool,
}

impl Credentials {
    pub fn new(auth: &AuthSettings) -> Self {
        Credentials {
            schemes: auth.schemes.clone(),
            headers: auth.headers.clone(),
            forward: auth.forward_credentials,
        }
    }

    /// The request's one credential, `None` for an anonymous request.
    #[inline]
    pub fn extract<'h>(&self, headers: &'h HeaderMap) -> Result<Option<Credential<'h>>, Ambiguous> {
        credential::extract(headers, &self.schemes, &self.headers)
    }

    /// Whether `name` is a header credentials are read from: `Authorization`
    /// (whatever its scheme) or a configured token header.
    pub fn is_credential_header(&self, name: &HeaderName) -> bool {
        *name == AUTHORIZATION || self.headers.contains(name)
    }

    /// Whether `name` is removed before forwarding as a credential header
    /// (every such header, unless `forward_credentials`).
    #[inline]
    pub fn removes(&self, name: &HeaderName) -> bool {
        !self.forward && self.is_credential_header(name)
    }

    /// `auth.schemes`, lowercase.
    pub fn schemes(&self) -> &[String] {
        &self.schemes
    }

    /// `auth.headers`.
    pub fn headers(&self) -> &[HeaderName] {
        &self.headers
    }
}

/// Who may use a route.
#[derive(Debug, Clone)]
pub struct RouteAccess {
    pub scopes: RouteScopes,
    /// `WWW-Authenticate` for `insufficient_scope` on this route.
    pub challenge: HeaderValue,
    /// `anonymous: read`.
    pub anonymous_read: bool,
    /// `browser: true`: a session cookie is a credential here.
    pub browser: bool,
}

/// The live entry for a presented token, or `None` for every kind of
/// invalid token alike (empty, mistyped, unknown, disabled, expired, and
/// a split token with a wrong shape, key, pepper or digest).
#[inline]
pub fn lookup<'i>(tokens: &'i TokenIndex, token: &[u8], unix_now: i64) -> Option<&'i TokenEntry> {
    if token.is_empty() || secret::is_mistyped(token) {
        return None;
    }
    let entry = match tokens.split_rules() {
        // A token with the split prefix is judged only as a split token.
        Some(rules) if rules.claims(token) => tokens.get_split(rules, token),
        _ => tokens.get(&TokenHash::of(token)),
    };
    entry.filter(|e| e.is_live(unix_now))
}

/// Step 6 for an authenticated request: allowed IPs, scopes, read-only.
pub fn authorize(
    access: &RouteAccess,
    entry: &TokenEntry,
    writes: bool,
    client_ip: IpAddr,
    all_scope: &str,
) -> Result<(), Reject> {
    if !entry.allows_ip(client_ip) {
        return Err(Reject::IpNotAllowed);
    }
    let scoped = match &access.scopes {
        RouteScopes::AnyToken => true,
        RouteScopes::OneOf(scopes) => {
            entry.has_scope(all_scope) || scopes.iter().any(|s| entry.has_scope(s))
        }
    };
    if !scoped {
        return Err(Reject::InsufficientScope(access.challenge.clone()));
    }
    if entry.read_only && writes {
        return Err(Reject::ReadOnlyToken);
    }
    Ok(())
}
