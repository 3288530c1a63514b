//! The route table: segment-aware longest-prefix matching.
//!
//! A route matches a path that equals its prefix or continues with `/`
//! after it; prefix `/` matches every path; matching is case-sensitive.
//!
//! Invariant: the longest matching prefix wins, whatever the order of the
//! routes in the config. Lookup does no allocation: it probes, from longest
//! to shortest, only the prefix lengths that exist in the table, and only
//! where the path has a segment boundary.

use std::collections::HashMap;

/// Routes keyed by path prefix.
#[derive(Debug, Clone)]
pub struct RouteTable<R> {
    /// Prefix and value, in config order.
    entries: Vec<(String, R)>,
    /// Prefix (other than `/`) → index into `entries`.
    by_prefix: HashMap<Box<str>, usize>,
    /// The distinct lengths of the prefixes in `by_prefix`, longest first.
    lengths: Vec<usize>,
    /// The index of the `/` route, if any.
    root: Option<usize>,
}

impl<R> RouteTable<R> {
    /// Builds the table from `(prefix, value)` pairs in config order.
    ///
    /// Prefixes are expected to be validated and unique already (they start
    /// with `/` and do not end with one, except `/` itself); should a prefix
    /// appear twice anyway, the first one is the one matched.
    pub fn new(routes: Vec<(String, R)>) -> Self {
        let mut by_prefix = HashMap::with_capacity(routes.len());
        let mut lengths = Vec::new();
        let mut root = None;
        for (i, (prefix, _)) in routes.iter().enumerate() {
            if prefix == "/" {
                root.get_or_insert(i);
                continue;
            }
            if by_prefix.contains_key(prefix.as_str()) {
                continue;
            }
            by_prefix.insert(prefix.clone().into_boxed_str(), i);
            if !lengths.contains(&prefix.len()) {
                lengths.push(prefix.len());
            }
        }
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        RouteTable {
            entries: routes,
            by_prefix,
            lengths,
            root,
        }
    }

    /// The value of the longest prefix matching `path`, if any.
    pub fn lookup(&self, path: &str) -> Option<&R> {
        self.lookup_entry(path).map(|(_, r)| r)
    }

    /// Like [`lookup`](Self::lookup), with the matched prefix.
    pub fn lookup_entry(&self, path: &str) -> Option<(&str, &R)> {
        let bytes = path.as_bytes();
        for &len in &self.lengths {
            // `/` is ASCII, so a boundary is also a char boundary.
            let boundary = match bytes.get(len) {
                None => len == bytes.len(),
                Some(&b) => b == b'/',
            };
            if !boundary {
                continue;
            }
            let Some(candidate) = path.get(..len) else {
                continue;
            };
            if let Some(&i) = self.by_prefix.get(candidate) {
                return self.entry(i);
            }
        }
        if path.starts_with('/') {
            return self.root.and_then(|i| self.entry(i));
        }
        None
    }

    fn entry(&self, i: usize) -> Option<(&str, &R)> {
        self.entries.get(i).map(|(p, r)| (p.as_str(), r))
    }

    /// Every route, in config order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &R)> + '_ {
        self.entries.iter().map(|(p, r)| (p.as_str(), r))
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no routes at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(prefixes: &[&str]) -> RouteTable<usize> {
        RouteTable::new(
            prefixes
                .iter()
                .enumerate()
                .map(|(i, p)| (p.to_string(), i))
                .collect(),
        )
    }

    fn matched<'t>(t: &'t RouteTable<usize>, path: &str) -> Option<&'t str> {
        t.lookup_entry(path).map(|(p, _)| p)
    }

    #[test]
    fn prefix_matches_itself_and_continuations_after_a_slash() {
        let t = table(&["/api/v1"]);
        assert_eq!(matched(&t, "/api/v1"), Some("/api/v1"));
        assert_eq!(matched(&t, "/api/v1/"), Some("/api/v1"));
        assert_eq!(matched(&t, "/api/v1/x"), Some("/api/v1"));
        assert_eq!(matched(&t, "/api/v1/x/y"), Some("/api/v1"));
    }

    #[test]
    fn prefix_never_matches_inside_a_segment() {
        let t = table(&["/api/v1"]);
        assert_eq!(matched(&t, "/api/v10"), None);
        assert_eq!(matched(&t, "/api/v1x"), None);
        assert_eq!(matched(&t, "/api/v"), None);
        assert_eq!(matched(&t, "/api"), None);
        assert_eq!(matched(&t, "/"), None);
        assert_eq!(matched(&t, ""), None);
    }

    #[test]
    fn matching_is_case_sensitive() {
        let t = table(&["/api/v1"]);
        assert_eq!(matched(&t, "/API/v1"), None);
        assert_eq!(matched(&t, "/api/V1/x"), None);
    }

    #[test]
    fn root_prefix_matches_everything() {
        let t = table(&["/", "/api"]);
        assert_eq!(matched(&t, "/"), Some("/"));
        assert_eq!(matched(&t, "/x"), Some("/"));
        assert_eq!(matched(&t, "/apix"), Some("/"));
        assert_eq!(matched(&t, "/api"), Some("/api"));
        assert_eq!(matched(&t, "/api/z"), Some("/api"));
    }

    #[test]
    fn longest_prefix_wins_whatever_the_order() {
        let orders: [&[&str]; 3] = [
            &["/api", "/api/v1", "/api/v1/admin", "/"],
            &["/", "/api/v1/admin", "/api/v1", "/api"],
            &["/api/v1", "/", "/api", "/api/v1/admin"],
        ];
        for order in orders {
            let t = table(order);
            assert_eq!(matched(&t, "/api/v1/admin/users"), Some("/api/v1/admin"));
            assert_eq!(matched(&t, "/api/v1/administrator"), Some("/api/v1"));
            assert_eq!(matched(&t, "/api/v1"), Some("/api/v1"));
            assert_eq!(matched(&t, "/api/v2"), Some("/api"));
            assert_eq!(matched(&t, "/other"), Some("/"));
        }
    }

    #[test]
    fn same_length_prefixes_are_told_apart() {
        let t = table(&["/api/v1", "/api/v2", "/web/v1"]);
        assert_eq!(matched(&t, "/api/v2/x"), Some("/api/v2"));
        assert_eq!(matched(&t, "/web/v1"), Some("/web/v1"));
        assert_eq!(matched(&t, "/web/v2"), None);
    }

    #[test]
    fn lookup_returns_the_routes_value() {
        let t = table(&["/a", "/a/b"]);
        assert_eq!(t.lookup("/a/b/c"), Some(&1));
        assert_eq!(t.lookup("/a/c"), Some(&0));
        assert_eq!(t.lookup("/b"), None);
    }

    #[test]
    fn duplicate_prefix_keeps_the_first() {
        let t = table(&["/a", "/a"]);
        assert_eq!(t.lookup("/a"), Some(&0));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn non_ascii_paths_do_not_panic() {
        let t = table(&["/ab", "/a"]);
        assert_eq!(matched(&t, "/\u{e9}x"), None);
        assert_eq!(matched(&t, "/a\u{e9}"), None);
        assert_eq!(matched(&t, "/a/\u{e9}"), Some("/a"));
    }

    #[test]
    fn iter_keeps_config_order() {
        let t = table(&["/z", "/", "/a/b", "/a"]);
        let got: Vec<_> = t.iter().map(|(p, v)| (p.to_owned(), *v)).collect();
        assert_eq!(
            got,
            vec![
                ("/z".to_owned(), 0),
                ("/".to_owned(), 1),
                ("/a/b".to_owned(), 2),
                ("/a".to_owned(), 3)
            ]
        );
        assert!(!t.is_empty());
        assert!(table(&[]).is_empty());
    }
}
