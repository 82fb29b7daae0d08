//! Accepting connections without spinning: back off on errors such as EMFILE, and log one
//! line when a burst of failures starts and one when it ends.

use std::io;
use std::time::Duration;

const FIRST_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_secs(1);

/// The accept loop's memory of its recent failures.
#[derive(Debug, Default)]
pub(super) struct AcceptBackoff {
    failures: u64,
    delay: Duration,
}

impl AcceptBackoff {
    /// An accept failed: how long to pause before the next one.
    pub(super) fn failed(&mut self, e: &io::Error) -> Duration {
        if is_per_connection(e) {
            tracing::debug!(error = %e, "a connection failed before it was accepted");
            return Duration::ZERO;
        }
        if self.failures == 0 {
            tracing::warn!(error = %e, "accept failing; backing off until it recovers");
        }
        self.failures += 1;
        self.delay = (self.delay * 2).clamp(FIRST_DELAY, MAX_DELAY);
        self.delay
    }

    /// An accept succeeded: close the burst, if any.
    pub(super) fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::warn!(failures = self.failures, "accept recovered");
        }
        self.failures = 0;
        self.delay = Duration::ZERO;
    }
}

/// Errors about one incoming connection, not about the listener or the process.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_exponentially_up_to_a_second_and_resets() {
        let mut b = AcceptBackoff::default();
        let emfile = io::Error::from_raw_os_error(24);
        let delays: Vec<_> = (0..10).map(|_| b.failed(&emfile)).collect();
        assert_eq!(delays[0], FIRST_DELAY);
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(delays[9], MAX_DELAY);
        b.succeeded();
        assert_eq!(b.failed(&emfile), FIRST_DELAY);
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(b.failed(&aborted), Duration::ZERO);
    }
}
