//! The YAML front end shared by the gateway config and the token file:
//! size cap → span index (which refuses hostile documents) → serde schema
//! structs, and [`Report`], which turns findings into located
//! [`ConfigError`]s.
//!
//! Invariant: no error message built here quotes a scalar from the file
//! (a token file's values may be secrets); messages name keys, kinds and
//! the fix.

use std::path::Path;

use serde::de::DeserializeOwned;

use super::spans::{self, Spans};
use super::{ConfigError, ConfigErrors};

/// Parses `text` into `T`, refusing files over `max_bytes`, aliases,
/// nesting deeper than [`spans::MAX_DEPTH`], duplicate keys, unknown keys
/// and wrong types; an empty document is refused with `empty_message`.
/// Returns the span index for later checks.
pub(crate) fn parse<T: DeserializeOwned>(
    file: &Path,
    text: &str,
    max_bytes: usize,
    empty_message: &str,
) -> Result<(T, Spans), ConfigErrors> {
    let one = |line, path: &str, message: String| {
        ConfigErrors::one(ConfigError::new(file, line, path, message))
    };
    if text.len() > max_bytes {
        return Err(one(
            None,
            "",
            format!(
                "the file is {} bytes; the limit is {} bytes",
                text.len(),
                max_bytes
            ),
        ));
    }
    let spans = spans::index(text).map_err(|e| one(e.line, &e.path, e.message))?;
    if spans.is_empty() {
        return Err(one(None, "", empty_message.to_string()));
    }
    match serde_norway::from_str::<T>(text) {
        Ok(value) => Ok((value, spans)),
        Err(e) => Err(ConfigErrors::one(serde_error(file, &spans, &e))),
    }
}

/// Maps a serde_norway error onto `<file>:<line>: <key path>: <message>`.
fn serde_error(file: &Path, spans: &Spans, e: &serde_norway::Error) -> ConfigError {
    let mut text = e.to_string();
    let mut line = e.location().map(|l| l.line());
    if let Some(loc) = e.location() {
        let mark = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(i) = text.find(&mark) {
            text.replace_range(i..i + mark.len(), "");
        }
    }
    let (mut path, message) = split_path(&text);
    let message = if let Some(rest) = message.strip_prefix("unknown field `") {
        let (key, allowed) = rest.split_once('`').unwrap_or((rest, ""));
        path = join(&path, key);
        line = spans.line(&path).or(line);
        let allowed: Vec<&str> = allowed.split('`').skip(1).step_by(2).collect();
        if allowed.is_empty() {
            "unknown key; this mapping takes no keys".to_string()
        } else {
            format!("unknown key; allowed keys: {}", allowed.join(", "))
        }
    } else if let Some(rest) = message.strip_prefix("missing field `") {
        let key = rest.trim_end_matches('`');
        line = spans.line(&path).or(line);
        path = join(&path, key);
        "is required".to_string()
    } else if let Some(m) = type_mismatch(&message) {
        line = spans.line(&path).or(line);
        m
    } else {
        message
    };
    ConfigError::new(file, line, path, message)
}

/// `routes[1]: unknown field …` → (`routes[1]`, `unknown field …`).
fn split_path(text: &str) -> (String, String) {
    if let Some((head, tail)) = text.split_once(": ") {
        let is_path = !head.is_empty()
            && !head.contains(char::is_whitespace)
            && !head.contains(['`', '"', '\'']);
        if is_path {
            return (head.to_string(), tail.to_string());
        }
    }
    (String::new(), text.to_string())
}

/// `invalid type: string "x", expected u32` → `expected a whole number,
/// found a string` (the value itself is left out: it may be a secret).
fn type_mismatch(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))?;
    let (found, expected) = rest.split_once(", expected ")?;
    let found = match found.split_whitespace().next().unwrap_or("") {
        "string" => "a string",
        "integer" => "a number",
        "floating" => "a number",
        "boolean" => "a boolean",
        "unit" => "null",
        "sequence" => "a list",
        "map" => "a mapping",
        "null" => "null",
        _ => "another kind of value",
    };
    let expected = if expected.starts_with("struct ") || expected == "a map" {
        "a mapping".to_string()
    } else if expected == "a sequence" {
        "a list".to_string()
    } else if expected == "a boolean" {
        "true or false (unquoted)".to_string()
    } else if matches!(expected, "u8" | "u16" | "u32" | "u64" | "usize")
        || (expected.starts_with('u') && expected.contains("integer"))
    {
        "a whole number".to_string()
    } else {
        expected.to_string()
    };
    Some(format!("expected {expected}, found {found}"))
}

/// Appends `key` to a key path (`.` is serde_norway's root).
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() || path == "." {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Collects located problems found after deserialisation.
pub(crate) struct Report<'a> {
    file: &'a Path,
    spans: &'a Spans,
    errors: Vec<ConfigError>,
}

impl<'a> Report<'a> {
    pub(crate) fn new(file: &'a Path, spans: &'a Spans) -> Self {
        Report {
            file,
            spans,
            errors: Vec::new(),
        }
    }

    /// A problem at `path`, on the line of `path` (or its nearest ancestor).
    pub(crate) fn error(&mut self, path: &str, message: impl Into<String>) {
        let line = self.spans.line(path);
        self.errors
            .push(ConfigError::new(self.file, line, path, message));
    }

    /// A problem with no single line (e.g. a duplicate across two entries).
    pub(crate) fn error_unlocated(&mut self, path: &str, message: impl Into<String>) {
        self.errors
            .push(ConfigError::new(self.file, None, path, message));
    }

    /// Records `r`'s error at `path`; passes its value on.
    pub(crate) fn check<T>(&mut self, path: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|m| self.error(path, m)).ok()
    }

    /// A boolean that serde accepted, refused unless written as an unquoted
    /// `true` or `false` (serde_norway also takes `True`, `FALSE`, `!!bool`).
    pub(crate) fn bool(&mut self, path: &str, value: Option<bool>, default: bool) -> bool {
        if value.is_some() && !self.spans.is_strict_bool(path) {
            self.error(path, "expected true or false (unquoted, lowercase)");
        }
        value.unwrap_or(default)
    }

    /// `Ok` if nothing was recorded, else every problem in file order
    /// (those without a line last, in the order found).
    pub(crate) fn finish(self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(());
        }
        let mut errors = self.errors;
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        Err(ConfigErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Root {
        items: Vec<Item>,
        #[serde(default)]
        flag: Option<bool>,
        #[serde(default)]
        count: Option<u32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        name: String,
        #[serde(default)]
        size: Option<u64>,
    }

    fn err(text: &str) -> String {
        parse::<Root>(Path::new("f.yaml"), text, 1 << 20, "the file is empty")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn unknown_key_names_its_path_line_and_the_allowed_keys() {
        let e = err("items:\n  - name: a\n  - name: b\n\n    sise: 3\n");
        assert_eq!(
            e,
            "f.yaml:5: items[1].sise: unknown key; allowed keys: name, size"
        );
    }

    #[test]
    fn missing_key_names_the_key_and_its_mapping_line() {
        let e = err("items:\n  - name: a\n  - size: 3\n");
        assert_eq!(e, "f.yaml:3: items[1].name: is required");
    }

    #[test]
    fn wrong_types_name_the_expected_kind_without_the_value() {
        let e = err("items: []\ncount: seven-secret\n");
        assert_eq!(
            e,
            "f.yaml:2: count: expected a whole number, found a string"
        );
        let e = err("items: []\nflag: no\n");
        assert_eq!(
            e,
            "f.yaml:2: flag: expected true or false (unquoted), found a string"
        );
        let e = err("items: []\nflag: \"false\"\n");
        assert!(
            e.starts_with("f.yaml:2: flag: expected true or false"),
            "{e}"
        );
        let e = err("items: [x]\n");
        assert_eq!(e, "f.yaml:1: items[0]: expected a mapping, found a string");
        let e = err("items: {}\n");
        assert_eq!(e, "f.yaml:1: items: expected a list, found a mapping");
    }

    #[test]
    fn oversized_files_are_refused_before_parsing() {
        let text = format!("items: []\n#{}\n", "x".repeat(100));
        let e = parse::<Root>(Path::new("f.yaml"), &text, 50, "").unwrap_err();
        assert!(e.to_string().contains("the limit is 50 bytes"), "{e}");
    }

    #[test]
    fn empty_files_are_refused() {
        assert_eq!(err("# nothing\n"), "f.yaml: the file is empty");
    }

    #[test]
    fn capitalised_booleans_pass_serde_but_not_the_report() {
        let text = "items: []\nflag: True\n";
        let (root, spans) =
            parse::<Root>(Path::new("f.yaml"), text, 1 << 20, "the file is empty").unwrap();
        let mut report = Report::new(Path::new("f.yaml"), &spans);
        assert!(report.bool("flag", root.flag, false));
        assert_eq!(
            report.finish().unwrap_err().to_string(),
            "f.yaml:2: flag: expected true or false (unquoted, lowercase)"
        );
    }

    #[test]
    fn report_sorts_by_line_with_unlocated_errors_last() {
        let spans = spans::index("a: 1\nb: 2\n").unwrap();
        let mut r = Report::new(Path::new("f.yaml"), &spans);
        r.error_unlocated("a", "dup");
        r.error("b", "two");
        r.error("a", "one");
        let lines: Vec<Option<usize>> = r.finish().unwrap_err().0.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![Some(1), Some(2), None]);
    }
}
