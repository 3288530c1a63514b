//! Listening on [`CHANNEL`]: the background task behind
//! [`PostgresSource::watch`](super::PostgresSource::watch).
//!
//! A notification's payload names the tokens a statement changed, as a
//! JSON array of ids; an empty payload (a `TRUNCATE`, a statement that
//! changed too many rows to name, an older trigger) or one that does not
//! parse means anything may have changed.
//!
//! Invariant: the listener retries forever with backoff and reports every
//! (re)connection as a possible change to anything, since a notification
//! may have been lost while it was away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{CHANNEL, CONNECT_TIMEOUT};
use crate::tokens::source::{sql, Announced};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The listener loop behind [`PostgresSource::watch`].
pub(super) async fn listen(options: PgConnectOptions, changed: Arc<Announced>) {
    // Its own pool of one, so the listening connection never takes a slot
    // that loads need.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(CONNECT_TIMEOUT)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options);
    let mut backoff = MIN_BACKOFF;
    loop {
        match subscribe(&pool).await {
            Ok(mut listener) => {
                let since = Instant::now();
                changed.anything();
                let error = loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) => match changed_ids(n.payload()) {
                            Some(ids) => changed.tokens(ids),
                            None => changed.anything(),
                        },
                        Ok(None) => break "connection lost".to_owned(),
                        Err(e) => break sql::one_line(e),
                    }
                };
                tracing::warn!(%error, "token change listener disconnected; reconnecting");
                // A load now finds out whether the database itself is gone
                // (and says so on `tollgate_token_source_up`) rather than at
                // the next refresh_interval.
                changed.anything();
                if since.elapsed() > MAX_BACKOFF {
                    backoff = MIN_BACKOFF;
                }
            }
            Err(error) => {
                tracing::warn!(error = %sql::one_line(error), "token change listener cannot connect");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The ids a notification names, or `None` when it names none (anything
/// may have changed).
fn changed_ids(payload: &str) -> Option<Vec<String>> {
    if payload.is_empty() {
        return None;
    }
    serde_json::from_str(payload).ok()
}

async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // Reconnect here, with backoff and a notification, not inside sqlx.
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::changed_ids;

    #[test]
    fn a_payload_names_tokens_or_means_anything() {
        assert_eq!(changed_ids(r#"["a","b c"]"#).unwrap(), ["a", "b c"]);
        assert_eq!(changed_ids(r#"["\n\"x"]"#).unwrap(), ["\n\"x"]);
        assert_eq!(changed_ids(""), None);
        assert_eq!(changed_ids("not json"), None);
        assert_eq!(changed_ids(r#"{"id":"a"}"#), None);
    }
}
