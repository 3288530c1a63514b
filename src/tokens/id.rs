//! `TokenId` and `Scope`: the two names a token carries, each with the one
//! parse every source, the command line and the index use (the contract:
//! one rule for token ids everywhere).
//!
//! Invariant: a `TokenId` or a `Scope` that exists is valid, and no parse
//! error quotes the text it refused (a value in the id or scopes column
//! may be a secret pasted into the wrong place).

use std::borrow::Borrow;
use std::fmt;

use http::HeaderValue;

/// Longest token id, in bytes (= characters: ids are ASCII).
pub const MAX_ID_LEN: usize = 128;

/// Why a text is not a token id.
pub const ID_RULE: &str = "must be 1 to 128 visible ASCII characters without spaces";

/// A token id: 1 to [`MAX_ID_LEN`] visible ASCII characters (`!` to `~`),
/// so no space, no control character and nothing outside ASCII. Unique
/// and not secret: it appears in logs, metrics and the
/// `X-Tollgate-Token-Id` header.
///
/// Held as the header value it is sent as, so the request path clones it
/// into a header or a log record without allocating.
#[derive(Clone)]
pub struct TokenId(HeaderValue);

impl TokenId {
    /// The one parse of a token id; the error is a short problem that does
    /// not quote `text`.
    pub fn parse(text: &str) -> Result<TokenId, &'static str> {
        check_id(text.as_bytes())?;
        HeaderValue::from_str(text)
            .map(TokenId)
            .map_err(|_| ID_RULE)
    }

    /// An id over bytes that already hold a valid id (the index copies ids
    /// into shared chunks); `None` if they do not.
    pub(crate) fn from_shared(bytes: bytes::Bytes) -> Option<TokenId> {
        check_id(&bytes).ok()?;
        HeaderValue::from_maybe_shared(bytes).ok().map(TokenId)
    }

    /// The id as text.
    #[inline]
    pub fn as_str(&self) -> &str {
        // Always `Ok`: the bytes were checked to be visible ASCII.
        self.0.to_str().unwrap_or("")
    }

    /// The id as the header value it is sent as; cloning it does not
    /// allocate.
    #[inline]
    pub fn header(&self) -> &HeaderValue {
        &self.0
    }
}

fn check_id(bytes: &[u8]) -> Result<(), &'static str> {
    if bytes.is_empty() {
        return Err("is empty");
    }
    if bytes.len() > MAX_ID_LEN || !bytes.iter().all(u8::is_ascii_graphic) {
        return Err(ID_RULE);
    }
    Ok(())
}

impl PartialEq for TokenId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for TokenId {}

impl std::hash::Hash for TokenId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialOrd for TokenId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TokenId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialEq<str> for TokenId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for TokenId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Borrow<str> for TokenId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for TokenId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::str::FromStr for TokenId {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TokenId::parse(s)
    }
}

/// Why a text is not a scope.
pub const SCOPE_RULE: &str = "must be visible ASCII characters without spaces";

/// One scope a token carries: one or more visible ASCII characters (`!`
/// to `~`), so no space, no control character and nothing outside ASCII —
/// what every source accepted before (a space separates scopes in a
/// database row and in `X-Tollgate-Scopes`, which must be a header
/// value). No length limit.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(Box<str>);

impl Scope {
    /// The one parse of a scope; the error does not quote `text`.
    pub fn parse(text: &str) -> Result<Scope, &'static str> {
        if text.is_empty() {
            return Err("is empty");
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SCOPE_RULE);
        }
        Ok(Scope(text.into()))
    }

    /// Space-separated scopes, as a database row stores them; the error
    /// does not quote the text.
    pub fn parse_list(text: &str) -> Result<Vec<Scope>, &'static str> {
        text.split_ascii_whitespace().map(Scope::parse).collect()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Scope {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Scope {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl Borrow<str> for Scope {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl std::str::FromStr for Scope {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::parse(s)
    }
}

/// A valid id, for tests.
#[cfg(test)]
pub(crate) fn id(text: &str) -> TokenId {
    TokenId::parse(text).expect("a valid test id")
}

/// Valid scopes, for tests.
#[cfg(test)]
pub(crate) fn scopes(list: &[&str]) -> Vec<Scope> {
    list.iter()
        .map(|s| Scope::parse(s).expect("a valid test scope"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_1_to_128_visible_ascii_characters() {
        assert_eq!(TokenId::parse("ops-bot_1:a/b").unwrap(), "ops-bot_1:a/b");
        assert!(TokenId::parse(&"x".repeat(128)).is_ok());
        assert_eq!(TokenId::parse("").unwrap_err(), "is empty");
        for bad in ["ops bot", "tab\there", "new\nline", "é", &"x".repeat(129)] {
            assert_eq!(TokenId::parse(bad).unwrap_err(), ID_RULE, "{bad:?}");
        }
    }

    #[test]
    fn a_shared_id_is_checked_like_a_parsed_one() {
        let ok = TokenId::from_shared(bytes::Bytes::from_static(b"a")).unwrap();
        assert_eq!(ok, TokenId::parse("a").unwrap());
        assert_eq!(ok.header(), "a");
        assert!(TokenId::from_shared(bytes::Bytes::from_static(b"a b")).is_none());
    }

    #[test]
    fn a_scope_is_visible_ascii_without_spaces() {
        assert_eq!(Scope::parse("scope:all").unwrap(), "scope:all");
        assert_eq!(Scope::parse("").unwrap_err(), "is empty");
        for bad in ["a b", "é", "a\tb"] {
            assert_eq!(Scope::parse(bad).unwrap_err(), SCOPE_RULE);
        }
        assert_eq!(
            Scope::parse_list("  a   b ").unwrap(),
            [Scope::parse("a").unwrap(), Scope::parse("b").unwrap()]
        );
        assert!(Scope::parse_list("").unwrap().is_empty());
        assert!(Scope::parse_list("a é").is_err());
    }
}
