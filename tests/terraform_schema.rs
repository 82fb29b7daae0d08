//! The ledger table Terraform creates has exactly the schema the BigQuery backend writes.

use phasegate::backends::bigquery::LEDGER_SCHEMA;

#[test]
fn terraform_ledger_schema_matches_the_code() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/terraform/ledger_schema.json"
    ))
    .expect("terraform/ledger_schema.json");
    let fields: Vec<serde_json::Value> = serde_json::from_str(&text).expect("JSON schema");
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
