//! The command that retries a range of a backfill: this binary, the environment overrides in
//! effect, the same configuration file and every flag that changes what runs, so running it
//! as printed does what the backfill was doing.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use super::plan::{BackfillOptions, ErrorPolicy};
use super::runners::Executor;

/// Everything of a backfill's invocation that a retry must repeat.
#[derive(Debug, Clone)]
pub struct RetryCommand {
    /// How the shell runs this binary ([`crate::invocation::this_binary`]).
    pub program: String,
    /// Environment overrides in effect (`PHASEGATE_SQLITE_PATH=…`, …), repeated before it.
    pub env: Vec<(String, String)>,
    /// The configuration file (made absolute when it exists); `None` leaves `--config` out.
    pub config: Option<PathBuf>,
    pub policy: ErrorPolicy,
    pub parallel: usize,
    pub force: bool,
    pub executor: Executor,
}

impl RetryCommand {
    /// The retry command of a backfill run with `opts` and `executor` (no environment
    /// overrides: see [`RetryCommand::with_env`]).
    pub fn new(config: Option<&Path>, opts: &BackfillOptions, executor: Executor) -> RetryCommand {
        RetryCommand {
            program: crate::invocation::this_binary(),
            env: Vec::new(),
            config: config.map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())),
            policy: opts.policy,
            parallel: opts.parallel.max(1),
            force: opts.force,
            executor,
        }
    }

    /// Repeat these environment overrides (`Config::env_overrides`) before the command.
    pub fn with_env(mut self, env: Vec<(String, String)>) -> RetryCommand {
        self.env = env;
        self
    }

    /// `[NAME=value …] phasegate [--config CFG] backfill --phase P --from D --to D` and the
    /// backfill's flags, every word shell-quoted where it needs to be.
    pub fn render(&self, phase: &str, from: NaiveDate, to: NaiveDate) -> String {
        let mut words: Vec<String> = Vec::new();
        if let Some(path) = &self.config {
            words.extend(["--config".into(), path.display().to_string()]);
        }
        words.extend([
            "backfill".into(),
            "--phase".into(),
            phase.into(),
            "--from".into(),
            from.to_string(),
            "--to".into(),
            to.to_string(),
            "--error-policy".into(),
            self.policy.as_str().into(),
            "--parallel".into(),
            self.parallel.to_string(),
        ]);
        if self.force {
            words.push("--force".into());
        }
        if let Executor::ViaPubsub { timeout_secs } = self.executor {
            words.extend([
                "--via-pubsub".into(),
                "--timeout-secs".into(),
                timeout_secs.to_string(),
            ]);
        }
        // The assignments and the program are shell words already; the arguments are quoted.
        let env = self
            .env
            .iter()
            .map(|(name, v)| format!("{name}={}", quote(v)));
        env.chain([self.program.clone()])
            .chain(words.iter().map(|w| quote(w)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A word as the shell reads it back.
fn quote(word: &str) -> String {
    crate::invocation::shell_word(word)
}
