//! `walcast setup`: schema, publication and slot, idempotently.

use std::process::ExitCode;

use clap::Args;

use crate::catalog::Catalog;
use crate::config::{Config, TableName};
use crate::wal::ReplicationClient;

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Do not apply the shipped orders schema (sql/schema.sql).
    #[arg(long)]
    skip_schema: bool,
    /// Also insert the sample orders (sql/sample_data.sql) into an empty table.
    #[arg(long)]
    sample_data: bool,
    /// Do not create the replication slot.
    #[arg(long)]
    no_slot: bool,
}

pub async fn run(config: &Config, args: SetupArgs) -> anyhow::Result<ExitCode> {
    let pg = config.pg_config();
    let catalog = Catalog::connect(&pg).await?;
    let orders = TableName {
        schema: "public".into(),
        table: "orders".into(),
    };
    // The shipped schema defines public.orders only; applying it to a
    // database whose captured tables are others would add a stray table.
    if !args.skip_schema && config.tables().contains(&orders) {
        catalog.apply_schema(args.sample_data).await?;
        println!("schema applied (public.orders)");
    }
    let added = catalog
        .ensure_publication(&config.postgres.publication, &config.tables())
        .await?;
    if added.is_empty() {
        println!(
            "publication {} already covers the captured tables",
            config.postgres.publication
        );
    } else {
        println!(
            "publication {}: added {}",
            config.postgres.publication,
            added
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !args.no_slot {
        let slot = &config.postgres.slot;
        if catalog.slot(slot).await?.is_some() {
            println!("slot {slot} already exists");
        } else {
            super::check::require_logical(&catalog).await?;
            let mut client =
                ReplicationClient::connect(&pg, &config.postgres.application_name).await?;
            let created = client.create_slot(slot, false).await?;
            println!("created slot {slot} at {}", created.consistent_point);
        }
    }
    Ok(ExitCode::SUCCESS)
}
