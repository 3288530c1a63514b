//! The fuzzing oracles: for one input each, run a parser and panic if a
//! property that must hold for every input does not.
//!
//! Shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and by the
//! corpus replay test (`tests/fuzz_corpus.rs`), both of which include this
//! file with `#[path]`, so CI checks every committed seed against exactly
//! the properties the fuzzer explores. Invariant: an oracle only reads its
//! input and never does I/O beyond what the parser itself does.

#![allow(dead_code)]

use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use tollgate::auth::credential::{self, CredentialHeader};
use tollgate::target;

/// The longest a config or token file may take to be judged.
pub const CONFIG_TIME_LIMIT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// Request targets
// ---------------------------------------------------------------------------

/// `target::parse` never panics; what it accepts is canonical (see
/// [`check_canonical`]); the query is the input's, byte for byte; and the
/// path and query put back together for the upstream parse to the very
/// same path and query, so the authorised path is the forwarded one.
pub fn target(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(p) = target::canonical_path(s) {
            check_canonical(&p);
        }
    }
    let Ok(uri) = Uri::try_from(data) else {
        return;
    };
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let Ok(t) = target::parse_versioned(version, &uri, false) else {
            continue;
        };
        check_canonical(&t.path);
        assert!(!t.path.contains('?'), "query in the path: {:?}", t.path);
        if version == Version::HTTP_11 {
            assert!(uri.scheme().is_none() && uri.authority().is_none());
        }
        if let Some(q) = t.query {
            let sent = uri.query().expect("a query was returned, so one was sent");
            assert!(sent.starts_with(q), "query {q:?} is not the sent {sent:?}");
            assert!(!q.contains('#'), "fragment forwarded: {q:?}");
        }
        let mut forwarded = t.path.to_string();
        if let Some(q) = t.query {
            forwarded.push('?');
            forwarded.push_str(q);
        }
        let pq = http::uri::PathAndQuery::try_from(forwarded.as_str())
            .unwrap_or_else(|e| panic!("{forwarded:?} cannot be forwarded: {e}"));
        assert_eq!(pq.path(), &*t.path, "forwarded path differs");
        assert_eq!(pq.query(), t.query, "forwarded query differs");
        for prefix in ["/", "/api", "/api/v1"] {
            check_canonical(target::strip_prefix_path(&t.path, prefix));
        }
        // Write detection is total over any accepted target.
        let _ = tollgate::method::is_write(&Method::GET, &HeaderMap::new(), t.query);
    }
}

/// The properties of a path the gateway accepted.
pub fn check_canonical(p: &str) {
    // Idempotent, and nothing left to decode.
    match target::canonical_path(p) {
        Ok(Cow::Borrowed(again)) => assert_eq!(again, p),
        Ok(Cow::Owned(again)) => panic!("{p:?} canonicalises again to {again:?}"),
        Err(e) => panic!("{p:?} was accepted, then refused: {e}"),
    }
    assert!(p.starts_with('/'), "{p:?}");
    for bad in ["//", "/./", "/../", ";", "\\", "#"] {
        assert!(!p.contains(bad), "{p:?} contains {bad:?}");
    }
    assert!(!p.ends_with("/.") && !p.ends_with("/.."), "{p:?}");
    assert!(p.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{p:?}");
    // Decoding once more — as an upstream that decodes would — never
    // yields a separator, a control byte or a dot segment, also when the
    // decoder accepts overlong UTF-8 and applies NFKC to what it decodes.
    for segment in p[1..].split('/') {
        let bytes = percent_decode(segment);
        assert!(
            !bytes
                .iter()
                .any(|&b| b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f),
            "{p:?}: segment {segment:?} decodes to a separator or control byte"
        );
        let chars = lenient_utf8(&bytes);
        let mut dots = 0;
        let mut only_dots = !chars.is_empty();
        for c in &chars {
            match nfkc_separator_or_dots(*c) {
                Some(Fold::Separator) => panic!("{p:?}: {segment:?} decodes to a separator"),
                Some(Fold::Dots(n)) => dots += n,
                None => only_dots = false,
            }
        }
        assert!(
            !(only_dots && (1..=2).contains(&dots)),
            "{p:?}: {segment:?} decodes to a dot segment"
        );
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes UTF-8 the way a careless decoder does: a lead byte announces
/// how many continuation bytes follow and their bits are put together,
/// with no check for overlong forms or surrogates; anything else is read
/// as one Latin-1 character.
fn lenient_utf8(b: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let lead = b[i];
        let (n, init) = match lead {
            0xC0..=0xDF => (1, u32::from(lead & 0x1F)),
            0xE0..=0xEF => (2, u32::from(lead & 0x0F)),
            0xF0..=0xF7 => (3, u32::from(lead & 0x07)),
            0xF8..=0xFB => (4, u32::from(lead & 0x03)),
            0xFC..=0xFD => (5, u32::from(lead & 0x01)),
            _ => (0, u32::from(lead)),
        };
        let cont = b.get(i + 1..i + 1 + n);
        match cont {
            Some(cont) if n > 0 && cont.iter().all(|&c| c & 0xC0 == 0x80) => {
                let cp = cont
                    .iter()
                    .fold(init, |acc, &c| (acc << 6) | u32::from(c & 0x3F));
                out.push(cp);
                i += 1 + n;
            }
            _ => {
                out.push(u32::from(lead));
                i += 1;
            }
        }
    }
    out
}

enum Fold {
    Separator,
    Dots(usize),
}

/// What Unicode compatibility normalisation (NFKC) makes of a character,
/// as far as paths care: a text containing `/` or `\`, or only dots.
fn nfkc_separator_or_dots(c: u32) -> Option<Fold> {
    match c {
        0x2F | 0x5C | 0x2100 | 0x2101 | 0x2105 | 0x2106 | 0xFE68 | 0xFF0F | 0xFF3C => {
            Some(Fold::Separator)
        }
        0x2E | 0x2024 | 0xFE52 | 0xFF0E => Some(Fold::Dots(1)),
        0x2025 | 0xFE30 => Some(Fold::Dots(2)),
        0x2026 | 0xFE19 => Some(Fold::Dots(3)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------

const SCHEMES: [&str; 2] = ["bearer", "token"];

/// Header lines (`name: value`, one per `\n`) → `credential::extract`
/// never panics; it finds a credential exactly when a simple model of the
/// SPEC finds one, an ambiguity exactly when the model counts more than
/// one; the token it returns lies inside the header value it came from,
/// never starts with a space or tab, and is the whole value of a token
/// header. The raw input as one `Authorization` value likewise.
pub fn credential(data: &[u8]) {
    let schemes: Vec<String> = SCHEMES.iter().map(|s| s.to_string()).collect();
    let token_headers = [
        HeaderName::from_static("xc-token"),
        HeaderName::from_static("x-api-key"),
    ];

    if let Some(token) = credential::authorization_token(data, &schemes) {
        assert!(within(token, data), "token outside the value");
        assert!(!token.starts_with(b" ") && !token.starts_with(b"\t"));
    }

    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = trim_ows(value);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }

    // The model: every Authorization value with a configured scheme, and
    // every value of a configured token header, is one credential.
    let model = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .filter(|v| has_scheme(v.as_bytes()))
        .count()
        + token_headers
            .iter()
            .map(|n| headers.get_all(n).iter().count())
            .sum::<usize>();

    let found = credential::extract(&headers, &schemes, &token_headers);
    match (model, &found) {
        (0, Ok(None)) => {}
        (1, Ok(Some(c))) => {
            let token: &[u8] = &c.token;
            let values: Vec<&HeaderValue> = match c.header {
                CredentialHeader::Authorization => headers
                    .get_all(http::header::AUTHORIZATION)
                    .iter()
                    .collect(),
                CredentialHeader::Token(i) => headers.get_all(&token_headers[i]).iter().collect(),
            };
            assert!(
                values.iter().any(|v| within(token, v.as_bytes())),
                "token is not inside its header"
            );
            if let CredentialHeader::Token(i) = c.header {
                let v = headers.get(&token_headers[i]).unwrap();
                assert_eq!(token, v.as_bytes(), "a token header's token is its value");
            }
            assert!(!c.token.starts_with(b" ") && !c.token.starts_with(b"\t"));
            assert!(c.is_empty() == c.token.is_empty());
            // The typo check and the hash are total.
            let _ = tollgate::tokens::secret::is_mistyped(token);
            if tollgate::tokens::secret::checksum_ok(token) {
                assert!(tollgate::tokens::secret::looks_like_tg(token));
            }
            let _ = tollgate::tokens::TokenHash::of(token);
            // Debug never shows the token (SPEC §6: a token never appears in
            // a log line): it reads the same for a token of the same length
            // whose every byte differs. Not "the token is no substring of
            // it": `xc-token: Token` is shown as `header: Token(0)` and
            // `Bearer Auth` as `header: Authorization`, names, not the token.
            let flipped: Vec<u8> = c.token.iter().map(|b| !b).collect();
            let other = credential::Credential {
                token: std::borrow::Cow::Borrowed(&flipped),
                header: c.header,
            };
            assert_eq!(
                format!("{c:?}"),
                format!("{other:?}"),
                "Debug shows the token"
            );
        }
        (n, Err(_)) if n > 1 => {}
        (n, other) => panic!("model counts {n} credentials, extract says {other:?}"),
    }
    // Write detection over arbitrary headers is total.
    let _ = tollgate::method::is_write(&Method::GET, &headers, None);
    let _ = tollgate::method::is_websocket_upgrade(&headers);
}

fn has_scheme(v: &[u8]) -> bool {
    let end = v
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(v.len());
    SCHEMES
        .iter()
        .any(|s| s.as_bytes().eq_ignore_ascii_case(&v[..end]))
}

/// Whether `part` lies inside `whole` (an empty `part` anywhere from its
/// start to one past its end).
fn within(part: &[u8], whole: &[u8]) -> bool {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

// ---------------------------------------------------------------------------
// Configuration and token files
// ---------------------------------------------------------------------------

/// The text as a gateway config and as a token file: loading never
/// panics and takes at most [`CONFIG_TIME_LIMIT`]; every error line names
/// the file; a token-file error never quotes a `token:` or `sha256:`
/// value; an accepted config has only canonical route prefixes and no
/// route that allows nothing.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let started = Instant::now();
    match tollgate::config::load_str(Path::new("fuzz.yaml"), text) {
        Ok(settings) => {
            for r in &settings.routes {
                assert_eq!(
                    target::canonical_path(&r.prefix).as_deref(),
                    Ok(r.prefix.as_str()),
                    "route prefix {:?} could never match a request",
                    r.prefix
                );
                if let tollgate::config::RouteScopes::OneOf(s) = &r.scopes {
                    assert!(!s.is_empty(), "a route with no scopes");
                }
            }
            assert!(!settings.listeners.is_empty());
        }
        Err(e) => {
            for line in e.to_string().lines() {
                assert!(line.starts_with("fuzz.yaml"), "error line {line:?}");
            }
        }
    }
    let took = started.elapsed();
    assert!(took < CONFIG_TIME_LIMIT, "config took {took:?}");

    let started = Instant::now();
    let shown = token_file_error(text);
    let took = started.elapsed();
    assert!(took < CONFIG_TIME_LIMIT, "token file took {took:?}");
    if let Some(shown) = shown {
        // SPEC §6: a token or hash never appears in an error. A value also
        // found in the error for the same text with that value's letters
        // and digits changed is not quoted from it but part of the file
        // name or the message's own wording (`token: tokens.y` and
        // "tokens.yaml:1: …"; `token: found a string` and "expected a
        // mapping, found a string").
        for secret in secret_values(text) {
            assert!(
                !shown.contains(secret)
                    || token_file_error(&text.replacen(secret, &disguise(secret), 1))
                        .is_some_and(|again| again.contains(secret)),
                "a token file error quotes a secret value: {shown}"
            );
        }
        for line in shown.lines() {
            assert!(line.starts_with("tokens.yaml"), "error line {line:?}");
        }
    }
}

/// The error for `text` as a token file, if it is refused.
fn token_file_error(text: &str) -> Option<String> {
    tollgate::tokens::source::file::FileSource::parse(Path::new("tokens.yaml"), text)
        .err()
        .map(|e| e.to_string())
}

/// `value` with every ASCII letter and digit replaced by the next one of
/// its kind (`z` by `a`, `9` by `0`), everything else kept, so the YAML
/// around it reads the same.
fn disguise(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            'a'..='y' | 'A'..='Y' | '0'..='8' => char::from(c as u8 + 1),
            other => other,
        })
        .collect()
}

/// Values of `token:` and `sha256:` keys, as written, at least 6 bytes long
/// and found nowhere else in the text (shorter or repeated ones can appear
/// in an error by coincidence, e.g. as an id). A key's `:` is followed by
/// a space, a tab or the line's end: YAML reads `token:x` as one plain
/// scalar, which may itself be a key and is then rightly named in an
/// error's key path (SPEC §2), as in `token:e{---:`.
fn secret_values(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start().trim_start_matches("- ");
            let v = l
                .strip_prefix("token:")
                .or_else(|| l.strip_prefix("sha256:"))?;
            (v.is_empty() || v.starts_with([' ', '\t'])).then_some(v)
        })
        .map(|v| v.trim().trim_matches(['"', '\'']))
        .filter(|v| v.len() >= 6 && text.matches(*v).count() == 1)
        .collect()
}
