//! Token sources: where the index is loaded from (§3 file, §4 SQLite and
//! PostgreSQL), how changes are noticed, and the writes behind
//! `tollgate token …`.
//!
//! Invariant: a read that fails part-way returns an error, never a partial
//! list. A token file is all-or-nothing; on a database source a row that
//! was read completely but is invalid is skipped, reported (by its id or
//! row number, never a value) and counted, and every other row applies.

pub use sql::InvalidRow;

pub mod file;
pub mod postgres;
pub(crate) mod sql;
pub mod sqlite;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use time::OffsetDateTime;
use tokio::sync::Notify;

use super::{TokenHash, TokenId, TokenIndex, TokenRecord};
use crate::config::{SourceKind, TokenSourceSettings};

/// Why a source could not be read or written. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unsupported(String),
}

/// A token file that does not parse: every problem, one per line.
impl From<crate::config::ConfigErrors> for SourceError {
    fn from(e: crate::config::ConfigErrors) -> Self {
        SourceError::Invalid(e.to_string())
    }
}

/// Records that cannot form an index (an id unfit for a header, a
/// duplicate id or hash).
impl From<super::index::IndexError> for SourceError {
    fn from(e: super::index::IndexError) -> Self {
        SourceError::Invalid(e.to_string())
    }
}

/// A change to one stored token, found by its id: `tollgate token revoke`,
/// `enable`, `delete` and `rotate`. Each is one atomic write (a file
/// rename, a database transaction), so a gateway reloading meanwhile sees
/// the tokens before it or after it.
#[derive(Debug, Clone)]
pub enum Change {
    /// `disabled: true` (revoke) or `false` (enable).
    Disabled(bool),
    /// Removed entirely.
    Delete,
    /// A new secret for the same token. With `previous_until`, the old
    /// secret stays valid until then as the token [`previous_id`]
    /// (replacing one an earlier rotation left), with the same scopes and
    /// limits: requests still using it are told apart in logs and metrics.
    Rotate {
        hash: TokenHash,
        previous_until: Option<OffsetDateTime>,
    },
}

impl Change {
    /// For a rotation with an overlap, the id the old secret is kept under.
    pub(crate) fn previous(&self, id: &TokenId) -> Result<Option<TokenId>, SourceError> {
        match self {
            Change::Rotate {
                previous_until: Some(_),
                ..
            } => previous_id(id).map(Some),
            _ => Ok(None),
        }
    }
}

/// The id the old secret of a rotation with an overlap is kept under.
pub fn previous_id(id: &TokenId) -> Result<TokenId, SourceError> {
    TokenId::parse(&format!("{id}.previous")).map_err(|problem| {
        SourceError::Invalid(format!(
            "token {id:?}: cannot keep the old secret as {id}.previous: {problem}"
        ))
    })
}

/// The earlier of a token's expiry and the end of an overlap.
pub(crate) fn overlap_expiry(
    expires_at: Option<OffsetDateTime>,
    until: OffsetDateTime,
) -> OffsetDateTime {
    expires_at.map_or(until, |at| at.min(until))
}

/// A summary of what one load read — computed by the database in the same
/// snapshot, or the SHA-256 of a token file's bytes: equal fingerprints mean
/// the same tokens, so a re-read that finds the fingerprint unchanged need
/// not parse or build anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(String);

/// What [`Source::load_index`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// The rows are those the given fingerprint was taken of; nothing was
    /// read beyond the fingerprint and nothing applied.
    Unchanged,
    /// A complete, validated index was handed to `apply`; with the
    /// fingerprint of its rows where the source can take one.
    Applied(Option<Fingerprint>),
}

/// More announced token ids than this waiting at once are loaded in full.
const MAX_PENDING_IDS: usize = 1_000;

/// What a source's watcher has announced since the loader last looked:
/// that anything may have changed (load in full), or which tokens did.
#[derive(Debug, Default)]
pub struct Announced {
    wake: Notify,
    pending: Mutex<Pending>,
}

/// Announcements not acted on yet.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Anything may have changed: only a full load can tell what.
    pub anything: bool,
    /// Ids of tokens that changed (ids as the source wrote them, which a
    /// row another application wrote may not make valid).
    pub ids: HashSet<String>,
}

impl Pending {
    /// Whether nothing was announced.
    pub fn is_empty(&self) -> bool {
        !self.anything && self.ids.is_empty()
    }
}

impl Announced {
    /// Anything may have changed (a file was written, a listener
    /// reconnected, a statement changed too many rows to name).
    pub fn anything(&self) {
        self.lock().anything = true;
        self.wake.notify_one();
    }

    /// These tokens changed.
    pub fn tokens(&self, ids: impl IntoIterator<Item = String>) {
        {
            let mut pending = self.lock();
            pending.ids.extend(ids);
            if pending.ids.len() > MAX_PENDING_IDS {
                pending.ids = HashSet::new();
                pending.anything = true;
            }
        }
        self.wake.notify_one();
    }

    /// Waits for the next announcement (one made since the last `take` is
    /// returned at once).
    pub async fn notified(&self) {
        self.wake.notified().await
    }

    /// What was announced since the last call.
    pub fn take(&self) -> Pending {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Changed tokens by id, each with its current record or `None` where it
/// is gone.
pub type Changed = Vec<(TokenId, Option<TokenRecord>)>;

/// Every valid record of one complete read, and the rows it skipped.
#[derive(Debug, Default)]
pub struct Rows {
    pub records: Vec<TokenRecord>,
    /// Rows of a database source skipped as invalid (none for a file).
    pub invalid: Vec<InvalidRow>,
}

/// A configured token source.
pub enum Source {
    File(file::FileSource),
    Sqlite(sqlite::SqliteSource),
    Postgres(postgres::PostgresSource),
}

impl Source {
    /// Opens the source named by the settings. Does not fail because a
    /// database is down: connections are made lazily by `load`.
    pub fn open(settings: &TokenSourceSettings) -> Result<Source, SourceError> {
        Ok(match &settings.kind {
            SourceKind::File { path } => Source::File(file::FileSource::new(path.clone())),
            SourceKind::Sqlite { path } => Source::Sqlite(
                sqlite::SqliteSource::new(path.clone(), settings.query.clone())
                    .with_split(settings.split.clone()),
            ),
            SourceKind::Postgres { url } => {
                let source = postgres::PostgresSource::new(url.clone(), settings.query.clone())
                    .with_split(settings.split.clone())
                    .with_notify_on(settings.notify_trigger_on.clone());
                source.check_url()?;
                Source::Postgres(source)
            }
        })
    }

    /// Creates the database table (and on PostgreSQL the notify trigger)
    /// when missing; run by `tollgate token …` and `tollgate serve` before its first load. A no-op
    /// for a file and for a custom query.
    pub async fn ensure_schema(&self) -> Result<(), SourceError> {
        match self {
            Source::File(_) => Ok(()),
            Source::Sqlite(s) => s.ensure_schema().await,
            Source::Postgres(s) => s.ensure_schema().await,
        }
    }

    /// Whether the database table (and on PostgreSQL the notify trigger)
    /// exist, writing nothing: what `tollgate check` reports. `Ok` for a
    /// file and for a custom query, whose reads tell.
    pub async fn verify_schema(&self) -> Result<(), SourceError> {
        match self {
            Source::File(_) => Ok(()),
            Source::Sqlite(s) => s.verify_schema().await,
            Source::Postgres(s) => s.verify_schema().await,
        }
    }

    /// What `tollgate check` should warn about the source's set-up (a
    /// missing trigger on an application table, with the SQL that installs
    /// it), found without writing.
    pub async fn warnings(&self) -> Vec<String> {
        match self {
            Source::Postgres(s) => s.warnings().await,
            Source::File(_) | Source::Sqlite(_) => Vec::new(),
        }
    }

    /// Stores a new token. Refuses a duplicate id or secret (naming the id,
    /// never the secret or hash), and a custom-query source.
    pub async fn create(&self, record: &TokenRecord) -> Result<(), SourceError> {
        match self {
            Source::File(s) => s.create(record).await,
            Source::Sqlite(s) => s.create(record).await,
            Source::Postgres(s) => s.create(record).await,
        }
    }

    /// Every token, for `tollgate token list`; all-or-nothing like `load`.
    pub async fn list(&self) -> Result<Vec<TokenRecord>, SourceError> {
        match self {
            Source::File(s) => s.list().await,
            Source::Sqlite(s) => s.load().await,
            Source::Postgres(s) => s.load().await,
        }
    }

    /// Disables a token (`disabled` and `updated_at`); an unknown id is an
    /// error, and so is a custom-query source.
    pub async fn revoke(&self, id: &TokenId) -> Result<(), SourceError> {
        self.change(id, &Change::Disabled(true)).await
    }

    /// Applies `change` to the token `id` in one atomic write; an unknown
    /// id is an error. Refused for a custom query (read-only).
    pub async fn change(&self, id: &TokenId, change: &Change) -> Result<(), SourceError> {
        match self {
            Source::File(s) => s.change(id, change).await,
            Source::Sqlite(s) => s.change(id, change).await,
            Source::Postgres(s) => s.change(id, change).await,
        }
    }

    /// Writes `last_used_at` for these ids in one transaction, never moving
    /// it backwards. The gateway calls this at most once a minute. A no-op
    /// for a file and for a custom query (read-only).
    pub async fn record_use(&self, uses: &[(String, OffsetDateTime)]) -> Result<(), SourceError> {
        match self {
            Source::File(_) => Ok(()),
            Source::Sqlite(s) => s.record_use(uses).await,
            Source::Postgres(s) => s.record_use(uses).await,
        }
    }

    /// Reads every token and the rows skipped as invalid, for `tollgate
    /// check` (which lists them).
    pub async fn read(&self) -> Result<Rows, SourceError> {
        let (records, invalid) = match self {
            Source::File(s) => (s.load().await?, Vec::new()),
            Source::Sqlite(s) => s.read().await?,
            Source::Postgres(s) => s.read().await?,
        };
        Ok(Rows { records, invalid })
    }

    /// Reads every valid token (invalid database rows are skipped, as a
    /// gateway skips them).
    pub async fn load(&self) -> Result<Vec<TokenRecord>, SourceError> {
        match self {
            Source::File(s) => s.load().await,
            Source::Sqlite(s) => s.load().await,
            Source::Postgres(s) => s.load().await,
        }
    }

    /// Reads every token straight into an index (rows are streamed, not
    /// collected first) and hands it to `apply`: `apply` is called with the
    /// index of a complete read or not at all; invalid database rows are
    /// skipped, logged once and counted in [`TokenIndex::rows_invalid`]. Given the
    /// fingerprint of the last load, a source that takes fingerprints
    /// (PostgreSQL) answers [`Loaded::Unchanged`] when the rows are the
    /// same, without reading them; the file source fingerprints the file's
    /// bytes. It takes the new fingerprint after
    /// `apply`, so that does not delay the new index.
    pub async fn load_index(
        &self,
        previous: Option<&Fingerprint>,
        apply: impl FnOnce(TokenIndex) + Send,
    ) -> Result<Loaded, SourceError> {
        match self {
            Source::File(s) => Ok(match s.load_index(previous).await? {
                None => Loaded::Unchanged,
                Some((index, fingerprint)) => {
                    apply(index);
                    Loaded::Applied(Some(fingerprint))
                }
            }),
            Source::Sqlite(s) => Ok(match s.load_index(previous).await? {
                None => Loaded::Unchanged,
                Some((index, taken)) => {
                    apply(index);
                    Loaded::Applied(taken)
                }
            }),
            Source::Postgres(s) => s.load_index(previous, apply).await,
        }
    }

    /// The fingerprint of what a load would read now, without reading it:
    /// `Ok(None)` for a source that takes none (it is read in full);
    /// `Err` when the source cannot be reached. PostgreSQL only (one scan
    /// on the server); SQLite's is its change log's position.
    pub async fn fingerprint(&self) -> Result<Option<Fingerprint>, SourceError> {
        match self {
            Source::Postgres(s) => s
                .fingerprint()
                .await
                .map(Some)
                .ok_or_else(|| SourceError::Unavailable("postgres: no fingerprint".into())),
            Source::Sqlite(s) => s.fingerprint().await,
            Source::File(_) => Ok(None),
        }
    }

    /// The tokens that changed since the index was read, each with its
    /// current record (`None`: gone), read without reading any other
    /// token: PostgreSQL reads the rows `announced` names, SQLite those
    /// its change log names. `Ok(None)`: only a full read can tell (a
    /// file, a custom query, an announcement of anything on PostgreSQL, a
    /// change log that cannot say).
    pub async fn read_changes(&self, announced: &Pending) -> Result<Option<Changed>, SourceError> {
        match self {
            Source::Postgres(s) if !announced.anything => {
                let ids: Vec<String> = announced.ids.iter().cloned().collect();
                s.read_tokens(&ids).await
            }
            Source::Sqlite(s) => s.read_logged().await,
            Source::Postgres(_) | Source::File(_) => Ok(None),
        }
    }

    /// Starts watching for changes and announcing them to `changed`.
    pub fn watch(&self, changed: Arc<Announced>) {
        match self {
            Source::File(s) => s.watch(changed),
            Source::Sqlite(s) => s.watch(changed),
            Source::Postgres(s) => s.watch(changed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Compiles only if the futures callers spawn are `Send`.
    #[allow(dead_code)]
    fn futures_are_send(source: &'static Source, settings: &'static crate::config::Settings) {
        fn send<T: Send>(_: T) {}
        send(source.load());
        send(source.load_index(None, drop));
        send(source.ensure_schema());
        send(source.record_use(&[]));
        send(source.list());
        send(crate::cli::token::run(
            crate::cli::token::TokenCommand::Hash,
            settings,
        ));
    }

    #[test]
    fn open_refuses_a_postgres_url_that_does_not_parse() {
        let settings = TokenSourceSettings {
            kind: SourceKind::Postgres {
                url: "postgres://u:pw@host:port/db".into(),
            },
            query: None,
            refresh_interval: Duration::from_secs(5),
            split: None,
            notify_trigger_on: None,
        };
        assert!(matches!(
            Source::open(&settings),
            Err(SourceError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn a_file_source_has_no_schema_and_records_no_use() {
        let settings = TokenSourceSettings {
            kind: SourceKind::File {
                path: "/nonexistent/tokens.yaml".into(),
            },
            query: None,
            refresh_interval: Duration::from_secs(5),
            split: None,
            notify_trigger_on: None,
        };
        let source = Source::open(&settings).unwrap();
        source.ensure_schema().await.unwrap();
        source
            .record_use(&[("x".into(), OffsetDateTime::now_utc())])
            .await
            .unwrap();
    }
}

/// Behaviour both database sources share, run against each by its tests.
#[cfg(test)]
pub(crate) mod shared_tests {
    use std::time::Duration;

    use super::{sql, Source};
    use crate::ratelimit::test_rate;
    use crate::tokens::id::{id, scopes};
    use crate::tokens::{TokenHash, TokenRecord};

    pub fn record(name: &str, secret: &str) -> TokenRecord {
        TokenRecord::new(
            id(name),
            TokenHash::of(secret.as_bytes()),
            scopes(&["scope:a"]),
        )
    }

    /// Create two tokens, read them back column for column, refuse a
    /// duplicate id or secret without naming the secret, revoke one.
    pub async fn create_list_revoke_round_trip(source: &Source) {
        source.ensure_schema().await.unwrap();
        let mut full = record("full", "s1");
        full.read_only = true;
        full.expires_at = Some(sql::parse_time("2027-01-01T00:00:00Z").unwrap());
        full.allowed_ips = vec![
            sql::parse_ip("10.0.0.0/8").unwrap(),
            sql::parse_ip("::1").unwrap(),
        ];
        full.rate_limit = Some(test_rate(10, Duration::from_millis(1500), 20));
        full.description = Some("Grafana".into());
        source.create(&full).await.unwrap();
        source.create(&record("bare", "s2")).await.unwrap();

        let listed = source.load().await.unwrap();
        assert_eq!(
            listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["bare", "full"]
        );
        let got = &listed[1];
        assert!(got.created_at.is_some() && got.created_at == got.updated_at);
        let mut want = full.clone();
        want.created_at = got.created_at;
        want.updated_at = got.updated_at;
        assert_eq!(*got, want);

        let err = source.create(&record("full", "s3")).await.unwrap_err();
        assert_eq!(err.to_string(), "a token with id \"full\" already exists");
        let err = source.create(&record("other", "s2")).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "this secret is already stored as token \"bare\""
        );

        source.revoke(&id("bare")).await.unwrap();
        let after = source.load().await.unwrap();
        assert_eq!(after.len(), 2, "a refused create stored nothing");
        assert!(after[0].disabled && !after[1].disabled);
        assert!(after[0].updated_at >= after[0].created_at);
        let err = source.revoke(&id("nope")).await.unwrap_err();
        assert_eq!(err.to_string(), "no token with id \"nope\"");
    }

    /// Enable, rotate (with and without an overlap) and delete, each read
    /// back: the index the gateway would build accepts exactly the secrets
    /// that should work.
    pub async fn enable_rotate_delete(source: &Source) {
        use super::Change;
        source.ensure_schema().await.unwrap();
        let expiry = sql::parse_time("2030-01-01T00:00:00Z").unwrap();
        let mut token = record("r", "old-secret");
        token.expires_at = Some(expiry);
        token.read_only = true;
        source.create(&token).await.unwrap();
        source.create(&record("gone", "gone-secret")).await.unwrap();
        let works = |secret: &'static str| async move {
            let index = crate::tokens::TokenIndex::build(source.load().await.unwrap()).unwrap();
            index
                .get(&TokenHash::of(secret.as_bytes()))
                .filter(|e| !e.disabled)
                .map(|e| e.id_str().to_string())
        };

        source.revoke(&id("r")).await.unwrap();
        assert_eq!(works("old-secret").await, None);
        source
            .change(&id("r"), &Change::Disabled(false))
            .await
            .unwrap();
        assert_eq!(works("old-secret").await.as_deref(), Some("r"));

        // An overlap: the old secret works as r.previous until it ends,
        // never beyond the token's own expiry; the rest is copied.
        let until = sql::parse_time("2029-01-01T00:00:00Z").unwrap();
        let rotate = |secret: &str, until| Change::Rotate {
            hash: TokenHash::of(secret.as_bytes()),
            previous_until: until,
        };
        source
            .change(&id("r"), &rotate("new-secret", Some(until)))
            .await
            .unwrap();
        assert_eq!(works("new-secret").await.as_deref(), Some("r"));
        assert_eq!(works("old-secret").await.as_deref(), Some("r.previous"));
        let all = source.load().await.unwrap();
        let by = |name: &str| all.iter().find(|r| r.id.as_str() == name).unwrap().clone();
        assert_eq!(by("r").expires_at, Some(expiry));
        assert_eq!(by("r.previous").expires_at, Some(until));
        assert!(by("r").read_only && by("r.previous").read_only);
        assert_eq!(by("r").scopes, by("r.previous").scopes);

        // Rotating again replaces r.previous; without an overlap the old
        // secret stops at once.
        let later = sql::parse_time("2031-01-01T00:00:00Z").unwrap();
        source
            .change(&id("r"), &rotate("third", Some(later)))
            .await
            .unwrap();
        assert_eq!(works("old-secret").await, None);
        assert_eq!(works("new-secret").await.as_deref(), Some("r.previous"));
        let all = source.load().await.unwrap();
        let previous = all.iter().find(|r| r.id.as_str() == "r.previous").unwrap();
        assert_eq!(
            previous.expires_at,
            Some(expiry),
            "never beyond the token's own"
        );
        source
            .change(&id("r"), &rotate("fourth", None))
            .await
            .unwrap();
        assert_eq!(works("third").await, None);
        assert_eq!(works("fourth").await.as_deref(), Some("r"));

        source.change(&id("gone"), &Change::Delete).await.unwrap();
        assert_eq!(works("gone-secret").await, None);
        assert!(source
            .load()
            .await
            .unwrap()
            .iter()
            .all(|r| r.id.as_str() != "gone"));
        for change in [Change::Delete, Change::Disabled(false), rotate("x", None)] {
            let err = source.change(&id("gone"), &change).await.unwrap_err();
            assert!(
                err.to_string().contains("no token with id \"gone\""),
                "{err}"
            );
        }
    }
}
