//! `[server]`: the push server's port, deadlines, leases and limits, and their checks.

use serde::Deserialize;

use super::BackendKind;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen port; `$PORT` (Cloud Run's convention) overrides it.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Every push (and CLI run of a phase) finishes within this many seconds — gate,
    /// processors and publication; SQL on SQLite is interrupted at the deadline. Keep it
    /// below the push subscription's ack deadline (Terraform sets both).
    #[serde(default = "default_push_deadline_secs")]
    pub push_deadline_secs: u64,
    /// How long a claim on a run lasts without renewal: a `running` row whose lease ran
    /// out is abandoned (its worker crashed or was cut off) and the next delivery takes it
    /// over. On SQLite the holder renews it every third of the lease (default 15 s); on
    /// BigQuery nothing renews it (each renewal would be a DML job), so it must outlast the
    /// push deadline (default: the deadline + 60 s).
    #[serde(default, alias = "stale_running_secs")]
    pub run_lease_secs: Option<u64>,
    /// Time a client has to send a request's headers; it also closes a kept-alive connection
    /// that sends no next request for this long.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Time a client has to send a request's body.
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// Open connections at most; beyond it new ones wait in the kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Pushes handled at once at most; beyond it a push is answered 503 with Retry-After.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Memory for push bodies at once, all requests together, in MiB; a body is charged four
    /// times its size (its decoded copies included), so the default holds three 10 MB bodies.
    #[serde(default = "default_max_buffered_body_mib")]
    pub max_buffered_body_mib: usize,
    /// On SIGTERM: stop accepting, then wait at most this long for connections and pushes
    /// (keep it below Cloud Run's 10 s grace period).
    #[serde(default = "default_shutdown_drain_secs")]
    pub shutdown_drain_secs: u64,
    /// How often `serve` publishes the completion events still owed by runs whose delivery
    /// gave up before publishing (the outbox sweep; it also runs at start-up). A sweep takes
    /// an owed event over only once its holder's lease ran out.
    #[serde(default = "default_outbox_sweep_secs")]
    pub outbox_sweep_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            port: default_port(),
            push_deadline_secs: default_push_deadline_secs(),
            run_lease_secs: None,
            header_timeout_ms: default_header_timeout_ms(),
            body_timeout_ms: default_body_timeout_ms(),
            max_connections: default_max_connections(),
            max_in_flight: default_max_in_flight(),
            max_buffered_body_mib: default_max_buffered_body_mib(),
            shutdown_drain_secs: default_shutdown_drain_secs(),
            outbox_sweep_secs: default_outbox_sweep_secs(),
        }
    }
}

/// How a backend keeps claims alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    pub lease: std::time::Duration,
    /// Renew the lease this often while the run is in progress (`None`: never).
    pub renew_every: Option<std::time::Duration>,
}

impl ServerConfig {
    /// The claim lease on `backend` (see `run_lease_secs`).
    pub fn lease_policy(&self, backend: &BackendKind) -> LeasePolicy {
        use std::time::Duration;
        match backend {
            BackendKind::Sqlite => {
                let lease = Duration::from_secs(self.run_lease_secs.unwrap_or(15));
                LeasePolicy {
                    lease,
                    renew_every: Some(lease / 3),
                }
            }
            BackendKind::Bigquery => LeasePolicy {
                lease: Duration::from_secs(
                    self.run_lease_secs
                        .unwrap_or(self.push_deadline_secs.saturating_add(60)),
                ),
                renew_every: None,
            },
        }
    }

    /// Deadline and lease bounds; the error names the key.
    pub(super) fn validate(&self, backend: &BackendKind) -> Result<(), (&'static str, String)> {
        if !(1..=3600).contains(&self.push_deadline_secs) {
            return Err((
                "server.push_deadline_secs",
                "must be between 1 and 3600 (Pub/Sub's ack deadline is at most 600)".into(),
            ));
        }
        let lease = self.lease_policy(backend).lease.as_secs();
        if lease < 3 {
            return Err(("server.run_lease_secs", "must be at least 3 seconds".into()));
        }
        if *backend == BackendKind::Bigquery && lease <= self.push_deadline_secs {
            return Err((
                "server.run_lease_secs",
                format!(
                    "on BigQuery claims are not renewed, so the lease ({lease} s) must outlast \
                     server.push_deadline_secs ({} s): otherwise a run still in progress could \
                     be taken over",
                    self.push_deadline_secs
                ),
            ));
        }
        Ok(())
    }

    /// The HTTP limits' sanity: `(key, message)` of the first that is off.
    pub fn check_limits(&self) -> Result<(), (&'static str, &'static str)> {
        if !(100..=300_000).contains(&self.header_timeout_ms) {
            return Err(("server.header_timeout_ms", "must be between 100 and 300000"));
        }
        if !(100..=600_000).contains(&self.body_timeout_ms) {
            return Err(("server.body_timeout_ms", "must be between 100 and 600000"));
        }
        if self.max_in_flight == 0 {
            return Err(("server.max_in_flight", "must be at least 1"));
        }
        if self.max_connections < self.max_in_flight {
            return Err((
                "server.max_connections",
                "must be at least server.max_in_flight",
            ));
        }
        if self.max_buffered_body_mib < 40 {
            return Err((
                "server.max_buffered_body_mib",
                "must be at least 40 (one 10 MiB push body is charged four times its size)",
            ));
        }
        if !(1..=3600).contains(&self.shutdown_drain_secs) {
            return Err(("server.shutdown_drain_secs", "must be between 1 and 3600"));
        }
        if !(1..=86_400).contains(&self.outbox_sweep_secs) {
            return Err(("server.outbox_sweep_secs", "must be between 1 and 86400"));
        }
        Ok(())
    }
}

fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_body_timeout_ms() -> u64 {
    30_000
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_in_flight() -> usize {
    80
}
fn default_max_buffered_body_mib() -> usize {
    128
}
fn default_shutdown_drain_secs() -> u64 {
    8
}
fn default_outbox_sweep_secs() -> u64 {
    60
}

fn default_port() -> u16 {
    8080
}
fn default_push_deadline_secs() -> u64 {
    240
}

#[cfg(test)]
mod server_limit_tests {
    use super::ServerConfig;

    #[test]
    fn server_limits_are_checked() {
        assert_eq!(ServerConfig::default().check_limits(), Ok(()));
        let bad = [
            ServerConfig {
                header_timeout_ms: 0,
                ..Default::default()
            },
            ServerConfig {
                body_timeout_ms: 10_000_000,
                ..Default::default()
            },
            ServerConfig {
                max_in_flight: 0,
                ..Default::default()
            },
            ServerConfig {
                max_connections: 10,
                max_in_flight: 20,
                ..Default::default()
            },
            ServerConfig {
                max_buffered_body_mib: 39,
                ..Default::default()
            },
            ServerConfig {
                shutdown_drain_secs: 0,
                ..Default::default()
            },
            ServerConfig {
                outbox_sweep_secs: 0,
                ..Default::default()
            },
        ];
        for c in bad {
            let (key, _) = c.check_limits().unwrap_err();
            assert!(key.starts_with("server."), "{key}");
        }
    }
}
