//! `${NAME}` and `${NAME:-default}` in string values.
//!
//! Expansion runs on a scalar after YAML has parsed it, so quoting never
//! changes its meaning, and it runs once: a value taken from the
//! environment is not expanded again. Invariant: an unset variable without
//! a default is an error, never an empty string.

/// Expands `${NAME}` / `${NAME:-default}` in `s`, looking names up with
/// `lookup`. `$${` writes a literal `${`; any other `$` is kept as is.
///
/// The default is used when the variable is unset or empty, as in POSIX
/// shells. Errors name the variable and the fix.
pub(crate) fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body_start) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = body_start.find('}') else {
            return Err("unclosed \"${\" (write ${NAME}, or $${ for a literal \"${\")".to_string());
        };
        let body = &body_start[..end];
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        if !is_name(name) {
            return Err(format!(
                "{:?} is not a variable name (letters, digits and _, not starting with a digit)",
                name
            ));
        }
        match (
            lookup(name).filter(|v| !v.is_empty() || default.is_none()),
            default,
        ) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (set it, or write ${{{name}:-default}})"
                ))
            }
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The process environment, for [`expand`].
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn set_variables_are_substituted_anywhere_in_the_value() {
        assert_eq!(
            expand("postgres://${HOST}:5432/x", &env).unwrap(),
            "postgres://db.internal:5432/x"
        );
        assert_eq!(
            expand("${HOST}${HOST}", &env).unwrap(),
            "db.internaldb.internal"
        );
    }

    #[test]
    fn unset_variable_without_default_is_an_error_naming_it() {
        let e = expand("${NOPE}", &env).unwrap_err();
        assert!(e.contains("NOPE is not set"), "{e}");
    }

    #[test]
    fn default_applies_when_unset_or_empty() {
        assert_eq!(expand("${NOPE:-x:y}", &env).unwrap(), "x:y");
        assert_eq!(expand("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(expand("${HOST:-d}", &env).unwrap(), "db.internal");
        assert_eq!(expand("${NOPE:-}", &env).unwrap(), "");
        assert_eq!(expand("${EMPTY}", &env).unwrap(), "");
    }

    #[test]
    fn dollar_without_brace_and_escaped_brace_are_literal() {
        assert_eq!(expand("a$b $", &env).unwrap(), "a$b $");
        assert_eq!(expand("$${HOST}", &env).unwrap(), "${HOST}");
    }

    #[test]
    fn values_from_the_environment_are_not_expanded_again() {
        let env = |n: &str| (n == "A").then(|| "${B}".to_string());
        assert_eq!(expand("${A}", &env).unwrap(), "${B}");
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(expand("${HOST", &env).is_err());
        assert!(expand("${}", &env).is_err());
        assert!(expand("${1X}", &env).is_err());
        assert!(expand("${A B}", &env).is_err());
    }
}
