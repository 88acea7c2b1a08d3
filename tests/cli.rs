//! The command line as an operator meets it: setup, check, slot management,
//! and one clear error line (never a panic or backtrace) for bad input.

#[path = "support/pgtest.rs"]
mod pgtest;

use std::time::Duration;

use pgtest::{pg_url, replica_url, walcast_command, TestDb};

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(mut cmd: tokio::process::Command) -> Outcome {
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("walcast finished in time")
        .expect("run walcast");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One `error: …` line on stderr, a non-zero exit, no panic.
fn assert_one_clear_error(outcome: &Outcome, expect: &[&str]) {
    assert_ne!(outcome.code, 0, "should fail: {}", outcome.stderr);
    let lines: Vec<&str> = outcome
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one error line, got:\n{}",
        outcome.stderr
    );
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    for needle in expect {
        assert!(
            lines[0].contains(needle),
            "error line should mention {needle:?}: {}",
            lines[0]
        );
    }
    assert!(!outcome.stderr.contains("panicked"));
    assert!(!outcome.stderr.to_lowercase().contains("backtrace"));
}

#[tokio::test]
async fn wrong_password_is_one_clear_error() {
    let url = pg_url().replace("postgres@", "walcast_scram:wrong-password@");
    let mut cmd = walcast_command();
    cmd.args(["tail", "--database-url", &url]);
    let outcome = run(cmd).await;
    assert_one_clear_error(&outcome, &["password authentication failed", "28P01"]);
    assert!(
        !outcome.stderr.contains("wrong-password"),
        "password leaked"
    );
}

#[tokio::test]
async fn missing_slot_says_how_to_create_it() {
    let db = TestDb::create("cli_noslot").await;
    let mut cmd = walcast_command();
    cmd.args([
        "tail",
        "--database-url",
        &db.url,
        "--slot",
        "no_such_slot",
        "--publication",
        &db.publication,
    ]);
    let outcome = run(cmd).await;
    assert_one_clear_error(
        &outcome,
        &["no_such_slot", "does not exist", "walcast slot create"],
    );
}

#[tokio::test]
async fn a_server_without_logical_decoding_is_named_with_the_fix() {
    let mut cmd = walcast_command();
    cmd.args(["tail", "--database-url", &replica_url()]);
    let outcome = run(cmd).await;
    assert_one_clear_error(&outcome, &["wal_level", "logical", "restart"]);

    let mut cmd = walcast_command();
    cmd.args([
        "slot",
        "create",
        "--database-url",
        &replica_url(),
        "x_never",
    ]);
    let outcome = run(cmd).await;
    assert_one_clear_error(&outcome, &["wal_level"]);
}

#[tokio::test]
async fn unknown_config_key_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[postgres]\nslott = \"typo\"\n").unwrap();
    let mut cmd = walcast_command();
    cmd.args(["check", "--config"]).arg(&path);
    let outcome = run(cmd).await;
    assert_one_clear_error(&outcome, &["slott", "bad.toml"]);

    // A misspelt environment variable is named as such, not blamed on a
    // config file (the working directory has none).
    let mut cmd = walcast_command();
    cmd.arg("check").env("WALCAST_POSTGRES_SLOTT", "x");
    let outcome = run(cmd).await;
    assert_one_clear_error(
        &outcome,
        &["environment variable WALCAST_POSTGRES_SLOTT", "`slott`"],
    );
    assert!(
        !outcome.stderr.contains("config file"),
        "{}",
        outcome.stderr
    );

    let mut cmd = walcast_command();
    cmd.args(["check", "--slot", "Bad-Name"]);
    let outcome = run(cmd).await;
    assert_one_clear_error(&outcome, &["postgres.slot", "Bad-Name"]);
}

#[tokio::test]
async fn malformed_lsn_on_the_command_line() {
    let mut cmd = walcast_command();
    cmd.args(["tail", "--from", "not-an-lsn"]);
    let outcome = run(cmd).await;
    assert_one_clear_error(&outcome, &["not-an-lsn", "X/X"]);
    assert_eq!(outcome.code, 2, "usage errors exit 2");

    // Any refused command line: one line, clap's suggestion kept on it.
    let mut cmd = walcast_command();
    cmd.args(["tail", "--form", "0/0"]);
    let outcome = run(cmd).await;
    assert_one_clear_error(&outcome, &["--form", "--from"]);
    assert_eq!(outcome.code, 2);
}

#[tokio::test]
async fn setup_is_idempotent_and_check_passes_after_it() {
    let db = TestDb::create_empty("cli_setup").await;
    for _ in 0..2 {
        let outcome = run(db.walcast(&["setup", "--sample-data"])).await;
        assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    }
    assert_eq!(db.psql("SELECT count(*) FROM orders").await, "5");
    assert_eq!(
        db.psql("SELECT relreplident FROM pg_class WHERE relname = 'orders'")
            .await,
        "f"
    );
    // The trigger keeps updated_at current for psql edits.
    let moved = db
        .psql(
            "WITH before AS (SELECT updated_at FROM orders WHERE id = 1) \
             UPDATE orders SET status = 'shipped' WHERE id = 1 \
             RETURNING updated_at > (SELECT updated_at FROM before)",
        )
        .await;
    assert_eq!(moved, "t");
    // Statuses are constrained.
    let out = tokio::process::Command::new("psql")
        .arg(&db.url)
        .args(["-X", "-c", "UPDATE orders SET status = 'lost' WHERE id = 1"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("orders_status_check"));

    let outcome = run(db.walcast(&["check"])).await;
    assert_eq!(outcome.code, 0, "{}\n{}", outcome.stdout, outcome.stderr);
    assert!(
        outcome.stdout.contains("ok   wal_level is logical"),
        "{}",
        outcome.stdout
    );
    assert!(
        outcome.stdout.contains("REPLICA IDENTITY FULL"),
        "{}",
        outcome.stdout
    );
    assert!(!outcome.stdout.contains("FAIL"), "{}", outcome.stdout);
}

#[tokio::test]
async fn check_names_each_problem_with_its_fix() {
    let db = TestDb::create_empty("cli_check").await;
    db.psql("CREATE TABLE orders (id int, note text); ALTER TABLE orders REPLICA IDENTITY NOTHING")
        .await;
    let outcome = run(db.walcast(&["check"])).await;
    assert_eq!(outcome.code, 1, "{}", outcome.stdout);
    let out = &outcome.stdout;
    assert!(out.contains("FAIL publication"), "{out}");
    assert!(out.contains("CREATE PUBLICATION"), "{out}");
    assert!(out.contains("REPLICA IDENTITY NOTHING"), "{out}");
    assert!(out.contains("REPLICA IDENTITY FULL"), "{out}");
    assert!(out.contains("FAIL replication slot"), "{out}");
    assert!(out.contains("walcast slot create"), "{out}");

    let mut cmd = walcast_command();
    cmd.args(["check", "--database-url", &replica_url()]);
    let outcome = run(cmd).await;
    assert_eq!(outcome.code, 1);
    assert!(
        outcome.stdout.contains("FAIL wal_level is \"replica\""),
        "{}",
        outcome.stdout
    );
}

#[tokio::test]
async fn slot_create_list_status_drop() {
    let db = TestDb::create_empty("cli_slot").await;
    let name = format!("{}_extra", db.name);
    let outcome = run(db.walcast(&["slot", "create", &name])).await;
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert!(outcome.stdout.contains(&format!("created slot {name}")));

    let outcome = run(db.walcast(&["slot", "create", &name])).await;
    assert_one_clear_error(&outcome, &["already exists"]);
    let outcome = run(db.walcast(&["slot", "create", "--if-not-exists", &name])).await;
    assert_eq!(outcome.code, 0);

    let outcome = run(db.walcast(&["slot", "list"])).await;
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert!(outcome.stdout.contains("CONFIRMED_FLUSH"));
    assert!(outcome.stdout.contains(&name));

    let outcome = run(db.walcast(&["slot", "status", &name, "--json"])).await;
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    let status: serde_json::Value = serde_json::from_str(&outcome.stdout).unwrap();
    assert_eq!(status["slot_name"], name.as_str());
    assert_eq!(status["plugin"], "pgoutput");
    assert_eq!(status["database"], db.name.as_str());
    assert_eq!(status["active"], false);
    assert!(status["confirmed_flush_lsn"]
        .as_str()
        .unwrap()
        .contains('/'));
    assert!(status["retained_wal_bytes"].as_i64().unwrap() >= 0);
    assert!(status["wal_status"].is_string());

    let outcome = run(db.walcast(&["slot", "status", &name])).await;
    assert!(
        outcome.stdout.contains("retained WAL:"),
        "{}",
        outcome.stdout
    );
    assert!(outcome.stdout.contains("active:              false"));

    let outcome = run(db.walcast(&["slot", "drop", &name])).await;
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    let outcome = run(db.walcast(&["slot", "drop", &name])).await;
    assert_one_clear_error(&outcome, &["does not exist"]);
    let outcome = run(db.walcast(&["slot", "drop", "--if-exists", &name])).await;
    assert_eq!(outcome.code, 0);
    let outcome = run(db.walcast(&["slot", "status", &name])).await;
    assert_one_clear_error(&outcome, &["does not exist"]);
}

/// `help` lists `item` as an entry: a line that starts (after indentation)
/// with the command name, or with the flag (possibly after its short form).
fn lists(help: &str, item: &str) -> bool {
    help.lines().any(|line| {
        let line = line.trim_start();
        let line = line
            .split_once(", ")
            .filter(|(short, _)| short.len() == 2 && short.starts_with('-'))
            .map_or(line, |(_, long)| long);
        line.strip_prefix(item)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '=']))
    })
}

async fn help_of(args: &[&str]) -> String {
    let mut cmd = walcast_command();
    cmd.args(args).arg("--help");
    let outcome = run(cmd).await;
    assert_eq!(outcome.code, 0, "{args:?} --help: {}", outcome.stderr);
    outcome.stdout
}

#[tokio::test]
async fn help_documents_every_command() {
    let help = help_of(&[]).await;
    for command in ["setup", "check", "slot", "run", "tail"] {
        assert!(
            lists(&help, command),
            "walcast --help lacks {command}:\n{help}"
        );
    }
    let help = help_of(&["slot"]).await;
    for command in ["create", "drop", "list", "status"] {
        assert!(
            lists(&help, command),
            "slot --help lacks {command}:\n{help}"
        );
    }
    let help = help_of(&["tail"]).await;
    for flag in ["--from", "--peek", "--temporary"] {
        assert!(lists(&help, flag), "tail --help lacks {flag}:\n{help}");
    }
    // A temporary slot dies with the session that created it, so `slot
    // create` has no --temporary: its help points to `tail --temporary`.
    let help = help_of(&["slot", "create"]).await;
    assert!(
        lists(&help, "--if-not-exists"),
        "slot create --help:\n{help}"
    );
    assert!(
        help.contains("tail --temporary"),
        "slot create --help:\n{help}"
    );
    assert!(!lists(&help, "--temporary"), "slot create --help:\n{help}");
}
