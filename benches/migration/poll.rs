//! Waiting for what the API server shows.

use std::time::{Duration, Instant};

/// How often the harness looks: short next to a migration's seconds, cheap for the API server.
pub const POLL: Duration = Duration::from_millis(20);

/// Calls `check` every [`POLL`] until it gives a value; fails after `timeout`, naming `what`.
pub async fn poll_until<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; read controller.log and bench-agents.log in the work directory"
        );
        tokio::time::sleep(POLL).await;
    }
}
