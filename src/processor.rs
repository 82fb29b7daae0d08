//! Running one processor for one date: `sql` statements on the warehouse, or an existing
//! program (`command`) given the date.

use std::process::Stdio;
use std::time::Duration;

use chrono::NaiveDate;
use tokio::io::AsyncReadExt;

use crate::config::{BackendKind, Config, Output, Processor, ProcessorKind, Reference};
use crate::warehouse::Warehouse;

/// How much of a failed command's stderr the ledger keeps (the end of it).
const STDERR_TAIL: usize = 4000;

/// What a successful processor run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    /// Rows of the declared output table for the date, when one is declared.
    pub rows: Option<u64>,
}

/// Run `processor` for `date`. An `Err` is the reason the run failed, for the ledger.
///
/// `expected` is the output's reference when it requires rows ([`rows_reference`]): 0 rows
/// on a date it lists is a failure, not a legitimate empty date.
pub async fn run(
    processor: &Processor,
    date: NaiveDate,
    warehouse: &dyn Warehouse,
    backend: &BackendKind,
    expected: Option<&Reference>,
) -> Result<Produced, String> {
    match processor.kind {
        ProcessorKind::Sql => warehouse
            .run_statements(processor.sql.for_backend(backend), date)
            .await
            .map_err(|e| e.to_string())?,
        ProcessorKind::Command => {
            run_command(&processor.command, date, processor.timeout_secs).await?
        }
    }
    let rows = match &processor.output {
        Some(o) => Some(output_rows(warehouse, o, expected, date).await?),
        None => None,
    };
    Ok(Produced { rows })
}

/// The reference whose dates need rows in `processor`'s output, when it requires rows (by
/// default whenever the output declares `expected`; `require_rows = false` opts out).
pub fn rows_reference<'a>(config: &'a Config, processor: &Processor) -> Option<&'a Reference> {
    let output = processor.output.as_ref().filter(|o| o.requires_rows())?;
    config.reference(output.expected.as_deref()?)
}

/// The post-condition of a run: the output's rows for `date` (one query), and — only when
/// there are none and `expected` is given — the reference's rows for the date (a second
/// query), failing when the reference lists the date.
pub async fn output_rows(
    warehouse: &dyn Warehouse,
    output: &Output,
    expected: Option<&Reference>,
    date: NaiveDate,
) -> Result<u64, String> {
    let rows = warehouse
        .count_rows(&output.table, &output.date_column, date)
        .await
        .map_err(|e| format!("counting output rows: {e}"))?;
    let Some(reference) = expected.filter(|_| rows == 0) else {
        return Ok(rows);
    };
    let scheduled = warehouse
        .count_rows(&reference.table, &reference.date_column, date)
        .await
        .map_err(|e| format!("reading reference {}: {e}", reference.table))?;
    match empty_output_failure(reference, date, rows, scheduled) {
        Some(error) => Err(error),
        None => Ok(rows),
    }
}

/// Is this output a failure? `rows` output rows on `date`, which the rows-requiring
/// `reference` lists `scheduled` times: 0 rows on a listed date is (the input is missing);
/// anything else is not (0 rows on an unlisted date is a legitimate `no_data`).
pub fn empty_output_failure(
    reference: &Reference,
    date: NaiveDate,
    rows: u64,
    scheduled: u64,
) -> Option<String> {
    (rows == 0 && scheduled > 0).then(|| {
        format!(
            "{} expects {date} ({scheduled} reference rows) but the run produced 0 rows: \
             the input for this date is missing",
            reference.table
        )
    })
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
