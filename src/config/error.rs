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
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
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
}
