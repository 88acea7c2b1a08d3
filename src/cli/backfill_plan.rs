//! What `walcast backfill` reads from one table: the columns pgoutput would
//! send, the primary key, and the SQL of each chunk (key ranges, `FOR
//! SHARE`, every value in its text form). Catalog queries and SQL text
//! only; running it is `backfill.rs`.

use anyhow::bail;
use tokio_postgres::Client;

use crate::capture::backfill::WatermarkColumn;
use crate::catalog::quote_identifier;
use crate::config::TableName;

/// What to read from one table.
pub(super) struct Plan {
    pub table: TableName,
    pub columns: Vec<WatermarkColumn>,
    /// Indexes into `columns` of the primary key, in key order, with the
    /// SQL type to cast a key literal to.
    pub key: Vec<(usize, String)>,
    pub filter: Option<String>,
}

impl Plan {
    pub async fn load(
        client: &Client,
        table: &TableName,
        filter: Option<String>,
    ) -> anyhow::Result<Plan> {
        let oid: Option<u32> = client
            .query_one("SELECT to_regclass($1)::oid", &[&table.quoted()])
            .await?
            .get(0);
        let Some(oid) = oid else {
            bail!("table {table} does not exist");
        };
        // Every column pgoutput would send: not dropped, not generated.
        let rows = client
            .query(
                "SELECT a.attname::text, a.atttypid, t.typname::text, \
                        format_type(a.atttypid, a.atttypmod), \
                        array_position(i.indkey::int2[], a.attnum) \
                 FROM pg_attribute a \
                 JOIN pg_type t ON t.oid = a.atttypid \
                 LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                   AND a.attgenerated = '' \
                 ORDER BY a.attnum",
                &[&oid],
            )
            .await?;
        let mut columns = Vec::with_capacity(rows.len());
        let mut key: Vec<(i32, usize, String)> = Vec::new();
        for (index, row) in rows.iter().enumerate() {
            let position: Option<i32> = row.get(4);
            if let Some(position) = position {
                key.push((position, index, row.get(3)));
            }
            columns.push(WatermarkColumn {
                name: row.get(0),
                type_oid: row.get(1),
                type_name: row.get(2),
                key: position.is_some(),
            });
        }
        if key.is_empty() {
            bail!(
                "{table} has no primary key: backfill reads it in primary-key ranges \
                 (ALTER TABLE {} ADD PRIMARY KEY (…))",
                table.quoted()
            );
        }
        key.sort();
        Ok(Plan {
            table: table.clone(),
            columns,
            key: key.into_iter().map(|(_, index, ty)| (index, ty)).collect(),
            filter,
        })
    }

    /// The chunk after `after` (the last key read, as text), `limit` rows,
    /// locked `FOR SHARE`, every value in its text form.
    pub fn chunk_sql(&self, after: Option<&[String]>, limit: u32) -> String {
        let key_columns: Vec<String> = self
            .key
            .iter()
            .map(|(index, _)| quote_identifier(&self.columns[*index].name))
            .collect();
        let mut conditions = Vec::new();
        if let Some(filter) = &self.filter {
            conditions.push(format!("({filter})"));
        }
        if let Some(after) = after {
            let literals: Vec<String> = self
                .key
                .iter()
                .zip(after)
                .map(|((_, ty), value)| format!("{}::{ty}", quote_literal(value)))
                .collect();
            conditions.push(format!(
                "({}) > ({})",
                key_columns.join(", "),
                literals.join(", ")
            ));
        }
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|column| quote_identifier(&column.name))
            .collect();
        let mut sql = format!("SELECT {} FROM {}", columns.join(", "), self.table.quoted());
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(
            " ORDER BY {} LIMIT {limit} FOR SHARE",
            key_columns.join(", ")
        ));
        sql
    }

    pub fn count_sql(&self) -> String {
        let mut sql = format!("SELECT count(*) FROM {}", self.table.quoted());
        if let Some(filter) = &self.filter {
            sql.push_str(&format!(" WHERE ({filter})"));
        }
        sql
    }
}

/// An SQL string literal that reads the same whatever
/// `standard_conforming_strings` says.
fn quote_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(filter: Option<&str>) -> Plan {
        let column = |name: &str, key| WatermarkColumn {
            name: name.into(),
            type_oid: 25,
            type_name: "text".into(),
            key,
        };
        Plan {
            table: TableName::parse("shop.line items").unwrap(),
            columns: vec![
                column("order", true),
                column("note", false),
                column("n", true),
            ],
            key: vec![(0, "text".into()), (2, "integer".into())],
            filter: filter.map(str::to_owned),
        }
    }

    #[test]
    fn chunks_follow_the_primary_key() {
        assert_eq!(
            plan(None).chunk_sql(None, 500),
            r#"SELECT "order", "note", "n" FROM "shop"."line items" ORDER BY "order", "n" LIMIT 500 FOR SHARE"#
        );
        let after = ["it's \\ 1".to_owned(), "7".to_owned()];
        assert_eq!(
            plan(Some("note <> 'x'")).chunk_sql(Some(&after), 10),
            r#"SELECT "order", "note", "n" FROM "shop"."line items" WHERE (note <> 'x') AND ("order", "n") > (E'it''s \\ 1'::text, E'7'::integer) ORDER BY "order", "n" LIMIT 10 FOR SHARE"#
        );
        assert_eq!(
            plan(Some("n > 1")).count_sql(),
            r#"SELECT count(*) FROM "shop"."line items" WHERE (n > 1)"#
        );
    }
}
