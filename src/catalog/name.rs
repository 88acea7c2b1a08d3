//! Schema-qualified table names and SQL identifier quoting: parsing what
//! an operator writes (`schema.table`, `table`) and quoting it for SQL.
//!
//! It checks only what Postgres would refuse (empty, over 63 bytes, a `.`
//! or NUL inside one identifier); whether the table exists is the
//! catalog's question.

use std::fmt;

/// A schema-qualified table name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// Parses `schema.table` or `table` (schema `public`).
    pub fn parse(text: &str) -> Result<TableName, String> {
        let (schema, table) = match text.split_once('.') {
            Some((schema, table)) => (schema, table),
            None => ("public", text),
        };
        check_identifier(schema).map_err(|m| format!("{text:?}: schema {m}"))?;
        check_identifier(table).map_err(|m| format!("{text:?}: table {m}"))?;
        Ok(TableName {
            schema: schema.to_owned(),
            table: table.to_owned(),
        })
    }

    /// `"schema"."table"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!(
            "{}.{}",
            quote_identifier(&self.schema),
            quote_identifier(&self.table)
        )
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Quotes an SQL identifier (doubling embedded quotes).
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether `name` can be one Postgres identifier, or what is wrong with it.
pub(crate) fn check_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is empty".into());
    }
    if name.len() > 63 {
        return Err(format!("name {name:?} is longer than 63 bytes"));
    }
    if name.contains('\0') || name.contains('.') {
        return Err(format!("name {name:?} contains '.' or a NUL byte"));
    }
    Ok(())
}
