//! The key-path → line index of a YAML document, built from parser events
//! before serde sees the text.
//!
//! serde reports only the first error and no lines for problems found
//! after deserialisation; this index lets every later check name the line
//! of `routes[1].prefix`. It is also the gate against hostile YAML: the pass
//! refuses aliases (so nothing is ever expanded, whatever the nesting of
//! anchors), nesting deeper than [`MAX_DEPTH`], duplicate keys, complex keys
//! and more than one document. Invariant: the pass is iterative and its
//! memory is linear in the size of the text.

use std::collections::{HashMap, HashSet};

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span};

/// Deepest nesting of mappings and sequences accepted. Tollgate's files
/// nest four levels at most.
pub(crate) const MAX_DEPTH: usize = 32;

/// A problem found while indexing: the YAML is malformed or refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpanError {
    pub line: Option<usize>,
    /// Key path of the offending node; empty where none applies.
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    /// 1-based line of the key (map entries) or of the node (list items).
    line: usize,
    /// The value is an untagged plain scalar spelled exactly `true` or
    /// `false` (serde_norway also accepts `True`, `FALSE` and `!!bool`).
    strict_bool: bool,
}

/// Lines of every key path in one document.
#[derive(Debug, Default)]
pub(crate) struct Spans {
    nodes: HashMap<String, Node>,
    /// The document is empty, only comments, or a lone null.
    empty: bool,
}

impl Spans {
    /// The line of `path`, or of its nearest ancestor that has one.
    pub(crate) fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(n) = self.nodes.get(p) {
                return Some(n.line);
            }
            if p.is_empty() {
                return None;
            }
            p = parent(p);
        }
    }

    /// Whether the value at `path`, if present, is written as an unquoted
    /// `true` or `false`. Absent paths count as strict.
    pub(crate) fn is_strict_bool(&self, path: &str) -> bool {
        self.nodes.get(path).is_none_or(|n| n.strict_bool)
    }

    /// The document holds nothing (empty, comments only, or null).
    pub(crate) fn is_empty(&self) -> bool {
        self.empty
    }
}

/// `routes[1].prefix` → `routes[1]` → `routes` → ``.
pub(crate) fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

enum Frame {
    Map {
        base: usize,
        /// Between a key and its value.
        pending: bool,
        keys: HashSet<String>,
    },
    Seq {
        base: usize,
        next: usize,
    },
}

/// Indexes `text`; refuses what the module doc lists.
pub(crate) fn index(text: &str) -> Result<Spans, SpanError> {
    let mut spans = Spans::default();
    let mut frames: Vec<Frame> = Vec::new();
    let mut path = String::new();
    let mut documents = 0usize;
    let mut root_seen = false;

    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(scan_error)?;
        let line = span.start.line();
        match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(err(line, "", "only one YAML document per file is allowed"));
                }
            }
            Event::Alias(_) => {
                return Err(err(
                    line,
                    &path,
                    "YAML aliases (*name) are not supported; write the value out",
                ));
            }
            Event::Scalar(value, style, _, tag) => {
                let strict_bool = tag.is_none()
                    && style == ScalarStyle::Plain
                    && (value == "true" || value == "false");
                match frames.last_mut() {
                    None => {
                        root_seen = true;
                        let null = style == ScalarStyle::Plain
                            && matches!(&*value, "" | "~" | "null" | "Null" | "NULL");
                        spans.empty = null;
                    }
                    Some(Frame::Map {
                        base,
                        pending,
                        keys,
                    }) => {
                        if *pending {
                            if let Some(n) = spans.nodes.get_mut(&path) {
                                n.strict_bool = strict_bool;
                            }
                            path.truncate(*base);
                            *pending = false;
                        } else {
                            if !keys.insert(value.to_string()) {
                                push_key(&mut path, &value);
                                return Err(err(line, &path, "duplicate key"));
                            }
                            push_key(&mut path, &value);
                            spans.nodes.entry(path.clone()).or_insert(Node {
                                line,
                                strict_bool: false,
                            });
                            *pending = true;
                        }
                    }
                    Some(Frame::Seq { base, next }) => {
                        push_index(&mut path, *next);
                        spans.nodes.insert(path.clone(), Node { line, strict_bool });
                        path.truncate(*base);
                        *next += 1;
                    }
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if frames.len() >= MAX_DEPTH {
                    return Err(err(
                        line,
                        &path,
                        format!("nested deeper than {MAX_DEPTH} levels"),
                    ));
                }
                match frames.last_mut() {
                    None => root_seen = true,
                    Some(Frame::Map { pending, .. }) => {
                        if !*pending {
                            return Err(err(
                                line,
                                &path,
                                "a mapping or list as a key is not supported",
                            ));
                        }
                    }
                    Some(Frame::Seq { next, .. }) => {
                        push_index(&mut path, *next);
                        spans.nodes.insert(
                            path.clone(),
                            Node {
                                line: container_line(&span),
                                strict_bool: false,
                            },
                        );
                        *next += 1;
                    }
                }
                let base = path.len();
                frames.push(if matches!(event, Event::MappingStart(..)) {
                    Frame::Map {
                        base,
                        pending: false,
                        keys: HashSet::new(),
                    }
                } else {
                    Frame::Seq { base, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                frames.pop();
                match frames.last_mut() {
                    Some(Frame::Map { base, pending, .. }) => {
                        path.truncate(*base);
                        *pending = false;
                    }
                    Some(Frame::Seq { base, .. }) => path.truncate(*base),
                    None => path.clear(),
                }
            }
        }
    }
    if !root_seen {
        spans.empty = true;
    }
    Ok(spans)
}

fn container_line(span: &Span) -> usize {
    span.start.line()
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn push_index(path: &mut String, i: usize) {
    use std::fmt::Write;
    let _ = write!(path, "[{i}]");
}

fn scan_error(e: ScanError) -> SpanError {
    // The scanner's own flow-nesting cap (255) says this; keep one wording.
    let message = if e.info() == "recursion limit exceeded" {
        format!("nested deeper than {MAX_DEPTH} levels")
    } else {
        format!("invalid YAML: {}", e.info())
    };
    SpanError {
        line: Some(e.marker().line()),
        path: String::new(),
        message,
    }
}

fn err(line: usize, path: &str, message: impl Into<String>) -> SpanError {
    SpanError {
        line: Some(line),
        path: path.to_string(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
listen:
  - addr: 0.0.0.0:8080
  - addr: 0.0.0.0:8443
    tls:
      cert: c.pem
log:
  access: true
  quoted: \"true\"
  capital: True
routes:
  - prefix: /a
    scopes: [x, y]
";

    #[test]
    fn key_paths_map_to_the_line_of_their_key() {
        let s = index(SAMPLE).unwrap();
        assert_eq!(s.line("listen"), Some(1));
        assert_eq!(s.line("listen[0].addr"), Some(2));
        assert_eq!(s.line("listen[1]"), Some(3));
        assert_eq!(s.line("listen[1].tls.cert"), Some(5));
        assert_eq!(s.line("routes[0].prefix"), Some(11));
        assert_eq!(s.line("routes[0].scopes[1]"), Some(12));
        assert!(!s.is_empty());
    }

    #[test]
    fn unknown_paths_fall_back_to_the_nearest_ancestor() {
        let s = index(SAMPLE).unwrap();
        assert_eq!(s.line("listen[1].tls.key"), Some(4));
        assert_eq!(s.line("routes[0].nothing[3].deeper"), Some(11));
        assert_eq!(s.line("absent"), None);
    }

    #[test]
    fn only_unquoted_lowercase_booleans_are_strict() {
        let s = index(SAMPLE).unwrap();
        assert!(s.is_strict_bool("log.access"));
        assert!(!s.is_strict_bool("log.quoted"));
        assert!(!s.is_strict_bool("log.capital"));
        assert!(s.is_strict_bool("log.absent"));
    }

    #[test]
    fn aliases_are_refused_with_their_line() {
        let e = index("a: &x 1\nb: *x\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(e.path, "b");
        assert!(e.message.contains("aliases"), "{}", e.message);
    }

    #[test]
    fn deep_flow_nesting_is_refused_without_recursion() {
        let text = "[".repeat(10_000);
        let e = index(&text).unwrap_err();
        assert!(e.message.contains("nested deeper"), "{}", e.message);
        let text = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(index(&text).is_err());
    }

    #[test]
    fn deep_block_nesting_is_refused() {
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&" ".repeat(i));
            text.push_str("k:\n");
        }
        let e = index(&text).unwrap_err();
        assert!(e.message.contains("nested deeper"), "{}", e.message);
    }

    #[test]
    fn duplicate_keys_are_refused_at_the_second() {
        let e = index("a: 1\nb:\n  c: 1\n  c: 2\n").unwrap_err();
        assert_eq!((e.line, e.path.as_str()), (Some(4), "b.c"));
    }

    #[test]
    fn a_second_document_is_refused() {
        let e = index("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn complex_keys_are_refused() {
        assert!(index("? [a, b]\n: 1\n").is_err());
    }

    #[test]
    fn empty_and_comment_only_documents_are_empty() {
        assert!(index("").unwrap().is_empty());
        assert!(index("# nothing\n\n").unwrap().is_empty());
        assert!(index("---\n").unwrap().is_empty());
        assert!(index("~\n").unwrap().is_empty());
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let e = index("a: 1\nb: [\n").unwrap_err();
        assert!(e.line.is_some());
        assert!(e.message.starts_with("invalid YAML"));
    }

    #[test]
    fn parent_strips_one_component() {
        assert_eq!(parent("routes[1].prefix"), "routes[1]");
        assert_eq!(parent("routes[1]"), "routes");
        assert_eq!(parent("routes"), "");
    }
}
