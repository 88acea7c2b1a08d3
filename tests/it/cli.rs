//! The command line as an operator meets it: setup, check, slot management,
//! and one clear error line (never a panic or backtrace) for bad input.

use std::time::Duration;

use crate::support::pgtest;
use crate::support::pgtest::{pg_url, replica_url, walcast_command, TestDb};

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

/// A login role of the test's own, dropped at the end (roles are
/// cluster-wide, so a unique name and a cleanup even on failure).
struct TestRole {
    admin_url: String,
    name: String,
}

impl TestRole {
    async fn create(admin_url: &str, name: String, attributes: &str) -> TestRole {
        pgtest::psql(admin_url, &format!("DROP ROLE IF EXISTS {name}")).await;
        pgtest::psql(admin_url, &format!("CREATE ROLE {name} {attributes}")).await;
        TestRole {
            admin_url: admin_url.to_owned(),
            name,
        }
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        // Synchronous, best effort: Drop cannot await.
        let _ = std::process::Command::new("psql")
            .arg(&self.admin_url)
            .args([
                "-X",
                "-q",
                "-c",
                &format!("DROP ROLE IF EXISTS {}", self.name),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn check_names_a_missing_privilege_and_a_table_outside_the_publication() {
    let db = TestDb::create_empty("cli_check_priv").await;
    // The publication exists, the table exists, but not in it.
    db.psql(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY, note text); \
         ALTER TABLE orders REPLICA IDENTITY FULL; \
         CREATE PUBLICATION {} FOR TABLE orders; \
         ALTER PUBLICATION {0} DROP TABLE orders",
        db.publication
    ))
    .await;
    let outcome = run(db.walcast(&["check"])).await;
    assert_eq!(outcome.code, 1, "{}", outcome.stdout);
    let out = &outcome.stdout;
    assert!(
        out.contains(&format!("ok   publication {} exists", db.publication)),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "FAIL table public.orders is not in publication \"{0}\"; run ALTER PUBLICATION \"{0}\" ADD TABLE \"public\".\"orders\"",
            db.publication
        )),
        "{out}"
    );

    // A role that may log in but not replicate.
    let role = TestRole::create(
        &db.admin_url,
        format!("{}_norepl", db.name),
        "LOGIN NOREPLICATION NOSUPERUSER",
    )
    .await;
    let url = db.url.replacen("postgres@", &format!("{}@", role.name), 1);
    assert_ne!(url, db.url, "the test URL names user postgres");
    let mut cmd = walcast_command();
    cmd.args(["check", "--database-url", &url, "--slot", &db.slot]);
    cmd.args(["--publication", &db.publication]);
    let outcome = run(cmd).await;
    assert_eq!(outcome.code, 1, "{}", outcome.stdout);
    let out = &outcome.stdout;
    assert!(
        out.contains(&format!(
            "FAIL role {0} lacks the REPLICATION attribute; run ALTER ROLE \"{0}\" REPLICATION",
            role.name
        )),
        "{out}"
    );
    assert!(!out.contains("may replicate"), "{out}");
}

#[tokio::test]
async fn check_reports_the_wal_retention_limit() {
    // The logical test cluster sets max_slot_wal_keep_size: the OK line.
    let db = TestDb::create("cli_check_keep").await;
    let keep = db.psql("SHOW max_slot_wal_keep_size").await;
    assert_ne!(keep, "-1", "the logical test cluster sets a limit");
    let outcome = run(db.walcast(&["check"])).await;
    assert_eq!(outcome.code, 0, "{}", outcome.stdout);
    assert!(
        outcome
            .stdout
            .contains(&format!("ok   max_slot_wal_keep_size is {keep}")),
        "{}",
        outcome.stdout
    );
    assert!(
        !outcome.stdout.contains("WARN max_slot"),
        "{}",
        outcome.stdout
    );

    // The stock cluster keeps Postgres's default (-1, unlimited): the
    // warning with its fix, alongside the wal_level failure. (The unset
    // case is also a unit test of the check's pure logic.)
    let keep = pgtest::psql(&replica_url(), "SHOW max_slot_wal_keep_size").await;
    assert_eq!(keep, "-1", "the stock cluster keeps Postgres's default");
    let mut cmd = walcast_command();
    cmd.args(["check", "--database-url", &replica_url()]);
    let outcome = run(cmd).await;
    assert!(
        outcome.stdout.contains(
            "WARN max_slot_wal_keep_size is unset (-1): a stopped walcast lets the slot retain WAL"
        ) && outcome
            .stdout
            .contains("ALTER SYSTEM SET max_slot_wal_keep_size"),
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
