//! Configuration validation: a bad file is refused at start-up, naming the file, the key and
//! what is wrong.

use std::path::Path;

use phasegate::config::Config;

const GOOD: &str = include_str!("../../examples/nba/pipeline.toml");

fn error_of(text: &str) -> String {
    let mut config = match Config::parse(text, Path::new("bad.toml")) {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    match config.validate() {
        Ok(()) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_example_pipeline_is_valid() {
    let mut c = Config::parse(GOOD, Path::new("examples/nba/pipeline.toml")).unwrap();
    c.validate().unwrap();
    assert_eq!(c.phases.len(), 4);
    assert_eq!(
        c.phases[1].input(),
        "nba-raw-complete",
        "derived from the previous phase"
    );
}

#[test]
fn every_error_names_the_file_and_the_key() {
    let cases = [
        (
            GOOD.replace("name = \"analytics\"", "name = \"raw\""),
            "phases[1].name",
            "declared twice",
        ),
        (
            GOOD.replace(
                "upstream = [\"raw_player_boxscores\"]",
                "upstream = [\"nope\"]",
            ),
            "phases[1].processors[0].checks.upstream[0]",
            "not a processor of an earlier phase",
        ),
        (
            GOOD.replace("lookback_days = 14", "lookback_days = 0"),
            "historical_gaps.lookback_days",
            "at least 1",
        ),
        (
            GOOD.replace(
                "expected = \"schedule\", require_rows = true }",
                "expected = \"calendar\", require_rows = true }",
            ),
            "output.expected",
            "no reference named `calendar`",
        ),
        (
            GOOD.replace("threshold_pct = 90.0", "threshold_pct = 190.0"),
            "threshold_pct",
            "not a percentage",
        ),
        (
            GOOD.replace(
                "completion_topic = \"nba-raw-complete\"",
                "completion_topic = \"x\"",
            ),
            "phases[0].completion_topic",
            "not a valid Pub/Sub topic id",
        ),
        (
            GOOD.replace(
                "table = \"team_schedule\"",
                "table = \"team_schedule; DROP TABLE x\"",
            ),
            "references.schedule.table",
            "not a table name",
        ),
        (
            GOOD.replace("input_topic = \"nba-trigger\"", ""),
            "phases[0].input_topic",
            "first phase needs an input_topic",
        ),
        (
            GOOD.replace(
                "name = \"analytics\"",
                "name = \"analytics\"\ninput_topic = \"nba-trigger\"",
            ),
            "phases[1].input_topic",
            "previous phase's completion topic",
        ),
        (
            GOOD.replace("kind = \"in_process\"", "kind = \"kafka\""),
            "bad.toml",
            "unknown variant `kafka`",
        ),
        (
            GOOD.replacen(
                "  \"DELETE FROM {dataset}.player_game_summary WHERE game_date = @data_date\",\n  \"INSERT",
                "  \"DELETE FROM {dataset}.player_game_summary WHERE game_date = @data_date\",\n  \"/* done */ COMMIT TRANSACTION\",\n  \"INSERT",
                2,
            ),
            "phases[1].processors[0].sql.bigquery[1]",
            "controls the transaction",
        ),
        (
            GOOD.replace("[pipeline]", "[pipeline]\ncolour = 1"),
            "bad.toml",
            "unknown field `colour`",
        ),
    ];
    for (text, key, what) in cases {
        let e = error_of(&text);
        assert!(e.starts_with("bad.toml"), "{e}");
        assert!(e.contains(key), "expected key {key} in: {e}");
        assert!(e.contains(what), "expected {what:?} in: {e}");
    }
}

#[test]
fn bigquery_statements_that_begin_commit_or_roll_back_are_refused_and_blocks_are_not() {
    let with = |statement: &str| {
        GOOD.replacen(
            "sql.bigquery = [\n",
            &format!("sql.bigquery = [\n  \"{statement}\",\n"),
            1,
        )
    };
    for refused in [
        "COMMIT TRANSACTION",
        "commit",
        "ROLLBACK TRANSACTION",
        "BEGIN TRANSACTION",
        "BEGIN;",
        "-- first\\nBEGIN",
        "# first\\n rollback",
        // Anywhere in the statement, not only at its start (TOML-escaped: `\n` is a newline).
        "INSERT INTO {dataset}.t SELECT 1; COMMIT TRANSACTION",
        r"BEGIN\n  COMMIT TRANSACTION;\nEND",
        "IF TRUE THEN ROLLBACK TRANSACTION; END IF",
        "SELECT 1; BEGIN TRANSACTION; SELECT 2",
        // SQL phasegate cannot see may commit too.
        "EXECUTE IMMEDIATE 'COMMIT TRANSACTION'",
        "execute immediate format('DELETE FROM %s WHERE TRUE', 't')",
        "CALL {dataset}.refresh_everything()",
    ] {
        let e = error_of(&with(refused));
        assert!(
            e.contains("phases[0].processors[0].sql.bigquery[0]")
                && e.contains("controls the transaction"),
            "{refused}: {e}"
        );
    }
    for allowed in [
        "BEGIN SELECT 1; END",
        "SELECT 'COMMIT'",
        "INSERT INTO {dataset}.commits SELECT 1",
        "SELECT t.commit FROM {dataset}.git t",
        "SELECT `commit`, `rollback` FROM {dataset}.git",
        r"-- COMMIT first\nSELECT 1",
        // In strings, with escaped quotes and a triple-quoted one (TOML-escaped).
        r#"SELECT 'it\\'s; COMMIT', \"a \\\" ROLLBACK\", '''COMMIT'''"#,
        "BEGIN SELECT 1; END; BEGIN SELECT 2; END",
        "SELECT `call`, t.execute FROM {dataset}.calls t",
        "SELECT 'EXECUTE IMMEDIATE', 'CALL x()'",
    ] {
        let mut c = Config::parse(&with(allowed), Path::new("ok.toml")).expect("parses");
        c.validate().unwrap_or_else(|e| panic!("{allowed}: {e}"));
    }
}

#[test]
fn environment_overrides_deployment_settings() {
    let mut c = Config::parse(GOOD, Path::new("p.toml")).unwrap();
    c.apply_env(|k| match k {
        "PORT" => Some("9191".into()),
        "PHASEGATE_SQLITE_PATH" => Some("/tmp/x.db".into()),
        "PUBSUB_EMULATOR_HOST" => Some("127.0.0.1:8085".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(c.server.port, 9191);
    assert_eq!(c.backend.sqlite_path, Path::new("/tmp/x.db"));
    assert_eq!(c.bus.emulator_host.as_deref(), Some("127.0.0.1:8085"));
    let e = c
        .apply_env(|k| (k == "PORT").then(|| "eighty".into()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("PORT") && e.contains("eighty"), "{e}");
}

#[test]
fn the_cli_refuses_a_bad_file_with_exit_2_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(
        &path,
        GOOD.replace("lookback_days = 14", "lookback_days = 0"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .args(["--config"])
        .arg(&path)
        .args(["check", "--phase", "precompute", "--date", "2025-01-01"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pipeline.toml") && err.contains("lookback_days"),
        "{err}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .args([
            "--config",
            "/nonexistent/pipeline.toml",
            "status",
            "--from",
            "2025-01-01",
            "--to",
            "2025-01-02",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/pipeline.toml"));
}

#[test]
fn sqlite_clauses_that_roll_back_the_whole_transaction_are_refused_at_load() {
    let in_processor = |statement: &str| {
        GOOD.replacen(
            "sql.sqlite = [\n",
            &format!("sql.sqlite = [\n  \"{statement}\",\n"),
            1,
        )
    };
    for (refused, clause) in [
        (
            "INSERT OR ROLLBACK INTO {dataset}.raw_player_boxscores SELECT * FROM {dataset}.source_player_boxscores",
            "OR ROLLBACK",
        ),
        ("update or rollback {dataset}.t set a = 1", "OR ROLLBACK"),
    ] {
        let e = error_of(&in_processor(refused));
        assert!(
            e.contains("phases[0].processors[0].sql.sqlite[0]") && e.contains(clause),
            "{refused}: {e}"
        );
        assert!(e.contains("group commit"), "says why: {e}");
    }
    let in_setup = |statement: &str| {
        GOOD.replacen(
            "sqlite = [\n",
            &format!("sqlite = [\n  \"{statement}\",\n"),
            1,
        )
    };
    for (refused, clause) in [
        (
            "CREATE TABLE IF NOT EXISTS {dataset}.u (a TEXT UNIQUE ON CONFLICT ROLLBACK)",
            "ON CONFLICT ROLLBACK",
        ),
        (
            "CREATE TRIGGER IF NOT EXISTS no_dupes BEFORE INSERT ON raw_player_boxscores BEGIN SELECT RAISE(ROLLBACK, 'dup'); END",
            "RAISE(ROLLBACK",
        ),
    ] {
        let e = error_of(&in_setup(refused));
        assert!(
            e.contains("setup.sqlite[0]") && e.contains(clause),
            "{refused}: {e}"
        );
    }
    let fine = in_processor("INSERT OR IGNORE INTO {dataset}.t SELECT 'or rollback'");
    let mut c = Config::parse(&fine, Path::new("ok.toml")).expect("parses");
    c.validate().expect("OR IGNORE and a string are fine");
}

#[test]
fn maximum_bytes_billed_is_refused_where_it_cannot_work() {
    let summary = "name = \"player_game_summary\"\nkind = \"sql\"\n";
    let raw = "name = \"raw_player_boxscores\"\nkind = \"sql\"\n";
    assert!(GOOD.contains(summary) && GOOD.contains(raw));
    let with_limit = |n: u64| {
        GOOD.replacen(
            summary,
            &format!("{summary}maximum_bytes_billed = {n}\n"),
            1,
        )
    };
    // BigQuery's least bill for a query that reads a table (10 MB) and above: accepted, for
    // that processor only.
    for n in [10_485_760, 5_000_000_000] {
        let mut c = Config::parse(&with_limit(n), Path::new("p.toml")).unwrap();
        c.validate().unwrap();
        let limits: Vec<_> = c
            .phases
            .iter()
            .flat_map(|p| &p.processors)
            .map(|p| (p.name.as_str(), p.maximum_bytes_billed))
            .collect();
        assert!(
            limits.contains(&("player_game_summary", Some(n))),
            "{limits:?}"
        );
        assert!(
            limits.contains(&("raw_player_boxscores", None)),
            "{limits:?}"
        );
    }
    let cases = [
        (
            with_limit(10_485_759),
            "phases[1].processors[0].maximum_bytes_billed",
            "below 10485760",
        ),
        (
            GOOD.replacen(
                raw,
                "name = \"raw_player_boxscores\"\nkind = \"command\"\ncommand = [\"true\"]\nmaximum_bytes_billed = 20000000\n",
                1,
            ),
            "phases[0].processors[0].maximum_bytes_billed",
            "outside BigQuery",
        ),
        (
            GOOD.replacen(
                "dataset = \"nba\"\n",
                "dataset = \"nba\"\nmaximum_bytes_billed = 1000\n",
                1,
            ),
            "backend.maximum_bytes_billed",
            "below 10485760",
        ),
    ];
    for (text, key, what) in cases {
        let e = error_of(&text);
        assert!(e.contains(key), "expected key {key} in: {e}");
        assert!(e.contains(what), "expected {what:?} in: {e}");
    }
}
