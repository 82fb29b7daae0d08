//! The example pipeline (examples/nba), compiled in so the demo, the tests and the benchmark
//! run it from any directory.

use std::path::Path;

use crate::config::{BackendKind, BusKind, Config};

/// The example pipeline's configuration file.
pub const EXAMPLE_PIPELINE: &str = include_str!("../examples/nba/pipeline.toml");

/// The example configuration on a given SQLite file.
pub fn example_config(db: &Path) -> anyhow::Result<Config> {
    let mut config = Config::parse(EXAMPLE_PIPELINE, Path::new("examples/nba/pipeline.toml"))?;
    config.backend.kind = BackendKind::Sqlite;
    config.backend.sqlite_path = db.to_path_buf();
    config.bus.kind = BusKind::InProcess;
    config.validate()?;
    Ok(config)
}
