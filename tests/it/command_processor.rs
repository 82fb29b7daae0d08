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

/// A command processor's claim whose lease is found expired while its holder still runs —
/// what a renewal queued behind a long write on the embedded store's one writer looks like
/// (issue 24, finding 2) — is not taken over in the holder's process: the second delivery
/// waits, and the command runs once.
#[tokio::test]
async fn a_live_holder_whose_lease_ran_out_behind_the_writer_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("slow.sh");
    let out = dir.path().join("runs.txt");
    let gate = dir.path().join("go");
    // Runs until the test creates `go`: the test decides when the holder finishes.
    std::fs::write(
        &script,
        format!(
            "echo start >> \"$3\"\nwhile [ ! -e {gate} ]; do sleep 0.05; done\n",
            gate = gate.display()
        ),
    )
    .unwrap();
    let text = pipeline(&script, &out).replace("timeout_secs = 5", "timeout_secs = 30");
    let env = TestEnv::with_pipeline(&text).await;
    let day = d("2024-01-01");
    let holder = {
        let worker = env.app.worker.clone();
        tokio::spawn(async move { worker.run_phase(&request("2024-01-01")).await })
    };
    // Wait until the holder's command runs, then make its lease look expired.
    while std::fs::read_to_string(&out).unwrap_or_default().is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut running = env.latest("legacy_scraper", day).await.unwrap();
    assert_eq!(running.status, RunStatus::Running);
    running.lease_until = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
    env.app.ledger().record(&running).await.unwrap();

    let second = env
        .app
        .worker
        .run_phase(&request("2024-01-01"))
        .await
        .unwrap();
    assert!(
        matches!(second, PhaseOutcome::InProgress { .. }),
        "a live holder is never taken over: {second:?}"
    );
    std::fs::write(&gate, "").unwrap();
    let first = holder.await.unwrap().unwrap();
    assert!(matches!(first, PhaseOutcome::Done { .. }), "{first:?}");
    let starts = std::fs::read_to_string(&out).unwrap();
    assert_eq!(starts.lines().count(), 1, "the command ran once: {starts}");
    let history = env
        .app
        .ledger()
        .history("legacy_scraper", day)
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "{history:#?}");
    assert_eq!(history[0].status, RunStatus::Success);
}
