//! Credential extraction: which header, if any, carries the request's token.
//!
//! A credential is an `Authorization` header whose scheme is configured
//! (compared case-insensitively) or a configured token header. An
//! `Authorization` header with another scheme is not a credential. More
//! than one credential in total is [`Ambiguous`]. With `basic` among the
//! schemes, `Basic base64(user:token)` carries the token as the password;
//! the user part is ignored.
//!
//! Invariant: the token is borrowed from the header value, byte for byte
//! (decoded only for `Basic`), never trimmed inside or logged. Does no I/O.

use std::borrow::Cow;

use base64::Engine as _;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName};

/// The one credential a request carries.
///
/// `Debug` shows where the token came from and its length, never the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential<'h> {
    /// The exact token bytes (case-sensitive). Empty when the header holds
    /// no token (`Authorization: Bearer`, `xc-token:`, a `Basic` value that
    /// is not base64 of `user:token`): a malformed credential, answered 401
    /// `invalid_token`.
    pub token: Cow<'h, [u8]>,
    /// Which header carried it.
    pub header: CredentialHeader,
}

impl Credential<'_> {
    /// Whether the credential holds no token at all (malformed).
    pub fn is_empty(&self) -> bool {
        self.token.is_empty()
    }
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("token_len", &self.token.len())
            .field("header", &self.header)
            .finish()
    }
}

/// The header a credential came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialHeader {
    /// `Authorization` with a configured scheme.
    Authorization,
    /// The configured token header at this index of `auth.headers`.
    Token(usize),
}

/// The request carries more than one credential (400
/// `ambiguous_credentials`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than one credential in the request")]
pub struct Ambiguous;

/// Finds the request's credential.
///
/// `schemes` are the configured `Authorization` schemes, lowercase;
/// `token_headers` the configured raw-token headers. Returns `Ok(None)`
/// when there is none (an anonymous request), `Err(Ambiguous)` when there is
/// more than one: two `Authorization` headers with configured schemes, a
/// token header sent twice, or both kinds at once.
pub fn extract<'h>(
    headers: &'h HeaderMap,
    schemes: &[String],
    token_headers: &[HeaderName],
) -> Result<Option<Credential<'h>>, Ambiguous> {
    let mut found: Option<Credential<'h>> = None;
    let mut add = |c: Credential<'h>| {
        if found.is_some() {
            return Err(Ambiguous);
        }
        found = Some(c);
        Ok(())
    };

    for value in headers.get_all(AUTHORIZATION) {
        if let Some(token) = authorization_token(value.as_bytes(), schemes) {
            let token = if is_basic(value.as_bytes()) {
                Cow::Owned(basic_password(token))
            } else {
                Cow::Borrowed(token)
            };
            add(Credential {
                token,
                header: CredentialHeader::Authorization,
            })?;
        }
    }
    for (i, name) in token_headers.iter().enumerate() {
        // A name listed twice (or `authorization` itself) must not count the
        // same header twice.
        if *name == AUTHORIZATION || token_headers[..i].contains(name) {
            continue;
        }
        for value in headers.get_all(name) {
            add(Credential {
                token: Cow::Borrowed(value.as_bytes()),
                header: CredentialHeader::Token(i),
            })?;
        }
    }
    Ok(found)
}

/// Whether an `Authorization` value's scheme is `Basic`.
fn is_basic(value: &[u8]) -> bool {
    value.len() >= 5
        && value[..5].eq_ignore_ascii_case(b"basic")
        && value.get(5).is_none_or(|&b| b == b' ' || b == b'\t')
}

/// The password of a `Basic` credential (`base64(user:password)`), or
/// nothing (malformed) when it is not base64 of a `user:password` pair.
fn basic_password(encoded: &[u8]) -> Vec<u8> {
    let engine = &base64::engine::general_purpose::STANDARD;
    let Ok(mut pair) = engine.decode(encoded) else {
        return Vec::new();
    };
    match pair.iter().position(|&b| b == b':') {
        Some(colon) => pair.split_off(colon + 1),
        None => {
            pair.clear();
            Vec::new()
        }
    }
}

/// The token of an `Authorization` value whose scheme is one of `schemes`
/// (lowercase): the bytes after the scheme and the spaces or tabs that
/// follow it. `None` when the scheme is not configured.
pub fn authorization_token<'v>(value: &'v [u8], schemes: &[String]) -> Option<&'v [u8]> {
    let end = value
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(value.len());
    let (scheme, rest) = value.split_at(end);
    if scheme.is_empty()
        || !schemes
            .iter()
            .any(|s| s.as_bytes().eq_ignore_ascii_case(scheme))
    {
        return None;
    }
    let start = rest
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(rest.len());
    Some(&rest[start..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn schemes() -> Vec<String> {
        vec!["bearer".to_owned(), "token".to_owned()]
    }

    fn token_headers() -> Vec<HeaderName> {
        vec![
            HeaderName::from_static("xc-token"),
            HeaderName::from_static("x-api-key"),
        ]
    }

    fn map(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    fn get(pairs: &[(&str, &[u8])]) -> Result<Option<(Vec<u8>, CredentialHeader)>, Ambiguous> {
        let h = map(pairs);
        extract(&h, &schemes(), &token_headers()).map(|c| c.map(|c| (c.token.to_vec(), c.header)))
    }

    #[test]
    fn configured_scheme_is_a_credential_case_insensitively() {
        for v in [
            &b"Bearer abc"[..],
            b"bearer abc",
            b"BEARER abc",
            b"Token abc",
        ] {
            assert_eq!(
                get(&[("authorization", v)]),
                Ok(Some((b"abc".to_vec(), CredentialHeader::Authorization))),
                "{}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn token_is_case_sensitive_and_exact() {
        assert_eq!(
            get(&[("Authorization", b"Bearer AbC.dEf")])
                .unwrap()
                .unwrap()
                .0,
            b"AbC.dEf"
        );
        assert_eq!(
            get(&[("authorization", b"Bearer \t  a b\tc")])
                .unwrap()
                .unwrap()
                .0,
            b"a b\tc"
        );
    }

    #[test]
    fn other_schemes_are_not_credentials() {
        assert_eq!(get(&[("authorization", b"Basic dXNlcjpwYXNz")]), Ok(None));
        assert_eq!(get(&[("authorization", b"Bearerabc")]), Ok(None));
        assert_eq!(get(&[("authorization", b"")]), Ok(None));
        assert_eq!(get(&[("authorization", b"Bearer:abc")]), Ok(None));
    }

    #[test]
    fn basic_beside_a_bearer_is_not_ambiguous() {
        assert_eq!(
            get(&[
                ("authorization", b"Basic dXNlcjpwYXNz"),
                ("authorization", b"Bearer t")
            ]),
            Ok(Some((b"t".to_vec(), CredentialHeader::Authorization)))
        );
    }

    #[test]
    fn empty_credential_is_present_but_empty() {
        for pairs in [
            &[("authorization", &b"Bearer"[..])][..],
            &[("authorization", b"bearer \t ")],
            &[("xc-token", b"")],
        ] {
            let h = map(pairs);
            let c = extract(&h, &schemes(), &token_headers()).unwrap().unwrap();
            assert!(c.is_empty(), "{pairs:?}");
        }
    }

    #[test]
    fn token_header_is_a_credential_by_index() {
        assert_eq!(
            get(&[("X-Api-Key", b"k1")]),
            Ok(Some((b"k1".to_vec(), CredentialHeader::Token(1))))
        );
        assert_eq!(
            get(&[("XC-TOKEN", b"k0")]),
            Ok(Some((b"k0".to_vec(), CredentialHeader::Token(0))))
        );
    }

    #[test]
    fn more_than_one_credential_is_ambiguous() {
        for pairs in [
            &[
                ("authorization", &b"Bearer a"[..]),
                ("authorization", b"Bearer a"),
            ][..],
            &[
                ("authorization", b"Bearer a"),
                ("authorization", b"Token b"),
            ],
            &[("xc-token", b"a"), ("xc-token", b"a")],
            &[("authorization", b"Bearer a"), ("xc-token", b"a")],
            &[("xc-token", b"a"), ("x-api-key", b"b")],
            &[("authorization", b"Bearer"), ("xc-token", b"")],
        ] {
            assert_eq!(get(pairs), Err(Ambiguous), "{pairs:?}");
        }
    }

    #[test]
    fn no_credential_is_anonymous() {
        assert_eq!(get(&[]), Ok(None));
        assert_eq!(get(&[("cookie", b"token=abc")]), Ok(None));
        // Underscored names are dropped by hygiene; they are never credentials.
        assert_eq!(get(&[("xc_token", b"abc")]), Ok(None));
    }

    #[test]
    fn a_token_header_listed_twice_counts_once() {
        let h = map(&[("xc-token", b"a")]);
        let names = [
            HeaderName::from_static("xc-token"),
            HeaderName::from_static("xc-token"),
        ];
        let c = extract(&h, &schemes(), &names).unwrap().unwrap();
        assert_eq!(c.header, CredentialHeader::Token(0));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let h = map(&[("authorization", b"Bearer s3cr3t-value")]);
        let c = extract(&h, &schemes(), &[]).unwrap().unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
