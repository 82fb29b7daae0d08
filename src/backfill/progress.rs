//! Progress while dates run: a bar on a terminal, one line per date otherwise, or nothing.

use std::io::IsTerminal;

use chrono::NaiveDate;

use super::report::DateResult;

/// Sees each date as it ends. The executor calls it in the order dates finish.
pub trait ProgressSink: Send + Sync {
    fn done(&self, phase: &str, date: NaiveDate, result: &DateResult);
    /// Every date has ended.
    fn finish(&self) {}
}

/// The terminal's progress display.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
}

impl Progress {
    /// A bar on a terminal, plain lines on stderr otherwise.
    pub fn new(len: usize, phase: &str) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress {
                bar: None,
                lines: true,
            };
        }
        let bar = indicatif::ProgressBar::new(len as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(phase.to_string());
        Progress {
            bar: Some(bar),
            lines: false,
        }
    }

    /// No progress output at all.
    pub fn hidden() -> Progress {
        Progress {
            bar: None,
            lines: false,
        }
    }
}

impl ProgressSink for Progress {
    fn done(&self, phase: &str, date: NaiveDate, result: &DateResult) {
        let line = result.line();
        match &self.bar {
            Some(bar) => {
                // The bar shows the outcome word only; the summary has the reasons.
                let word = line.split(':').next().unwrap_or(&line);
                bar.set_message(format!("{date} {word}"));
                bar.inc(1);
            }
            None if self.lines => eprintln!("{phase} {date} {line}"),
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
