//! Checks of single values shared by the gateway config and the token file:
//! route prefixes, upstream URLs, scopes, addresses, header names, log
//! filters, durations and rates.
//!
//! Invariant: pure functions of their input; an error message names the
//! fix and never echoes a value that could hold a secret (URLs, tokens).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use http::{HeaderName, Uri};
use ipnet::IpNet;

use super::schema::RateSpec;
use super::units::{parse_duration, Rate};
use super::yaml::Report;

/// A route prefix: starts with `/`, no trailing `/` (except `/` itself), no
/// empty or dot segment, and only characters a request path can carry
/// unencoded (no `%`, `;`, `#`, `?`, `\`, whitespace or control characters).
pub(crate) fn prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with \"/\""));
    }
    if p.len() > 1 && p.ends_with('/') {
        return Err(format!("{p:?} must not end with \"/\""));
    }
    if p.contains("//") {
        return Err(format!("{p:?} must not contain \"//\""));
    }
    if p.split('/').any(|s| s == "." || s == "..") {
        return Err(format!("{p:?} must not contain \".\" or \"..\" segments"));
    }
    path_chars(p).map_err(|m| format!("{p:?} {m}"))
}

/// Characters allowed unencoded in a path (RFC 3986 pchar and `/`) minus
/// `%` and `;`, which the gateway refuses in request paths.
fn path_chars(p: &str) -> Result<(), String> {
    for c in p.chars() {
        let ok = c.is_ascii_alphanumeric() || "/-._~!$&'()*+,=:@".contains(c);
        if ok {
            continue;
        }
        return Err(if c.is_whitespace() || c.is_control() {
            "must not contain whitespace or control characters".to_string()
        } else if !c.is_ascii() {
            "must be ASCII".to_string()
        } else {
            format!("must not contain {:?}", c.to_string())
        });
    }
    Ok(())
}

/// An absolute `http`/`https` URL with a host, an optional port and path,
/// and no user information, query or fragment.
pub(crate) fn upstream(s: &str) -> Result<Uri, String> {
    const EXAMPLE: &str = "such as http://127.0.0.1:19999";
    if s.contains('#') {
        return Err("must not have a fragment (#…)".into());
    }
    let uri: Uri = s
        .parse()
        .map_err(|_| format!("is not a valid URL; use an absolute http(s) URL {EXAMPLE}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        Some(_) => return Err(format!("must use http:// or https:// ({EXAMPLE})")),
        None => return Err(format!("must be an absolute http(s) URL {EXAMPLE}")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("must be an absolute http(s) URL {EXAMPLE}"))?;
    if authority.as_str().contains('@') {
        return Err("must not contain a user name or password".into());
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(format!("has no host ({EXAMPLE})"));
    }
    let port = &authority.as_str()[host.len()..];
    if !port.is_empty() && authority.port_u16().is_none_or(|p| p == 0) {
        return Err("has an invalid port (1 to 65535)".into());
    }
    if uri.query().is_some() {
        return Err("must not have a query string (?…)".into());
    }
    let path = uri.path();
    if path.contains("//") || path.split('/').any(|s| s == "." || s == "..") {
        return Err("must not have an empty, \".\" or \"..\" path segment".into());
    }
    Ok(uri)
}

/// A scope name: non-empty, no whitespace (scopes are space-separated in
/// headers and in the database).
pub(crate) fn scope(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{s:?} must not contain whitespace"));
    }
    Ok(())
}

/// A CIDR (`10.0.0.0/8`, `fd00::/8`) or a bare address (→ /32 or /128).
/// Host bits are cleared: `10.1.2.3/8` means `10.0.0.0/8`.
pub(crate) fn ip_net(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "{s:?} is not an IP address or CIDR such as 10.0.0.0/8, 192.168.1.7 or ::1"
    ))
}

/// A header that carries a raw token: a valid lowercase name without `_`,
/// and not a header with another meaning.
pub(crate) fn token_header(s: &str) -> Result<HeaderName, String> {
    let lower = s.to_ascii_lowercase();
    if lower.contains('_') {
        return Err(format!(
            "{s:?} contains \"_\": request headers whose name contains \"_\" are dropped \
             (as nginx does), so it could never carry a token; use \"-\""
        ));
    }
    let name = HeaderName::from_bytes(lower.as_bytes())
        .map_err(|_| format!("{s:?} is not a valid header name"))?;
    if name == http::header::AUTHORIZATION {
        return Err("use auth.schemes for the Authorization header".into());
    }
    const RESERVED: &[&str] = &[
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-type",
        "cookie",
        "forwarded",
    ];
    if RESERVED.contains(&name.as_str())
        || name.as_str().starts_with("x-forwarded-")
        || name.as_str().starts_with("x-tollgate-")
    {
        return Err(format!(
            "{:?} has another meaning and cannot carry a token",
            name.as_str()
        ));
    }
    Ok(name)
}

/// An `Authorization` scheme, lowercased: an RFC 9110 token.
pub(crate) fn scheme(s: &str) -> Result<String, String> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if s.is_empty() || !s.chars().all(tchar) {
        return Err(format!(
            "{s:?} is not an Authorization scheme such as bearer or token"
        ));
    }
    Ok(s.to_ascii_lowercase())
}

/// `sessions.cookie`: a cookie name (an RFC 6265 token of letters, digits
/// and `-_.`), at most 64 characters.
pub(crate) fn cookie_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "{s:?} is not a cookie name; use letters, digits, \"-\", \"_\" and \".\""
        ));
    }
    Ok(())
}

/// `realm` of `WWW-Authenticate`: goes inside a quoted string unescaped.
pub(crate) fn realm(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.chars()
        .any(|c| c == '"' || c == '\\' || c.is_control() || !c.is_ascii())
    {
        return Err("must be printable ASCII without '\"' or '\\'".into());
    }
    Ok(())
}

/// A `tracing` filter such as `info` or `info,tollgate=debug`. A bare word
/// must be a level: `infoo` would otherwise be read as a target name and
/// silence every log line.
pub(crate) fn log_level(s: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    if s.trim().is_empty() {
        return Err("is empty; use a level such as info".into());
    }
    for d in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !d.contains(['=', '[', '{', ':']);
        if bare && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d)) {
            return Err(format!(
                "{d:?} is not a level (trace, debug, info, warn, error, off); \
                 write target=level to filter by target"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| ())
        .map_err(|e| format!("{s:?} is not a valid log filter: {e}"))
}

/// A duration; zero is refused unless `zero_ok`.
pub(crate) fn duration(s: &str, zero_ok: bool) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() && !zero_ok {
        return Err(format!("{s:?} must be greater than zero"));
    }
    Ok(d)
}

/// A rate at `path`; records every problem in `report`.
pub(crate) fn rate(report: &mut Report<'_>, path: &str, spec: &RateSpec) -> Option<Rate> {
    let requests = NonZeroU32::new(spec.requests);
    if requests.is_none() {
        report.error(&format!("{path}.requests"), "must be at least 1");
    }
    let burst = NonZeroU32::new(spec.burst.unwrap_or(spec.requests));
    if spec.burst.is_some() && burst.is_none() {
        report.error(&format!("{path}.burst"), "must be at least 1");
    }
    let per = report.check(&format!("{path}.per"), duration(&spec.per, false));
    let rate = Rate {
        requests: requests?,
        per: per?,
        burst: burst?,
    };
    if rate.replenish_interval().is_zero() {
        report.error(
            &format!("{path}.requests"),
            "is more than one request per nanosecond; use a longer per",
        );
        return None;
    }
    Some(rate)
}

/// Writes `d` in the largest unit that represents it exactly (`1m`, `1500ms`).
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms > 0 && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_follow_the_spec_rules() {
        for ok in ["/", "/api/v1", "/a-b_c.d~e/x:y@z", "/v1.2"] {
            assert_eq!(prefix(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            prefix("/api/v1/"),
            Err("\"/api/v1/\" must not end with \"/\"".into())
        );
        assert_eq!(prefix("api"), Err("\"api\" must start with \"/\"".into()));
        assert_eq!(prefix(""), Err("\"\" must start with \"/\"".into()));
        assert!(prefix("/a//b").unwrap_err().contains("\"//\""));
        assert!(prefix("/a/./b").unwrap_err().contains("segments"));
        assert!(prefix("/a/..").unwrap_err().contains("segments"));
        for bad in ["/a%2e", "/a;b", "/a#b", "/a?b", "/a\\b"] {
            assert!(
                prefix(bad).unwrap_err().contains("must not contain"),
                "{bad}"
            );
        }
        assert!(prefix("/a b").unwrap_err().contains("whitespace"));
        assert!(prefix("/a\u{7}").unwrap_err().contains("control"));
        assert!(prefix("/é").unwrap_err().contains("ASCII"));
    }

    #[test]
    fn upstreams_must_be_absolute_http_urls_without_extras() {
        let u = upstream("http://127.0.0.1:19999").unwrap();
        assert_eq!(u.host(), Some("127.0.0.1"));
        assert!(upstream("https://api.example.com/base").is_ok());
        assert!(upstream("http://[::1]:8080/").is_ok());
        for bad in [
            "127.0.0.1:19999",
            "/relative",
            "ftp://h/",
            "http://user:pw@h/",
            "http://h/?q=1",
            "http://h/#frag",
            "http://:80/",
            "http://h:99999/",
            "http://h:0/",
            "http://h/a/../b",
            "not a url",
        ] {
            assert!(upstream(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upstream_errors_never_echo_the_url() {
        let e = upstream("http://user:hunter2@h/").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn bare_addresses_become_host_networks() {
        assert_eq!(ip_net("192.168.1.7").unwrap().to_string(), "192.168.1.7/32");
        assert_eq!(ip_net("::1").unwrap().to_string(), "::1/128");
        assert_eq!(ip_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(ip_net("10.0.0.0/33").is_err());
        assert!(ip_net("localhost").is_err());
    }

    #[test]
    fn token_headers_are_lowercased_and_underscores_refused() {
        assert_eq!(token_header("XC-Token").unwrap().as_str(), "xc-token");
        assert!(token_header("xc_token").unwrap_err().contains("dropped"));
        assert!(token_header("Authorization")
            .unwrap_err()
            .contains("auth.schemes"));
        assert!(token_header("x-forwarded-for").is_err());
        assert!(token_header("bad header").is_err());
    }

    #[test]
    fn schemes_are_lowercased_tokens() {
        assert_eq!(scheme("Bearer").unwrap(), "bearer");
        assert!(scheme("two words").is_err());
        assert!(scheme("").is_err());
    }

    #[test]
    fn log_levels_refuse_typos_that_parse_as_targets() {
        assert!(log_level("info").is_ok());
        assert!(log_level("WARN,tollgate=debug").is_ok());
        assert!(log_level("infoo").unwrap_err().contains("not a level"));
        assert!(log_level("").is_err());
        assert!(log_level("tollgate=loud").is_err());
    }

    #[test]
    fn scopes_refuse_whitespace_and_empty() {
        assert!(scope("scope:all").is_ok());
        assert!(scope("").is_err());
        assert!(scope("a b").is_err());
    }

    #[test]
    fn realm_refuses_quotes() {
        assert!(realm("tollgate").is_ok());
        assert!(realm("a\"b").is_err());
        assert!(realm("").is_err());
    }

    #[test]
    fn durations_format_in_the_largest_exact_unit() {
        for s in ["250ms", "5s", "1m", "12h", "30d", "1500ms", "90s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
        assert_eq!(format_duration(Duration::ZERO), "0ms");
    }

    #[test]
    fn zero_durations_are_refused_unless_allowed() {
        assert!(duration("0s", false).is_err());
        assert_eq!(duration("0s", true), Ok(Duration::ZERO));
    }
}
