//! Names spliced into SQL or used as Pub/Sub topics: identifiers, tables, topic ids.

use super::{Config, ConfigError};

/// Identifiers are spliced into SQL as names (values never are), so they must be plain.
fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn check_ident(config: &Config, key: &str, value: &str) -> Result<(), ConfigError> {
    if is_ident(value) {
        Ok(())
    } else {
        Err(config.invalid(
            key,
            format!("`{value}` is not a plain identifier (letters, digits, _; not starting with a digit)"),
        ))
    }
}

/// A table may be qualified (`dataset.table`, `project.dataset.table`).
pub(super) fn check_table(config: &Config, key: &str, value: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = value.split('.').collect();
    let ok = parts.len() <= 3
        && parts
            .iter()
            .enumerate()
            .all(|(i, p)| is_ident(p) || (i == 0 && parts.len() == 3 && is_project_id(p)));
    if ok {
        Ok(())
    } else {
        Err(config.invalid(
            key,
            format!(
                "`{value}` is not a table name ([[project.]dataset.]table of plain identifiers)"
            ),
        ))
    }
}

fn is_project_id(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Pub/Sub topic ids: start with a letter, 3–255 of letters, digits, `-_.~+%`.
pub(super) fn check_topic(config: &Config, key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = value.len() >= 3
        && value.len() <= 255
        && value.starts_with(|c: char| c.is_ascii_alphabetic())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
        && !value.to_ascii_lowercase().starts_with("goog");
    if ok {
        Ok(())
    } else {
        Err(config.invalid(
            key,
            format!(
                "`{value}` is not a valid Pub/Sub topic id (3-255 characters, starting with a \
                 letter, of letters, digits and - _ . ~ + %)"
            ),
        ))
    }
}
