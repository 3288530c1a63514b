//! `ConfigError`: one problem in a config or token file, as
//! `<file>:<line>: <key path>: <message>`.

use std::fmt;
use std::path::Path;

/// One problem, naming where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as named on the command line or in the config.
    pub file: String,
    /// 1-based line, where one applies.
    pub line: Option<usize>,
    /// Key path such as `routes[1].prefix`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(
        file: &Path,
        line: Option<usize>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.display().to_string(),
            line,
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", OneLine(&self.file))?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", OneLine(&self.path))?;
        }
        write!(f, ": {}", OneLine(&self.message))
    }
}

/// Text with its control characters escaped (`\n`, `\t`, `\u{1b}`), so
/// an error stays one line (the contract, §1) even when a key in the file holds a
/// line break, as a multi-line plain or quoted YAML key can.
struct OneLine<'a>(&'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// Every problem found in one load, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn one(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_follows_file_line_path_message() {
        let e = ConfigError::new(
            Path::new("config/gateway.yaml"),
            Some(31),
            "routes[1].prefix",
            "\"/api/v1/\" must not end with \"/\"",
        );
        assert_eq!(
            e.to_string(),
            "config/gateway.yaml:31: routes[1].prefix: \"/api/v1/\" must not end with \"/\""
        );
        let e = ConfigError::new(Path::new("g.yaml"), None, "routes", "x");
        assert_eq!(e.to_string(), "g.yaml: routes: x");
    }

    #[test]
    fn a_key_with_a_line_break_stays_on_one_line() {
        let e = ConfigError::new(
            Path::new("g.yaml"),
            Some(6),
            "[0].a:_lim\n\n08 scopes[0].te_limit",
            "nested deeper than 32 levels\r\u{1b}",
        );
        assert_eq!(
            e.to_string(),
            r"g.yaml:6: [0].a:_lim\n\n08 scopes[0].te_limit: nested deeper than 32 levels\r\u{1b}"
        );
    }
}
