//! Whether a request counts as writing (read-only tokens and anonymous
//! requests may not write).
//!
//! A request writes when its method is not one of the route's read methods
//! (by default exactly `GET`, `HEAD` and `OPTIONS`; `routes[].read_methods`
//! replaces the list), when a method-override header or a `_method` query
//! parameter names anything else, or when it asks for a WebSocket upgrade.
//!
//! Invariant: when in doubt, a request writes: every override spelling an
//! upstream framework might honour is compared after decoding, exactly and
//! case-sensitively. Does no I/O and no allocation.

use http::header::UPGRADE;
use http::{HeaderMap, HeaderName, Method};

use crate::proxy::headers::trim_ows;
use crate::target::hex;

/// `X-HTTP-Method-Override`.
pub const X_HTTP_METHOD_OVERRIDE: HeaderName = HeaderName::from_static("x-http-method-override");
/// `X-HTTP-Method`.
pub const X_HTTP_METHOD: HeaderName = HeaderName::from_static("x-http-method");
/// `X-Method-Override`.
pub const X_METHOD_OVERRIDE: HeaderName = HeaderName::from_static("x-method-override");

/// The method-override headers, any occurrence of which is checked.
pub const OVERRIDE_HEADERS: [HeaderName; 3] =
    [X_HTTP_METHOD_OVERRIDE, X_HTTP_METHOD, X_METHOD_OVERRIDE];

/// The methods that count as reading on a route (`routes[].read_methods`),
/// compared exactly and case-sensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMethods(Option<Box<[Method]>>);

impl Default for ReadMethods {
    /// `GET`, `HEAD` and `OPTIONS`.
    fn default() -> Self {
        ReadMethods(None)
    }
}

impl ReadMethods {
    /// Exactly `methods` (an empty list: every request writes).
    pub fn only(methods: Vec<Method>) -> Self {
        ReadMethods(Some(methods.into()))
    }

    /// Whether `method` reads.
    #[inline]
    pub fn contains(&self, method: &Method) -> bool {
        match &self.0 {
            None => is_read_method(method),
            Some(list) => list.contains(method),
        }
    }

    /// Whether a method named by an override header reads.
    fn names(&self, name: &[u8]) -> bool {
        match &self.0 {
            None => matches!(name, b"GET" | b"HEAD" | b"OPTIONS"),
            Some(list) => list.iter().any(|m| m.as_str().as_bytes() == name),
        }
    }

    /// Whether a `_method` value, form-decoded once, names a read method.
    fn names_decoded(&self, raw: &[u8]) -> bool {
        let is = |m: &[u8]| FormDecoded::new(raw).eq(m.iter().copied());
        match &self.0 {
            None => [&b"GET"[..], b"HEAD", b"OPTIONS"].iter().any(|m| is(m)),
            Some(list) => list.iter().any(|m| is(m.as_str().as_bytes())),
        }
    }

    /// The methods, for `explain`.
    pub fn list(&self) -> Vec<&str> {
        match &self.0 {
            None => vec!["GET", "HEAD", "OPTIONS"],
            Some(list) => list.iter().map(Method::as_str).collect(),
        }
    }
}

/// Whether the request counts as writing with the default read methods.
///
/// `query` is the raw query string (without `?`).
pub fn is_write(method: &Method, headers: &HeaderMap, query: Option<&str>) -> bool {
    writes(method, headers, query, &ReadMethods::default())
}

/// Whether the request counts as writing on a route whose read methods are
/// `read`.
pub fn writes(
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    read: &ReadMethods,
) -> bool {
    writes_by_method(method, headers, query, read) || is_websocket_upgrade(headers)
}

/// [`writes`] but for a WebSocket upgrade, which the caller has looked at
/// already: whether the method, a method-override header or a `_method`
/// query parameter makes the request write.
pub fn writes_by_method(
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    read: &ReadMethods,
) -> bool {
    if !read.contains(method) {
        return true;
    }
    // One pass over the names the request has (a handful, most of them
    // standard, which compare unequal at once) instead of a hashed lookup
    // per override header.
    for name in headers.keys() {
        if OVERRIDE_HEADERS.contains(name)
            && headers
                .get_all(name)
                .iter()
                .any(|v| !read.names(v.as_bytes()))
        {
            return true;
        }
    }
    if let Some(q) = query {
        if query_overrides_to_write(q, read) {
            return true;
        }
    }
    false
}

/// Whether `method` is exactly `GET`, `HEAD` or `OPTIONS` (case-sensitive).
pub fn is_read_method(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS
}

/// Whether the request asks for a WebSocket upgrade: an `Upgrade` header
/// listing the protocol `websocket` (case-insensitive, any version suffix).
///
/// Like hyper, this does not require `Connection: upgrade`. HTTP/2 extended
/// CONNECT (`:protocol websocket`) is a CONNECT, refused before this.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers.get_all(UPGRADE).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|proto| {
            let name = proto.split(|&b| b == b'/').next().unwrap_or_default();
            trim_ows(name).eq_ignore_ascii_case(b"websocket")
        })
    })
}

/// Whether a `_method` query parameter names anything other than `GET`,
/// `HEAD` or `OPTIONS`.
///
/// Parameters are split on `&` and `;`; names and values are percent- and
/// `+`-decoded once. A name counts as `_method` compared ASCII
/// case-insensitively, after leading spaces are dropped, anything from a
/// `[` on is cut and ` ` or `.` read as `_` (PHP's rewriting of parameter
/// names). `_method` without `=` or with an empty value names nothing
/// allowed, so it writes.
fn query_overrides_to_write(query: &str, read: &ReadMethods) -> bool {
    query
        .as_bytes()
        .split(|&b| b == b'&' || b == b';')
        .any(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &pair[pair.len()..]),
            };
            is_method_param(name) && !read.names_decoded(value)
        })
}

fn is_method_param(raw: &[u8]) -> bool {
    let name = FormDecoded::new(raw)
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != b'[')
        .map(|b| match b {
            b' ' | b'.' => b'_',
            other => other.to_ascii_lowercase(),
        });
    name.eq(b"_method".iter().copied())
}

/// The bytes of an `application/x-www-form-urlencoded` component, decoded
/// once: `+` is a space, `%XX` a byte; a malformed escape stays as sent.
struct FormDecoded<'a> {
    rest: &'a [u8],
}

impl<'a> FormDecoded<'a> {
    fn new(raw: &'a [u8]) -> Self {
        FormDecoded { rest: raw }
    }
}

impl Iterator for FormDecoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        match (b, rest) {
            (b'%', [h, l, tail @ ..]) => match (hex(*h), hex(*l)) {
                (Some(h), Some(l)) => {
                    self.rest = tail;
                    Some((h << 4) | l)
                }
                _ => {
                    self.rest = rest;
                    Some(b'%')
                }
            },
            (b'+', _) => {
                self.rest = rest;
                Some(b' ')
            }
            _ => {
                self.rest = rest;
                Some(b)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        m
    }

    fn get_writes(headers: &[(&'static str, &'static str)], query: Option<&str>) -> bool {
        is_write(&Method::GET, &h(headers), query)
    }

    #[test]
    fn read_methods_do_not_write() {
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(!is_write(&m, &HeaderMap::new(), None), "{m}");
        }
    }

    #[test]
    fn other_methods_write() {
        for m in [
            "POST", "PUT", "PATCH", "DELETE", "PROPFIND", "CONNECT", "TRACE",
        ] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(is_write(&m, &HeaderMap::new(), None), "{m}");
        }
    }

    #[test]
    fn methods_are_case_sensitive() {
        for m in ["get", "Get", "head", "options", "GET2"] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(is_write(&m, &HeaderMap::new(), None), "{m}");
        }
    }

    #[test]
    fn override_headers_naming_a_write_method_write() {
        for name in [
            "x-http-method-override",
            "X-HTTP-Method",
            "x-method-override",
        ] {
            for value in ["DELETE", "get", "", "GET, POST", " GET"] {
                assert!(get_writes(&[(name, value)], None), "{name}: {value:?}");
            }
        }
    }

    #[test]
    fn override_headers_naming_a_read_method_do_not_write() {
        assert!(!get_writes(
            &[
                ("x-http-method-override", "GET"),
                ("x-http-method", "HEAD"),
                ("x-method-override", "OPTIONS"),
            ],
            None
        ));
    }

    #[test]
    fn any_occurrence_of_an_override_header_counts() {
        assert!(get_writes(
            &[
                ("x-http-method-override", "GET"),
                ("x-http-method-override", "PUT"),
            ],
            None
        ));
    }

    #[test]
    fn method_query_parameter_naming_a_write_method_writes() {
        for q in [
            "_method=DELETE",
            "a=1&_method=PUT",
            "_method=GET&_method=POST",
            "%5Fmethod=PUT",
            "%5fmethod=PUT",
            "_%6Dethod=PUT",
            "_method=get",
            "_method",
            "_method=",
            "a=1;_method=PATCH",
            "_METHOD=PUT",
            ".method=PUT",
            "_method[]=PUT",
            "+_method=PUT",
            "_method=%50UT",
            "_method=GET+",
        ] {
            assert!(get_writes(&[], Some(q)), "{q}");
        }
    }

    #[test]
    fn method_query_parameter_naming_a_read_method_does_not_write() {
        for q in [
            "_method=GET",
            "_method=%47ET",
            "_method=HEAD&_method=OPTIONS",
            "method=DELETE",
            "x_method=DELETE",
            "_methods=DELETE",
            "+method=DELETE",
            "q=_method%3DDELETE",
            "",
            "a&b=c",
        ] {
            assert!(!get_writes(&[], Some(q)), "{q}");
        }
    }

    #[test]
    fn websocket_upgrade_writes() {
        assert!(get_writes(&[("upgrade", "websocket")], None));
        assert!(get_writes(&[("upgrade", "WebSocket")], None));
        assert!(get_writes(&[("upgrade", "h2c, websocket/13")], None));
        assert!(!get_writes(&[("upgrade", "h2c")], None));
        assert!(!get_writes(&[("upgrade", "websockets")], None));
    }

    #[test]
    fn websocket_upgrade_is_detected_across_headers() {
        assert!(is_websocket_upgrade(&h(&[
            ("upgrade", "foo"),
            ("upgrade", " websocket ")
        ])));
        assert!(!is_websocket_upgrade(&h(&[("connection", "upgrade")])));
    }

    #[test]
    fn form_decoding_keeps_malformed_escapes() {
        assert_eq!(FormDecoded::new(b"%zz%4").collect::<Vec<_>>(), b"%zz%4");
        assert_eq!(FormDecoded::new(b"a+%41%").collect::<Vec<_>>(), b"a A%");
    }
}
