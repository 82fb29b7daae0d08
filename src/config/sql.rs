//! Configured SQL per backend dialect (`{dataset}` placeholder), and the check that a
//! processor's BigQuery statements leave the transaction alone ([`crate::sql_lint`]).

use serde::Deserialize;

use super::BackendKind;

/// In configured SQL, `{dataset}` stands for the backend's dataset: `main` on SQLite,
/// `` `project`.dataset `` on BigQuery.
pub const DATASET_PLACEHOLDER: &str = "{dataset}";

/// SQL text per backend dialect.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SqlByBackend {
    #[serde(default)]
    pub sqlite: Vec<String>,
    #[serde(default)]
    pub bigquery: Vec<String>,
}

impl SqlByBackend {
    pub fn for_backend(&self, kind: &BackendKind) -> &[String] {
        match kind {
            BackendKind::Sqlite => &self.sqlite,
            BackendKind::Bigquery => &self.bigquery,
        }
    }

    /// The first BigQuery statement that begins, commits or rolls back a transaction. A
    /// processor's statements run inside the script that commits them with the run's ledger
    /// row, so a `COMMIT TRANSACTION` among them would commit half a run. (SQLite refuses
    /// transaction control wherever it appears, when the statement is compiled.)
    pub(super) fn bigquery_transaction_control(&self) -> Option<(usize, &str)> {
        self.bigquery
            .iter()
            .enumerate()
            .find(|(_, sql)| crate::sql_lint::bigquery_controls_transaction(sql))
            .map(|(i, sql)| (i, sql.as_str()))
    }
}
