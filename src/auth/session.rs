//! Browser sessions (the contract, §7.4): the signed cookie a login sets, finding it
//! among a request's cookies, and removing it before forwarding.
//!
//! The cookie value is `v1.<id>.<expires>.<mac>`: `<id>` the token id in
//! unpadded base64url (ids may hold `.`, base64url never does), `<expires>`
//! Unix seconds in decimal, `<mac>` unpadded base64url of
//! HMAC-SHA256(`sessions.secret`, `v1.<id>.<expires>` ‖ the token's
//! SHA-256). The token's hash is signed but never written into the cookie,
//! so a session ends when its token's secret changes, and gateways that
//! share the secret and the token source accept each other's sessions.
//!
//! Invariant: the cookie holds no secret and no hash; MACs are compared in
//! constant time (`hmac`'s `verify_slice`); a session is only ever a token
//! id that the caller looks up in the current index. Does no I/O.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;

use super::Ambiguous;
use crate::config::{SessionSecret, SessionSettings};
use crate::tokens::TokenHash;

type HmacSha256 = Hmac<Sha256>;

/// Longest cookie value read (an id of 128 bytes fits in about 240).
const MAX_VALUE_BYTES: usize = 512;

/// The login and logout paths, the gateway's own when sessions are on.
pub const LOGIN_PATH: &str = "/.tollgate/login";
pub const LOGOUT_PATH: &str = "/.tollgate/logout";

/// `sessions`, ready for the request path.
#[derive(Clone)]
pub struct Sessions {
    secret: SessionSecret,
    /// Seconds a new session lasts (capped by the token's expiry).
    pub lifetime_secs: i64,
    /// The cookie's name.
    pub cookie: Box<str>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("lifetime_secs", &self.lifetime_secs)
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

/// A cookie value whose signature has not been checked yet.
#[derive(Debug, PartialEq, Eq)]
pub struct Claim {
    pub id: String,
    pub expires: i64,
}

impl Sessions {
    pub fn new(settings: &SessionSettings) -> Self {
        Sessions {
            secret: settings.secret.clone(),
            lifetime_secs: i64::try_from(settings.lifetime.as_secs()).unwrap_or(i64::MAX),
            cookie: settings.cookie.as_str().into(),
        }
    }

    fn mac(&self, signed: &[u8], hash: &TokenHash) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret.0).expect("HMAC takes any key size");
        mac.update(signed);
        mac.update(&hash.0);
        mac
    }

    /// The cookie value for the token `id` (with hash `hash`), valid until
    /// `expires` (Unix seconds).
    pub fn issue(&self, id: &str, hash: &TokenHash, expires: i64) -> String {
        let signed = format!("v1.{}.{expires}", URL_SAFE_NO_PAD.encode(id));
        let tag = self.mac(signed.as_bytes(), hash).finalize().into_bytes();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The id and expiry a cookie value claims, before its MAC is checked;
    /// `None` when it is not shaped as one.
    pub fn claim(&self, value: &[u8]) -> Option<Claim> {
        if value.len() > MAX_VALUE_BYTES {
            return None;
        }
        let value = std::str::from_utf8(value).ok()?;
        let mut parts = value.split('.');
        let (Some("v1"), Some(id), Some(expires), Some(_mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        if expires.is_empty() || !expires.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let id = String::from_utf8(URL_SAFE_NO_PAD.decode(id).ok()?).ok()?;
        Some(Claim {
            id,
            expires: expires.parse().ok()?,
        })
    }

    /// Whether `value` carries a valid MAC for the token with `hash` and is
    /// not expired at `now`. The MAC is compared in constant time.
    pub fn verify(&self, value: &[u8], hash: &TokenHash, claim: &Claim, now: i64) -> bool {
        if claim.expires <= now {
            return false;
        }
        let Some(dot) = value.iter().rposition(|&b| b == b'.') else {
            return false;
        };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(&value[dot + 1..]) else {
            return false;
        };
        self.mac(&value[..dot], hash).verify_slice(&tag).is_ok()
    }

    /// The session cookie's value among the request's `Cookie` headers:
    /// `Ok(None)` without one, `Ambiguous` when it is there twice.
    pub fn find<'h>(&self, headers: &'h HeaderMap) -> Result<Option<&'h [u8]>, Ambiguous> {
        let mut found = None;
        for value in headers.get_all(COOKIE) {
            for (name, v) in pairs(value.as_bytes()) {
                if name == self.cookie.as_bytes() {
                    if found.is_some() {
                        return Err(Ambiguous);
                    }
                    found = Some(v);
                }
            }
        }
        Ok(found)
    }

    /// Removes the session cookie from the `Cookie` headers, keeping every
    /// other cookie (in one `Cookie` header, `; `-separated); removes the
    /// header when nothing is left. Untouched when the cookie is absent.
    pub fn strip(&self, headers: &mut HeaderMap) {
        let name = self.cookie.as_bytes();
        let present = headers
            .get_all(COOKIE)
            .iter()
            .any(|v| pairs(v.as_bytes()).any(|(n, _)| n == name));
        if !present {
            return;
        }
        let mut kept: Vec<u8> = Vec::new();
        for value in headers.get_all(COOKIE) {
            for pair in value.as_bytes().split(|&b| b == b';') {
                let pair = pair.trim_ascii();
                if pair.is_empty() || cookie_name(pair) == name {
                    continue;
                }
                if !kept.is_empty() {
                    kept.extend_from_slice(b"; ");
                }
                kept.extend_from_slice(pair);
            }
        }
        headers.remove(COOKIE);
        if let Ok(v) = HeaderValue::from_bytes(&kept) {
            if !kept.is_empty() {
                headers.insert(COOKIE, v);
            }
        }
    }

    /// `Set-Cookie` for a new session.
    pub fn set_cookie(&self, value: &str, max_age: i64, secure: bool) -> HeaderValue {
        let secure = if secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}",
            self.cookie
        ))
        .expect("cookie names and values are visible ASCII")
    }

    /// `Set-Cookie` that ends the session in the browser.
    pub fn clear_cookie(&self, secure: bool) -> HeaderValue {
        let secure = if secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}",
            self.cookie
        ))
        .expect("cookie names are visible ASCII")
    }
}

/// The `name=value` pairs of one `Cookie` header value.
fn pairs(value: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    value.split(|&b| b == b';').filter_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
    })
}

fn cookie_name(pair: &[u8]) -> &[u8] {
    match pair.iter().position(|&b| b == b'=') {
        Some(eq) => pair[..eq].trim_ascii(),
        None => pair,
    }
}

/// Appends `bytes` percent-encoded (all but unreserved characters and `/`).
pub fn percent_encode(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Decodes a form or query value (`+` is a space); `None` for a malformed
/// escape.
pub fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = crate::target::hex(*s.get(i + 1)?)?;
                let l = crate::target::hex(*s.get(i + 2)?)?;
                out.push((h << 4) | l);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

/// The value of field `name` in a form-encoded body or query string,
/// decoded; the first if there are several.
pub fn form_field(form: &[u8], name: &str) -> Option<Vec<u8>> {
    form.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &b""[..]),
        };
        (percent_decode(k)?.as_slice() == name.as_bytes()).then(|| percent_decode(v))?
    })
}

/// Whether `next` may be redirected to after a login: a same-site path
/// (`/` and then not `/` or `\`), visible ASCII only (browsers drop tabs
/// and newlines, which could turn `/\t/evil` into `//evil`).
pub fn is_local_path(next: &[u8]) -> bool {
    next.first() == Some(&b'/')
        && !matches!(next.get(1), Some(b'/' | b'\\'))
        && next.iter().all(|&b| (0x21..=0x7E).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sessions(secret: &str) -> Sessions {
        Sessions::new(&SessionSettings {
            secret: SessionSecret(secret.as_bytes().into()),
            lifetime: Duration::from_secs(3600),
            cookie: "tollgate_session".into(),
        })
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn an_issued_cookie_verifies_and_names_its_token_without_holding_its_hash() {
        let s = sessions(KEY);
        let hash = TokenHash::of(b"the-secret");
        let v = s.issue("ops.team:1", &hash, 2_000_000_000);
        assert!(v.starts_with("v1."), "{v}");
        assert!(!v.contains(&hash.to_hex()[..16]));
        let claim = s.claim(v.as_bytes()).unwrap();
        assert_eq!(claim.id, "ops.team:1");
        assert_eq!(claim.expires, 2_000_000_000);
        assert!(s.verify(v.as_bytes(), &hash, &claim, 1_900_000_000));
        // Expired, another token's hash, another gateway's secret.
        assert!(!s.verify(v.as_bytes(), &hash, &claim, 2_000_000_000));
        assert!(!s.verify(v.as_bytes(), &TokenHash::of(b"x"), &claim, 0));
        let other = sessions("another-secret-of-thirty-two-byte");
        assert!(!other.verify(v.as_bytes(), &hash, &claim, 0));
    }

    #[test]
    fn a_tampered_cookie_fails() {
        let s = sessions(KEY);
        let hash = TokenHash::of(b"t");
        let v = s.issue("agent", &hash, 2_000_000_000);
        let later = v.replace(".2000000000.", ".2100000000.");
        let claim = s.claim(later.as_bytes()).unwrap();
        assert!(!s.verify(later.as_bytes(), &hash, &claim, 0));
        let admin = format!("v1.{}{}", URL_SAFE_NO_PAD.encode("admin"), &v[8..]);
        if let Some(claim) = s.claim(admin.as_bytes()) {
            assert!(!s.verify(admin.as_bytes(), &hash, &claim, 0));
        }
        for junk in [
            "",
            "v1",
            "v2.YQ.1.x",
            "v1.YQ.-1.x",
            "v1.YQ.1.x.y",
            "v1.%%.1.x",
        ] {
            assert_eq!(s.claim(junk.as_bytes()), None, "{junk}");
        }
    }

    #[test]
    fn the_session_cookie_is_found_once_and_stripped_while_others_pass() {
        let s = sessions(KEY);
        let mut h = HeaderMap::new();
        h.append(COOKIE, "a=1; tollgate_session=v1.x; b=2".parse().unwrap());
        h.append(COOKIE, "c=3".parse().unwrap());
        assert_eq!(s.find(&h), Ok(Some(&b"v1.x"[..])));
        s.strip(&mut h);
        let left: Vec<_> = h.get_all(COOKIE).iter().collect();
        assert_eq!(left, ["a=1; b=2; c=3"]);
        h.append(
            COOKIE,
            "tollgate_session=1; tollgate_session=2".parse().unwrap(),
        );
        assert_eq!(s.find(&h), Err(Ambiguous));
        let mut only = HeaderMap::new();
        only.insert(COOKIE, "tollgate_session=v1.x".parse().unwrap());
        s.strip(&mut only);
        assert!(only.get(COOKIE).is_none());
        // A cookie whose name merely starts the same is another cookie.
        let mut other = HeaderMap::new();
        other.insert(COOKIE, "tollgate_session2=z".parse().unwrap());
        assert_eq!(s.find(&other), Ok(None));
        s.strip(&mut other);
        assert_eq!(other[COOKIE], "tollgate_session2=z");
    }

    #[test]
    fn only_same_site_paths_are_redirect_targets() {
        for ok in ["/", "/app?x=1", "/a/b#c"] {
            assert!(is_local_path(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "//evil.example",
            "/\\evil",
            "https://evil.example",
            "evil",
            "/\t/evil",
            "/a b",
            "/\u{e9}",
        ] {
            assert!(!is_local_path(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = sessions(KEY);
        assert!(!format!("{s:?}").contains("0123456789"));
    }
}
