//! What every subcommand needs: the built application and its arguments checked against the
//! configuration.

use anyhow::bail;

use crate::config::Config;
use crate::startup::{self, App};

pub(super) async fn build(config: Config) -> anyhow::Result<App> {
    Ok(startup::build(config).await?)
}

pub(super) fn require_phase(config: &Config, phase: &str) -> anyhow::Result<()> {
    if config.phase(phase).is_none() {
        bail!(
            "no phase `{phase}` in {} (phases: {})",
            config.source.display(),
            config.phase_names()
        );
    }
    Ok(())
}
