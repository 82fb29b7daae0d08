//! Running one processor for one date: `sql` statements on the warehouse, or an existing
//! program (`command`) given the date.

use std::process::Stdio;
use std::time::Duration;

use chrono::NaiveDate;
use tokio::io::AsyncReadExt;

use crate::config::{Config, Processor, Reference};
use crate::ledger::{Ledger, RunRecord};
use crate::warehouse::{self, Committed, Warehouse};

/// How much of a failed command's stderr the ledger keeps (the end of it).
const STDERR_TAIL: usize = 4000;

/// Run a `command` processor for `date`, then count its output, check the post-condition
/// and record the outcome in the ledger. An external program cannot share a transaction
/// with the ledger, so this is the best order: the outcome is written last, and only while
/// the claim is still ours. An `Err` is the reason the run failed.
pub async fn run_command_and_record(
    processor: &Processor,
    date: NaiveDate,
    warehouse: &dyn Warehouse,
    ledger: &dyn Ledger,
    require_rows: Option<&Reference>,
    run: RunRecord,
) -> Result<Committed, String> {
    run_command(&processor.command, date, processor.timeout_secs).await?;
    warehouse::count_and_record(
        warehouse,
        processor.output.as_ref(),
        require_rows,
        date,
        run,
        ledger,
    )
    .await
    .map_err(|e| e.to_string())
}

/// The reference whose dates need rows in `processor`'s output, when it requires rows (by
/// default whenever the output declares `expected`; `require_rows = false` opts out).
pub fn rows_reference<'a>(config: &'a Config, processor: &Processor) -> Option<&'a Reference> {
    let output = processor.output.as_ref().filter(|o| o.requires_rows())?;
    config.reference(output.expected.as_deref()?)
}

/// Run a program with `{data_date}` substituted in its arguments and `PHASEGATE_DATA_DATE`
/// in its environment. No shell is involved.
async fn run_command(argv: &[String], date: NaiveDate, timeout_secs: u64) -> Result<(), String> {
    let date_text = date.to_string();
    let args: Vec<String> = argv
        .iter()
        .map(|a| a.replace("{data_date}", &date_text))
        .collect();
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| "command is empty".to_string())?;
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .env("PHASEGATE_DATA_DATE", &date_text)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start `{program}`: {e}"))?;
    let mut stderr = child.stderr.take();
    let wait = async {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf).await;
        }
        (child.wait().await, buf)
    };
    let (status, err) = tokio::time::timeout(Duration::from_secs(timeout_secs), wait)
        .await
        .map_err(|_| format!("`{program}` did not finish within {timeout_secs}s and was killed"))?;
    let status = status.map_err(|e| format!("waiting for `{program}`: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&err);
    let text = text.trim();
    let tail = match text.char_indices().rev().nth(STDERR_TAIL) {
        Some((i, _)) => &text[i..],
        None => text,
    };
    Err(format!("`{program}` exited with {status}: {tail}"))
}
