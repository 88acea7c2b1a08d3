//! `walcast slot create|drop|list|status`.

use std::process::ExitCode;

use clap::Subcommand;

use crate::catalog::{Catalog, SlotInfo};
use crate::config::{check_slot_name, Config};
use crate::wal::ReplicationClient;

#[derive(Debug, Subcommand)]
pub enum SlotCommand {
    /// Create the configured (or named) logical slot with the pgoutput plugin.
    /// For a temporary slot that vanishes with its session, use `tail --temporary`.
    Create {
        /// Slot name [default: postgres.slot]
        name: Option<String>,
        /// Succeed when the slot already exists.
        #[arg(long)]
        if_not_exists: bool,
    },
    /// Drop a slot. Its retained WAL is released; changes not yet read are lost.
    Drop {
        /// Slot name [default: postgres.slot]
        name: Option<String>,
        /// Succeed when the slot does not exist.
        #[arg(long)]
        if_exists: bool,
        /// Wait for an active slot to be released instead of failing.
        #[arg(long)]
        wait: bool,
    },
    /// List every replication slot of the server.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one slot: active pid, restart and confirmed-flush LSNs, retained
    /// WAL bytes, wal_status.
    Status {
        /// Slot name [default: postgres.slot]
        name: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config: &Config, command: SlotCommand) -> anyhow::Result<ExitCode> {
    let pg = config.pg_config();
    let name_or_default = |name: Option<String>| -> anyhow::Result<String> {
        let name = name.unwrap_or_else(|| config.postgres.slot.clone());
        check_slot_name(&name).map_err(anyhow::Error::msg)?;
        Ok(name)
    };
    match command {
        SlotCommand::Create {
            name,
            if_not_exists,
        } => {
            let name = name_or_default(name)?;
            let catalog = Catalog::connect(&pg).await?;
            super::check::require_logical(&catalog).await?;
            if catalog.slot(&name).await?.is_some() {
                if if_not_exists {
                    println!("slot {name} already exists");
                    return Ok(ExitCode::SUCCESS);
                }
                anyhow::bail!(
                    "replication slot {name:?} already exists (use --if-not-exists to accept that)"
                );
            }
            let mut client =
                ReplicationClient::connect(&pg, &config.postgres.application_name).await?;
            let created = client.create_slot(&name, false).await?;
            println!(
                "created slot {} (pgoutput) at {}",
                created.slot_name, created.consistent_point
            );
            Ok(ExitCode::SUCCESS)
        }
        SlotCommand::Drop {
            name,
            if_exists,
            wait,
        } => {
            let name = name_or_default(name)?;
            let catalog = Catalog::connect(&pg).await?;
            if catalog.slot(&name).await?.is_none() {
                if if_exists {
                    println!("slot {name} does not exist");
                    return Ok(ExitCode::SUCCESS);
                }
                anyhow::bail!("replication slot {name:?} does not exist");
            }
            let mut client =
                ReplicationClient::connect(&pg, &config.postgres.application_name).await?;
            client.drop_slot(&name, wait).await.map_err(|e| {
                if e.code() == Some("55006") {
                    anyhow::anyhow!("{e}: the slot is in use; stop its reader or pass --wait")
                } else {
                    anyhow::Error::new(e)
                }
            })?;
            println!("dropped slot {name}");
            Ok(ExitCode::SUCCESS)
        }
        SlotCommand::List { json } => {
            let catalog = Catalog::connect(&pg).await?;
            let slots = catalog.slots().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&slots)?);
            } else {
                print_table(&slots);
            }
            Ok(ExitCode::SUCCESS)
        }
        SlotCommand::Status { name, json } => {
            let name = name_or_default(name)?;
            let catalog = Catalog::connect(&pg).await?;
            let Some(slot) = catalog.slot(&name).await? else {
                anyhow::bail!(
                    "replication slot {name:?} does not exist; create it with `walcast slot create`"
                );
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&slot)?);
            } else {
                println!("{slot}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_table(slots: &[SlotInfo]) {
    if slots.is_empty() {
        println!("no replication slots");
        return;
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<[String; 8]> = slots
        .iter()
        .map(|s| {
            [
                s.slot_name.clone(),
                dash(&s.plugin),
                dash(&s.database),
                match (s.active, s.active_pid) {
                    (true, Some(pid)) => format!("yes ({pid})"),
                    (true, None) => "yes".into(),
                    (false, _) => "no".into(),
                },
                dash(&s.restart_lsn),
                dash(&s.confirmed_flush_lsn),
                s.retained_wal_bytes
                    .map(crate::catalog::human_bytes)
                    .unwrap_or_else(|| "-".into()),
                dash(&s.wal_status),
            ]
        })
        .collect();
    let header = [
        "SLOT",
        "PLUGIN",
        "DATABASE",
        "ACTIVE",
        "RESTART_LSN",
        "CONFIRMED_FLUSH",
        "RETAINED",
        "WAL_STATUS",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(header.to_vec()));
    for row in &rows {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
}
