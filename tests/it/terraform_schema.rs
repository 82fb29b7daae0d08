//! What Terraform deploys agrees with the code: the ledger table's schema, and the worker
//! environment (with the mounted pipeline file) makes a valid production configuration.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use phasegate::backends::bigquery::LEDGER_SCHEMA;
use phasegate::config::{AuthMode, BackendKind, BusKind, Config};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn terraform_ledger_schema_matches_the_code() {
    let fields: Vec<serde_json::Value> =
        serde_json::from_str(&read("terraform/ledger_schema.json")).expect("JSON schema");
    let from_terraform: Vec<(String, String, String)> = fields
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap_or_default().to_string(),
                f["type"].as_str().unwrap_or_default().to_string(),
                f["mode"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let from_code: Vec<(String, String, String)> = LEDGER_SCHEMA
        .iter()
        .map(|(n, t, m)| (n.to_string(), t.to_string(), m.to_string()))
        .collect();
    assert_eq!(from_terraform, from_code);
}

/// The `env { name = "…" value = … }` pairs of the Cloud Run container in terraform/run.tf:
/// a quoted literal as written, an expression as `None` (its value is known only at apply).
fn terraform_worker_env() -> BTreeMap<String, Option<String>> {
    let text = read("terraform/run.tf");
    let mut env = BTreeMap::new();
    let mut name: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("name") {
            let value = rest.trim_start().trim_start_matches('=').trim();
            if value.starts_with('"') && value[1..].starts_with(|c: char| c.is_ascii_uppercase()) {
                name = Some(value.trim_matches('"').to_string());
            }
        } else if let (Some(n), Some(rest)) = (&name, line.strip_prefix("value")) {
            let value = rest.trim_start().trim_start_matches('=').trim();
            let literal = value.starts_with('"') && !value.contains("${");
            env.insert(
                n.clone(),
                literal.then(|| value.trim_matches('"').to_string()),
            );
            name = None;
        }
    }
    env
}

#[test]
fn the_worker_environment_terraform_sets_is_a_valid_production_config() {
    let env = terraform_worker_env();
    assert!(env.contains_key("PHASEGATE_CONFIG"), "{env:?}");
    // Values Terraform computes at apply, stood in for by plausible ones.
    let computed = |name: &str| match name {
        "GOOGLE_CLOUD_PROJECT" => "my-project",
        "PHASEGATE_BIGQUERY_DATASET" => "nba",
        // A reference to the database resource: known after apply.
        "PHASEGATE_FIRESTORE_DATABASE" => "phasegate",
        "PHASEGATE_AUTH_AUDIENCE" => "phasegate-nba-raw",
        "PHASEGATE_AUTH_ALLOWED_EMAILS" => "pg-nba-pusher@my-project.iam.gserviceaccount.com",
        _ => "/etc/phasegate/pipeline.toml",
    };
    let lookup = |name: &str| {
        env.get(name)
            .map(|v| v.clone().unwrap_or_else(|| computed(name).to_string()))
    };

    // The pipeline file Terraform mounts is the repository's example in examples/daily.
    let mut config = Config::parse(
        &read("examples/nba/pipeline.toml"),
        Path::new("pipeline.toml"),
    )
    .expect("example pipeline");
    let read_by_config = RefCell::new(Vec::new());
    config
        .apply_env(|name| {
            read_by_config.borrow_mut().push(name.to_string());
            lookup(name)
        })
        .expect("Terraform's environment is accepted");
    config
        .validate()
        .expect("the resulting configuration is valid");

    assert_eq!(config.backend.kind, BackendKind::Bigquery);
    assert_eq!(config.bus.kind, BusKind::Pubsub);
    assert_eq!(config.auth.mode, AuthMode::Oidc);
    assert_eq!(config.auth.audience.as_deref(), Some("phasegate-nba-raw"));
    assert_eq!(config.backend.dataset.as_deref(), Some("nba"));
    // Every variable Terraform sets is one the code reads (a misspelt name would be ignored
    // silently); PHASEGATE_CONFIG is the CLI's and PHASEGATE_LOG_FORMAT the logger's.
    let read_by_config = read_by_config.into_inner();
    for name in env.keys() {
        assert!(
            read_by_config.contains(name)
                || name == "PHASEGATE_CONFIG"
                || name == "PHASEGATE_LOG_FORMAT",
            "Terraform sets {name}, which phasegate does not read"
        );
    }
}

#[test]
fn without_a_mounted_pipeline_file_the_worker_stops_at_start() {
    // The image carries no configuration: a service deployed without the mounted file must
    // fail loudly rather than run anything.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .current_dir(empty.path())
        .env_remove("PHASEGATE_CONFIG")
        .args(["serve", "--phase", "raw"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read pipeline.toml"), "{err}");
}
