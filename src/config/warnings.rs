//! Findings that are not errors but that an operator should read before
//! serving: `tollgate check` prints them as `warning: …` and exits 0.
//!
//! Invariant: pure; looks only at validated settings.

use super::RouteSettings;

/// A warning for each `anonymous: read` route whose prefix is `/` or
/// covers other, protected routes' prefixes: the longest prefix wins, so
/// those stay protected, but every other path under the anonymous prefix
/// is readable by anyone (with `/`: everything the upstream serves that no
/// route claims, such as a config file or a dashboard's data).
pub(super) fn anonymous_exposure(routes: &[RouteSettings]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, open) in routes.iter().enumerate() {
        if !open.anonymous_read {
            continue;
        }
        let covered: Vec<&str> = routes
            .iter()
            .filter(|r| !r.anonymous_read && under(&r.prefix, &open.prefix))
            .map(|r| r.prefix.as_str())
            .collect();
        if open.prefix != "/" && covered.is_empty() {
            continue;
        }
        let except = if covered.is_empty() {
            String::new()
        } else {
            format!(", everything except {}", covered.join(", "))
        };
        out.push(format!(
            "routes[{i}]: anonymous: read on prefix {:?} lets anyone read, without a token, every path \
             of {} under it that no protected route claims{except} (e.g. {}/index.html, a config \
             file, any other API); a longer protected prefix wins only for its own paths. For a \
             browser UI use browser: true with sessions instead",
            open.prefix,
            open.upstream,
            open.prefix.trim_end_matches('/'),
        ));
    }
    out
}

/// Whether `prefix` is a longer prefix inside `outer` on a segment boundary.
fn under(prefix: &str, outer: &str) -> bool {
    if prefix == outer {
        return false;
    }
    outer == "/"
        || prefix
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_under_another_only_on_a_segment_boundary() {
        assert!(under("/api/v1", "/"));
        assert!(under("/api/v1", "/api"));
        assert!(!under("/api10", "/api"));
        assert!(!under("/api", "/api"));
    }
}
