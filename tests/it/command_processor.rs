//! The `command` processor: an existing program wrapped with the date.

use crate::common;

use common::{TestEnv, d};
use phasegate::ledger::{RunStatus, TriggerKind};
use phasegate::worker::{PhaseOutcome, RunRequest};

fn pipeline(script: &std::path::Path, out: &std::path::Path) -> String {
    format!(
        r#"
[pipeline]
name = "cmd"

[[phases]]
name = "ingest"
input_topic = "cmd-trigger"
completion_topic = "cmd-done"

[[phases.processors]]
name = "legacy_scraper"
kind = "command"
command = ["sh", "{script}", "--game-date", "{{data_date}}", "{out}"]
timeout_secs = 5
"#,
        script = script.display(),
        out = out.display()
    )
}

fn request(date: &str) -> RunRequest {
    RunRequest {
        phase: "ingest".into(),
        data_date: d(date),
        trigger: TriggerKind::Cli,
        message_id: None,
        delivery_attempt: None,
        skip_downstream: true,
        force: false,
    }
}

#[tokio::test]
async fn a_command_gets_the_date_and_a_non_zero_exit_fails_the_run_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("scraper.sh");
    let out = dir.path().join("seen.txt");
    std::fs::write(
        &script,
        r#"
# Usage: scraper.sh --game-date D OUT
date="$2"
echo "$date $PHASEGATE_DATA_DATE" >> "$3"
if [ "$date" = "2024-01-02" ]; then
  echo "upstream API returned 503 for $date" >&2
  exit 3
fi
"#,
    )
    .unwrap();
    let env = TestEnv::with_pipeline(&pipeline(&script, &out)).await;

    let ok = env
        .app
        .worker
        .run_phase(&request("2024-01-01"))
        .await
        .unwrap();
    assert!(matches!(ok, PhaseOutcome::Done { .. }), "{ok:?}");
    assert_eq!(
        env.status("legacy_scraper", d("2024-01-01")).await,
        Some(RunStatus::Success)
    );

    let failed = env
        .app
        .worker
        .run_phase(&request("2024-01-02"))
        .await
        .unwrap();
    assert!(matches!(failed, PhaseOutcome::Failed { .. }));
    let run = env.latest("legacy_scraper", d("2024-01-02")).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    let errors = run.errors.unwrap();
    assert!(
        errors.contains("upstream API returned 503 for 2024-01-02"),
        "{errors}"
    );
    assert!(errors.contains("exit status: 3"), "{errors}");

    let seen = std::fs::read_to_string(&out).unwrap();
    assert_eq!(seen, "2024-01-01 2024-01-01\n2024-01-02 2024-01-02\n");
}

#[tokio::test]
async fn a_command_that_hangs_is_killed_at_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hang.sh");
    std::fs::write(&script, "sleep 30\n").unwrap();
    let text =
        pipeline(&script, &dir.path().join("x")).replace("timeout_secs = 5", "timeout_secs = 1");
    let env = TestEnv::with_pipeline(&text).await;
    let outcome = env
        .app
        .worker
        .run_phase(&request("2024-01-01"))
        .await
        .unwrap();
    assert!(matches!(outcome, PhaseOutcome::Failed { .. }));
    let errors = env
        .latest("legacy_scraper", d("2024-01-01"))
        .await
        .unwrap()
        .errors
        .unwrap();
    assert!(errors.contains("did not finish within 1s"), "{errors}");
}

#[tokio::test]
async fn a_missing_program_fails_the_run_clearly() {
    let env = TestEnv::with_pipeline(
        &pipeline(std::path::Path::new("x"), std::path::Path::new("y"))
            .replace("\"sh\",", "\"/nonexistent/scraper\","),
    )
    .await;
    env.app
        .worker
        .run_phase(&request("2024-01-01"))
        .await
        .unwrap();
    let errors = env
        .latest("legacy_scraper", d("2024-01-01"))
        .await
        .unwrap()
        .errors
        .unwrap();
    assert!(
        errors.contains("cannot start `/nonexistent/scraper`"),
        "{errors}"
    );
}
