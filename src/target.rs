//! Request-target canonicalisation: the one place where the path that is
//! matched against routes and the path that is forwarded are decided.
//!
//! Only origin-form targets are accepted. Percent-encoded unreserved
//! characters are decoded; every other escape is kept exactly as sent; any
//! target an upstream could read as a different path (dot segments, empty
//! segments, `;`, `\`, encoded separators or control bytes, malformed
//! escapes, raw bytes outside visible ASCII) is refused with [`BadPath`].
//!
//! "Could read" includes upstreams that decode leniently: an escaped
//! overlong UTF-8 sequence (`%C0%AE` is a `.` to a decoder that does not
//! check for overlong forms) is refused, and so is an escaped character that
//! Unicode compatibility normalisation (NFKC) turns into `/` or `\`
//! (`%EF%BC%8F`, FULLWIDTH SOLIDUS); one that NFKC turns into dots
//! (`%EF%BC%8E`, FULLWIDTH FULL STOP; `%E2%80%A5`, TWO DOT LEADER) counts
//! as that many dots, so a segment of one or two of them is a dot segment.
//!
//! Invariant: the path returned is exactly what is matched and what is
//! forwarded, and canonicalising it again yields the same string. Does no
//! I/O and allocates only when an escape is decoded.

use std::borrow::Cow;

use http::{Uri, Version};

/// A canonical request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// The canonical path: starts with `/`, matched and forwarded as is.
    pub path: Cow<'a, str>,
    /// The query string (without `?`), byte for byte as sent.
    pub query: Option<&'a str>,
}

/// Why a request target was refused (`400 bad_path`).
///
/// The variants name the rule, never the offending bytes, so they are safe
/// to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    /// The asterisk form (`OPTIONS *`): never forwarded; the gateway may
    /// answer `OPTIONS *` itself.
    #[error("asterisk-form request target")]
    Asterisk,
    /// Absolute form, authority form, or a path not starting with `/`.
    #[error("request target is not in origin form")]
    NotOriginForm,
    /// A `.` or `..` segment, raw or percent-encoded.
    #[error("dot segment in path")]
    DotSegment,
    /// `//` anywhere in the path.
    #[error("empty segment in path")]
    EmptySegment,
    /// A raw `;` (path parameters).
    #[error("semicolon in path")]
    Semicolon,
    /// A raw `\`.
    #[error("backslash in path")]
    Backslash,
    /// An encoded `/` or `\` (`%2F`, `%5C`), or an escaped character that
    /// NFKC normalises to a text containing one (`%EF%BC%8F`, FULLWIDTH
    /// SOLIDUS).
    #[error("encoded separator in path")]
    EncodedSeparator,
    /// An escaped byte sequence a lenient UTF-8 decoder could read as ASCII:
    /// an overlong form (`%C0%AE`, `%E0%80%AE`, `%F0%80%80%AE`) or a byte
    /// that never occurs in UTF-8 (`%C0`, `%C1`, `%F5`–`%FF`).
    #[error("overlong or invalid UTF-8 escape in path")]
    OverlongUtf8,
    /// An encoded control byte (`%00`–`%1F`, `%7F`).
    #[error("encoded control byte in path")]
    EncodedControl,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent escape in path")]
    MalformedEscape,
    /// A raw byte outside visible ASCII (control, space, non-ASCII).
    #[error("invalid byte in path")]
    InvalidByte,
    /// A raw `#` (fragment) in the path.
    #[error("fragment in request target")]
    Fragment,
}

/// Canonicalises an origin-form request target (`/path?query`), as an
/// HTTP/1 request carries it.
///
/// Any scheme or authority in `uri` makes it absolute or authority form
/// and refused; for HTTP/2, whose URI carries `:scheme` and `:authority`,
/// use [`parse_request`].
///
/// `http::Uri` already cuts a fragment off when it parses a target, so
/// none reaches here through hyper; a `#` still found in the path is
/// refused and the query is cut at one, so a fragment is never forwarded.
pub fn parse(uri: &Uri) -> Result<Target<'_>, BadPath> {
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(BadPath::NotOriginForm);
    }
    parse_path_and_query(uri, false)
}

/// Canonicalises a request target, whatever its HTTP version.
///
/// HTTP/1: as [`parse`] (origin form only). HTTP/2 and later: the URI's
/// scheme and authority come from the `:scheme` and `:authority`
/// pseudo-headers and are allowed; `:path` must satisfy the same rules.
/// With `merge_slashes` (`paths.merge_slashes`), runs of `/` collapse to
/// one instead of being an empty segment.
pub fn parse_versioned(
    version: Version,
    uri: &Uri,
    merge_slashes: bool,
) -> Result<Target<'_>, BadPath> {
    if version < Version::HTTP_2 && (uri.scheme().is_some() || uri.authority().is_some()) {
        return Err(BadPath::NotOriginForm);
    }
    parse_path_and_query(uri, merge_slashes)
}

fn parse_path_and_query(uri: &Uri, merge_slashes: bool) -> Result<Target<'_>, BadPath> {
    let Some(pq) = uri.path_and_query() else {
        return Err(BadPath::NotOriginForm);
    };
    // `PathAndQuery::as_str` is the raw text (`path()` turns "" into "/",
    // which would hide a target such as `?x`).
    let raw = pq.as_str();
    if raw == "*" {
        return Err(BadPath::Asterisk);
    }
    if !raw.starts_with('/') {
        return Err(BadPath::NotOriginForm);
    }
    let path = canonicalise(pq.path(), merge_slashes)?;
    let query = pq.query().map(|q| match q.find('#') {
        Some(i) => &q[..i],
        None => q,
    });
    Ok(Target { path, query })
}

/// Canonicalises a path (no query): decodes escaped unreserved characters
/// and refuses what [`BadPath`] lists.
///
/// Borrows `path` when nothing is decoded. `canonical_path(p)` of a
/// returned `p` returns `p` unchanged.
pub fn canonical_path(path: &str) -> Result<Cow<'_, str>, BadPath> {
    canonicalise(path, false)
}

/// [`canonical_path`], where with `merge_slashes` a run of `/` is one `/`
/// (every other rule still holds, so `//./` is still a dot segment).
pub fn canonicalise(path: &str, merge_slashes: bool) -> Result<Cow<'_, str>, BadPath> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(BadPath::NotOriginForm);
    }

    // Built only once an escape is decoded: holds the canonical form of
    // `path[..copied]`.
    let mut out: Option<String> = None;
    let mut copied = 0;

    // The segment being scanned: its start, and whether it consists only of
    // dots (raw or encoded), and how many.
    let mut seg_start = 1;
    let mut dots = 0usize;
    let mut only_dots = true;

    let mut i = 1;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'/' => {
                if i == seg_start {
                    if !merge_slashes {
                        return Err(BadPath::EmptySegment);
                    }
                    // Drop this `/`: the segment starts after it.
                    let s = out.get_or_insert_with(|| String::with_capacity(path.len()));
                    s.push_str(&path[copied..i]);
                    copied = i + 1;
                    seg_start = i + 1;
                    i += 1;
                    continue;
                }
                if only_dots && dots <= 2 {
                    return Err(BadPath::DotSegment);
                }
                seg_start = i + 1;
                dots = 0;
                only_dots = true;
                i += 1;
            }
            b'%' => {
                let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                    return Err(BadPath::MalformedEscape);
                };
                let (Some(h), Some(l)) = (hex(h), hex(l)) else {
                    return Err(BadPath::MalformedEscape);
                };
                let c = (h << 4) | l;
                match c {
                    b'/' | b'\\' => return Err(BadPath::EncodedSeparator),
                    0x00..=0x1F | 0x7F => return Err(BadPath::EncodedControl),
                    _ => {}
                }
                if c >= 0x80 {
                    if let Some(n) = non_ascii_escape(c, bytes, i)? {
                        // The whole escaped character stands for dots.
                        dots += n;
                        i += 9;
                        continue;
                    }
                }
                if c == b'.' {
                    dots += 1;
                } else {
                    only_dots = false;
                }
                if is_unreserved(c) {
                    let s = out.get_or_insert_with(|| String::with_capacity(path.len()));
                    s.push_str(&path[copied..i]);
                    s.push(char::from(c));
                    copied = i + 3;
                }
                i += 3;
            }
            b'.' => {
                dots += 1;
                i += 1;
            }
            b';' => return Err(BadPath::Semicolon),
            b'\\' => return Err(BadPath::Backslash),
            b'#' => return Err(BadPath::Fragment),
            0x21..=0x7E => {
                only_dots = false;
                i += 1;
            }
            _ => return Err(BadPath::InvalidByte),
        }
    }
    // The last segment: empty is the one allowed trailing `/` (or the root).
    if bytes.len() > seg_start && only_dots && dots <= 2 {
        return Err(BadPath::DotSegment);
    }

    Ok(match out {
        None => Cow::Borrowed(path),
        Some(mut s) => {
            s.push_str(&path[copied..]);
            Cow::Owned(s)
        }
    })
}

/// The path that goes upstream for a route with `strip_prefix`: `prefix`
/// removed, `/` when nothing is left (`/api/v3/x` → `/x`, `/api/v3` → `/`).
///
/// Prefix `/` strips nothing, and a `path` that does not match `prefix` on a
/// segment boundary is returned unchanged.
pub fn strip_prefix_path<'a>(path: &'a str, prefix: &str) -> &'a str {
    if prefix == "/" {
        return path;
    }
    match path.strip_prefix(prefix) {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    }
}

/// Judges an escaped non-ASCII byte `lead` at `bytes[i]` with the escapes
/// that follow it: refuses an overlong or never-valid UTF-8 lead and an
/// escaped character NFKC turns into a separator; returns how many dots an
/// escaped dot look-alike stands for (it is three escapes long). `Ok(None)`
/// for everything else, including escapes that are not UTF-8 at all (a
/// Latin-1 `%E9` is forwarded as sent).
fn non_ascii_escape(lead: u8, bytes: &[u8], i: usize) -> Result<Option<usize>, BadPath> {
    let next = escaped_byte(bytes, i + 3);
    match (lead, next) {
        (0xC0 | 0xC1 | 0xF5..=0xFF, _) => return Err(BadPath::OverlongUtf8),
        (0xE0, Some(0x80..=0x9F)) | (0xF0, Some(0x80..=0x8F)) => return Err(BadPath::OverlongUtf8),
        (0xE2 | 0xEF, Some(_)) => {}
        _ => return Ok(None),
    }
    let (Some(b1), Some(b2)) = (next, escaped_byte(bytes, i + 6)) else {
        return Ok(None);
    };
    match [lead, b1, b2] {
        // U+2100 ACCOUNT OF, U+2101, U+2105 CARE OF, U+2106 (`a/c` …),
        // U+FE68 SMALL REVERSE SOLIDUS, U+FF0F FULLWIDTH SOLIDUS,
        // U+FF3C FULLWIDTH REVERSE SOLIDUS.
        [0xE2, 0x84, 0x80 | 0x81 | 0x85 | 0x86]
        | [0xEF, 0xB9, 0xA8]
        | [0xEF, 0xBC, 0x8F | 0xBC] => Err(BadPath::EncodedSeparator),
        // U+2024 ONE DOT LEADER, U+FE52 SMALL FULL STOP, U+FF0E FULLWIDTH
        // FULL STOP.
        [0xE2, 0x80, 0xA4] | [0xEF, 0xB9, 0x92] | [0xEF, 0xBC, 0x8E] => Ok(Some(1)),
        // U+2025 TWO DOT LEADER, U+FE30 its vertical presentation form.
        [0xE2, 0x80, 0xA5] | [0xEF, 0xB8, 0xB0] => Ok(Some(2)),
        // U+2026 HORIZONTAL ELLIPSIS, U+FE19 its vertical presentation form.
        [0xE2, 0x80, 0xA6] | [0xEF, 0xB8, 0x99] => Ok(Some(3)),
        _ => Ok(None),
    }
}

/// The byte of a well-formed escape `%XX` at `bytes[i]`, if there is one.
fn escaped_byte(bytes: &[u8], i: usize) -> Option<u8> {
    match bytes.get(i..i + 3)? {
        [b'%', h, l] => Some((hex(*h)? << 4) | hex(*l)?),
        _ => None,
    }
}

/// The value of one hex digit.
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str) -> Result<(String, Option<String>), BadPath> {
        let uri: Uri = s.parse().expect("test input must be a valid http::Uri");
        parse(&uri).map(|t| (t.path.into_owned(), t.query.map(str::to_owned)))
    }

    fn path(s: &str) -> Result<String, BadPath> {
        target(s).map(|(p, _)| p)
    }

    #[test]
    fn nasty_targets_from_the_spec() {
        let cases: &[(&str, Result<&str, BadPath>)] = &[
            ("/api/v1/%2e%2e/admin", Err(BadPath::DotSegment)),
            ("/api/v1/..;/x", Err(BadPath::Semicolon)),
            ("/api//x", Err(BadPath::EmptySegment)),
            ("/a/%252e", Ok("/a/%252e")),
            ("/a/%7euser", Ok("/a/~user")),
            ("/a/%7Euser", Ok("/a/~user")),
            ("/a/%41", Ok("/a/A")),
            ("/a/%e2%80%ae", Ok("/a/%e2%80%ae")),
            ("/a/%E2%80%AE", Ok("/a/%E2%80%AE")),
            ("/a/%zz", Err(BadPath::MalformedEscape)),
            ("/a/%4", Err(BadPath::MalformedEscape)),
            ("/a/%", Err(BadPath::MalformedEscape)),
            ("/a/%4g", Err(BadPath::MalformedEscape)),
            ("/a\\b", Err(BadPath::Backslash)),
            ("/a/%2F", Err(BadPath::EncodedSeparator)),
            ("/a/%2fb", Err(BadPath::EncodedSeparator)),
            ("/a/%5c", Err(BadPath::EncodedSeparator)),
            ("/a/%5C", Err(BadPath::EncodedSeparator)),
            ("/a/%00", Err(BadPath::EncodedControl)),
            ("/a/%0a", Err(BadPath::EncodedControl)),
            ("/a/%1F", Err(BadPath::EncodedControl)),
            ("/a/%7f", Err(BadPath::EncodedControl)),
            ("/a/%20b", Ok("/a/%20b")),
            ("/a/%3B", Ok("/a/%3B")),
            ("/a/%25", Ok("/a/%25")),
            ("/a/%2541", Ok("/a/%2541")),
        ];
        for (input, want) in cases {
            let got = path(input);
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "input {input}");
        }
    }

    #[test]
    fn merged_slashes_collapse_and_every_other_rule_still_holds() {
        let merged = |p: &str| canonicalise(p, true).map(Cow::into_owned);
        assert_eq!(merged("//api/v1/info").as_deref(), Ok("/api/v1/info"));
        assert_eq!(merged("/a///b//").as_deref(), Ok("/a/b/"));
        assert_eq!(merged("//").as_deref(), Ok("/"));
        assert_eq!(merged("/a//%41").as_deref(), Ok("/a/A"));
        assert_eq!(merged("/a//./b"), Err(BadPath::DotSegment));
        assert_eq!(merged("/a//%2e%2e"), Err(BadPath::DotSegment));
        assert_eq!(merged("//a;b"), Err(BadPath::Semicolon));
        assert_eq!(canonical_path("//api"), Err(BadPath::EmptySegment));
        for p in ["//a//b", "/x//y/", "///"] {
            let once = merged(p).unwrap();
            assert_eq!(canonicalise(&once, false).as_deref(), Ok(once.as_str()));
        }
    }

    #[test]
    fn dot_segments_are_refused_raw_or_encoded() {
        for p in [
            "/.",
            "/..",
            "/a/.",
            "/a/..",
            "/a/./b",
            "/a/../b",
            "/a/%2e/b",
            "/a/%2E/b",
            "/a/.%2e/b",
            "/a/%2e./b",
            "/a/%2E%2e",
            "/a/./",
            "/../",
            "/%2e%2e/",
        ] {
            assert_eq!(path(p), Err(BadPath::DotSegment), "{p}");
        }
    }

    #[test]
    fn overlong_and_never_valid_utf8_escapes_are_refused() {
        for p in [
            "/a/%c0%ae%c0%ae/b",
            "/a/%C0%AE",
            "/a/%c0%af",
            "/a/%c1%9c",
            "/a/%e0%80%ae",
            "/a/%E0%81%9C",
            "/a/%f0%80%80%ae",
            "/a/%F0%8F%BF%BF",
            "/a/%f5",
            "/a/%f8%80%80%80%ae",
            "/a/%fc%80%80%80%80%ae",
            "/a/%ff",
            "/a/x%c0",
        ] {
            assert_eq!(path(p), Err(BadPath::OverlongUtf8), "{p}");
        }
    }

    #[test]
    fn well_formed_and_legacy_non_ascii_escapes_are_forwarded_as_sent() {
        for p in [
            "/a/%c3%a9",
            "/a/%e0%a0%80",
            "/a/%f0%90%80%80",
            "/a/%f4%8f%bf%bf",
            "/a/%e9t%e9",
            "/a/%e0",
            "/a/%e0x",
            "/a/%f0",
            "/a/%e2%80%ae",
            "/a/%ef%bc%a1",
        ] {
            assert_eq!(path(p).as_deref(), Ok(p), "{p}");
        }
    }

    #[test]
    fn escaped_characters_that_normalise_to_separators_are_refused() {
        for p in [
            "/a/%ef%bc%8f/b",
            "/a/%EF%BC%8F",
            "/a/x%ef%bc%bcy",
            "/a/%ef%b9%a8",
            "/a/%e2%84%80",
            "/a/%e2%84%81",
            "/a/%e2%84%85",
            "/a/%e2%84%86",
            "/a/..%ef%bc%8f",
        ] {
            assert_eq!(path(p), Err(BadPath::EncodedSeparator), "{p}");
        }
    }

    #[test]
    fn escaped_dot_look_alikes_count_as_dots() {
        for p in [
            "/a/%ef%bc%8e%ef%bc%8e/b",
            "/a/%EF%BC%8E",
            "/a/.%ef%bc%8e/b",
            "/a/%ef%bc%8e%2e",
            "/a/%e2%80%a4",
            "/a/%e2%80%a5",
            "/a/%e2%80%a5/",
            "/a/%ef%b9%92",
            "/a/%ef%b8%b0",
        ] {
            assert_eq!(path(p), Err(BadPath::DotSegment), "{p}");
        }
        // Three or more dots, or anything else in the segment, is a name.
        for p in [
            "/a/%e2%80%a6",
            "/a/%ef%b8%99",
            "/a/%e2%80%a5.",
            "/a/%ef%bc%8e%ef%bc%8e%ef%bc%8e",
            "/a/x%ef%bc%8e",
            "/a/%ef%bc%8ex",
        ] {
            assert_eq!(path(p).as_deref(), Ok(p), "{p}");
        }
    }

    #[test]
    fn dots_inside_a_segment_are_ordinary() {
        for (p, want) in [
            ("/a/...", "/a/..."),
            ("/a/.../b", "/a/.../b"),
            ("/a/.b", "/a/.b"),
            ("/a/b.", "/a/b."),
            ("/a/..b", "/a/..b"),
            ("/a/%2e%2e%2e", "/a/..."),
            ("/a/%2ehidden", "/a/.hidden"),
            ("/v1.2/x", "/v1.2/x"),
        ] {
            assert_eq!(path(p).as_deref(), Ok(want), "{p}");
        }
    }

    #[test]
    fn one_trailing_slash_is_not_an_empty_segment() {
        assert_eq!(path("/").as_deref(), Ok("/"));
        assert_eq!(path("/a/").as_deref(), Ok("/a/"));
        assert_eq!(path("/a/b/").as_deref(), Ok("/a/b/"));
        assert_eq!(path("/a//"), Err(BadPath::EmptySegment));
        assert_eq!(path("//"), Err(BadPath::EmptySegment));
        assert_eq!(path("//a"), Err(BadPath::EmptySegment));
    }

    #[test]
    fn escapes_that_stay_keep_their_hex_case() {
        assert_eq!(path("/a/%c3%a9%C3%A9").as_deref(), Ok("/a/%c3%a9%C3%A9"));
        assert_eq!(path("/a/%3f%3F%23").as_deref(), Ok("/a/%3f%3F%23"));
    }

    #[test]
    fn all_unreserved_characters_are_decoded() {
        let mut raw = String::from("/");
        let mut want = String::from("/x");
        raw.push('x');
        for c in (0u8..=0x7F).filter(|&c| is_unreserved(c)) {
            raw.push_str(&format!("%{c:02X}"));
            want.push(char::from(c));
        }
        assert_eq!(path(&raw), Ok(want));
    }

    #[test]
    fn nothing_is_decoded_twice() {
        assert_eq!(path("/a/%2541").as_deref(), Ok("/a/%2541"));
        assert_eq!(path("/a/%252e%252e/b").as_deref(), Ok("/a/%252e%252e/b"));
        assert_eq!(path("/a/%25%32%65").as_deref(), Ok("/a/%252e"));
    }

    #[test]
    fn unchanged_paths_are_borrowed() {
        let uri: Uri = "/api/v1/items/%C3%A9?x=1".parse().unwrap();
        let t = parse(&uri).unwrap();
        assert!(matches!(t.path, Cow::Borrowed(_)));
        let uri: Uri = "/api/v1/%7Euser".parse().unwrap();
        assert!(matches!(parse(&uri).unwrap().path, Cow::Owned(_)));
    }

    #[test]
    fn query_is_returned_byte_for_byte() {
        for (input, q) in [
            ("/a?x=%2e%2e/../;\\", Some("x=%2e%2e/../;\\")),
            ("/a?%7E=%41%zz", Some("%7E=%41%zz")),
            ("/a?", Some("")),
            ("/a", None),
            ("/a/%41?b=%41", Some("b=%41")),
        ] {
            let (_, got) = target(input).unwrap();
            assert_eq!(got.as_deref(), q, "{input}");
        }
    }

    #[test]
    fn dot_segment_in_the_query_only_is_fine() {
        assert_eq!(
            target("/a?next=/../admin"),
            Ok(("/a".to_owned(), Some("next=/../admin".to_owned())))
        );
    }

    #[test]
    fn fragment_is_cut_by_http_uri_and_never_returned() {
        // http::Uri drops the fragment when parsing a request target; pin that,
        // since the "cut" option of the spec relies on it.
        let (p, q) = target("/a/b#frag/../x").unwrap();
        assert_eq!(p, "/a/b");
        assert_eq!(q, None);
        let (p, q) = target("/a?x=1#frag").unwrap();
        assert_eq!(p, "/a");
        assert_eq!(q.as_deref(), Some("x=1"));
        assert_eq!(canonical_path("/a#b"), Err(BadPath::Fragment));
    }

    #[test]
    fn asterisk_form_is_distinguished() {
        assert_eq!(path("*"), Err(BadPath::Asterisk));
        let uri: Uri = "*".parse().unwrap();
        assert_eq!(
            parse_versioned(Version::HTTP_2, &uri, false),
            Err(BadPath::Asterisk)
        );
    }

    #[test]
    fn absolute_and_authority_forms_are_refused() {
        assert_eq!(path("http://example.com/a"), Err(BadPath::NotOriginForm));
        assert_eq!(path("https://example.com"), Err(BadPath::NotOriginForm));
        assert_eq!(path("example.com:443"), Err(BadPath::NotOriginForm));
    }

    #[test]
    fn http2_targets_carry_scheme_and_authority_and_are_accepted() {
        let uri: Uri = "https://example.com/api/%7Ex?q=1".parse().unwrap();
        let t = parse_versioned(Version::HTTP_2, &uri, false).unwrap();
        assert_eq!(t.path, "/api/~x");
        assert_eq!(t.query, Some("q=1"));
        assert_eq!(
            parse_versioned(Version::HTTP_11, &uri, false),
            Err(BadPath::NotOriginForm)
        );
        let uri: Uri = "https://example.com/a/../b".parse().unwrap();
        assert_eq!(
            parse_versioned(Version::HTTP_2, &uri, false),
            Err(BadPath::DotSegment)
        );
        // Plain CONNECT over HTTP/2 has no path at all.
        let uri: Uri = "example.com:443".parse().unwrap();
        assert_eq!(
            parse_versioned(Version::HTTP_2, &uri, false),
            Err(BadPath::NotOriginForm)
        );
    }

    #[test]
    fn the_version_decides_whether_an_absolute_target_is_allowed() {
        let uri: Uri = "https://example.com/a".parse().unwrap();
        assert_eq!(
            parse_versioned(Version::HTTP_2, &uri, false).unwrap().path,
            "/a"
        );
        assert_eq!(
            parse_versioned(Version::HTTP_11, &uri, false),
            Err(BadPath::NotOriginForm)
        );
    }

    #[test]
    fn query_only_target_is_not_origin_form() {
        // `Uri::path()` reports "/" for a target of "?x"; the raw text does not.
        let pq = http::uri::PathAndQuery::from_static("?x");
        let uri = Uri::from_parts({
            let mut p = http::uri::Parts::default();
            p.path_and_query = Some(pq);
            p
        })
        .unwrap();
        assert_eq!(parse(&uri), Err(BadPath::NotOriginForm));
    }

    #[test]
    fn raw_bytes_outside_visible_ascii_are_refused() {
        // http::Uri accepts UTF-8 in paths; the gateway does not.
        assert_eq!(path("/caf\u{e9}"), Err(BadPath::InvalidByte));
        assert_eq!(canonical_path("/a b"), Err(BadPath::InvalidByte));
        assert_eq!(canonical_path("/a\tb"), Err(BadPath::InvalidByte));
        assert_eq!(canonical_path("/a\u{7f}"), Err(BadPath::InvalidByte));
        assert_eq!(canonical_path("/a\0"), Err(BadPath::InvalidByte));
    }

    #[test]
    fn path_must_start_with_slash() {
        assert_eq!(canonical_path(""), Err(BadPath::NotOriginForm));
        assert_eq!(canonical_path("a/b"), Err(BadPath::NotOriginForm));
    }

    #[test]
    fn canonicalisation_is_idempotent() {
        // Every combination of a few segments, each an interesting spelling.
        let pieces = [
            "a",
            "%41",
            "%7e",
            "%7E",
            "%2e",
            "%2E",
            ".",
            "..",
            "...",
            "%252e",
            "%e2%80%ae",
            "%20",
            "%3B",
            "%2e%2e",
            ".%2e",
            "x.y",
            "%5F",
            "%2D",
            "~",
            "%30",
            "",
            "%zz",
            ";",
            "%2f",
            "%00",
            "%25",
        ];
        let mut checked = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    let raw = format!("/{a}/{b}/{c}");
                    let Ok(once) = canonical_path(&raw) else {
                        continue;
                    };
                    let twice = canonical_path(&once)
                        .unwrap_or_else(|e| panic!("{raw} -> {once} refused: {e}"));
                    assert_eq!(once, twice, "{raw}");
                    assert!(matches!(twice, Cow::Borrowed(_)), "{raw}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 1000, "only {checked} inputs were accepted");
    }

    #[test]
    fn canonical_path_is_total_on_arbitrary_input() {
        // A cheap deterministic fuzz: no input may panic.
        let alphabet: Vec<char> = "/%.aZ09;\\#?~ \t\u{e9}2eEfF5c".chars().collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let len = (state % 12) as usize;
            let mut s = String::from("/");
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            if let Ok(p) = canonical_path(&s) {
                assert_eq!(canonical_path(&p), Ok(p.clone()), "{s}");
            }
        }
    }

    #[test]
    fn strip_prefix_leaves_a_slash() {
        assert_eq!(strip_prefix_path("/api/v3/x", "/api/v3"), "/x");
        assert_eq!(strip_prefix_path("/api/v3/", "/api/v3"), "/");
        assert_eq!(strip_prefix_path("/api/v3", "/api/v3"), "/");
        assert_eq!(strip_prefix_path("/api/v3/x/y", "/api/v3"), "/x/y");
        assert_eq!(strip_prefix_path("/x", "/"), "/x");
        assert_eq!(strip_prefix_path("/api/v30", "/api/v3"), "/api/v30");
    }
}
