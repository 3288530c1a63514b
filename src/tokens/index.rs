//! `TokenIndex`: the in-memory map from a token's SHA-256 to what the
//! gateway needs to judge a request made with it.
//!
//! Built from a source's records off the request path — one record at a
//! time, so a source can stream its rows straight in — and swapped in whole
//! (see `policy::current`). A source that announces which tokens changed
//! has them applied beside the loaded table (`TokenIndex::with_changes`),
//! at a cost that does not grow with the table. Invariant: an index never
//! holds a plaintext secret, and looking a token up is one SHA-256 and one
//! hash probe (two while changes are applied) — the digest is
//! already uniformly distributed, so the table hashes it by taking its
//! first eight bytes rather than hashing it again.
//!
//! Layout, for a million tokens: the entries sit in one `Vec` (exactly
//! sized, about 180 bytes each) and two `HashTable<u32>`s map a hash or an
//! id to a position (4 bytes a slot); ids live in shared 64 KiB chunks
//! rather than one allocation each. A `HashMap<TokenHash, TokenEntry>`
//! would round up to 2²¹ slots of the full entry at a million tokens.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use hashbrown::hash_table::{Entry, HashTable};
use http::HeaderValue;
use ipnet::IpNet;

use super::split::{SplitKey, SplitTokens};
use super::usage::UsageCell;
use super::{Scope, TokenHash, TokenId, TokenRecord};
use crate::config::Rate;
use crate::ratelimit::TokenLimiter;

/// Size of the shared buffers ids are copied into.
const ID_CHUNK: usize = 64 * 1024;

/// The scopes of one or more tokens, shared between tokens with the same set.
#[derive(Debug)]
pub struct ScopeSet {
    pub names: Box<[Box<str>]>,
    /// Space-separated, for `X-Tollgate-Scopes`.
    pub header: HeaderValue,
}

/// What the gateway knows about one token.
#[derive(Debug)]
pub struct TokenEntry {
    hash: TokenHash,
    /// The token id; cloning it (or its header value) does not allocate.
    pub id: TokenId,
    pub scopes: Arc<ScopeSet>,
    pub read_only: bool,
    pub disabled: bool,
    /// Unix seconds after which the token is refused.
    pub expires_at: Option<i64>,
    pub allowed_ips: Box<[IpNet]>,
    /// Override of `limits.per_token`.
    pub rate_limit: Option<Rate>,
    /// The token's limiter, taken from the registry (which keeps its state
    /// across reloads) on first use.
    pub limiter: OnceLock<Arc<TokenLimiter>>,
    /// When the token was last used, taken from the usage registry (which
    /// keeps it across reloads until it is written back) on first use.
    pub usage: OnceLock<Arc<UsageCell>>,
}

impl TokenEntry {
    /// The token id as text.
    /// The SHA-256 of the token's secret (sessions are signed with it).
    pub fn hash(&self) -> &TokenHash {
        &self.hash
    }

    #[inline]
    pub fn id_str(&self) -> &str {
        self.id.as_str()
    }

    /// Whether a request from `ip` at unix time `now` may use this token.
    pub fn is_live(&self, now: i64) -> bool {
        !self.disabled && self.expires_at.is_none_or(|t| now < t)
    }

    /// Whether `ip` is in the token's allow-list (an empty list allows all).
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.allowed_ips.is_empty() || self.allowed_ips.iter().any(|n| n.contains(&ip))
    }

    /// Whether the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.names.iter().any(|s| &**s == scope)
    }
}

/// The table hash of a digest: its first eight bytes.
#[inline]
fn digest_hash(hash: &TokenHash) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.0[..8]);
    u64::from_ne_bytes(first)
}

/// Every token of one full load, by hash and by id.
#[derive(Debug, Default)]
struct Table {
    entries: Vec<TokenEntry>,
    /// Positions in `entries`, hashed by [`digest_hash`].
    by_hash: HashTable<u32>,
    /// Positions in `entries`, hashed by `ids`.
    by_id: HashTable<u32>,
    ids: RandomState,
    /// Rows of a database source that were read but skipped as invalid.
    rows_invalid: usize,
    /// The config's split-token rules, when it has them.
    split: Option<Arc<SplitTokens>>,
    /// Split tokens' keys and digests; `by_key` maps a key to a position
    /// here. Split tokens are not in `by_hash`.
    split_keys: Vec<(u32, SplitKey)>,
    by_key: HashTable<u32>,
}

/// A record that cannot go into an index.
#[derive(Debug, thiserror::Error)]
#[error("token {id:?}: {problem}")]
pub struct IndexError {
    pub id: TokenId,
    pub problem: &'static str,
}

impl Table {
    /// The entry for a presented token's hash.
    #[inline]
    fn get(&self, hash: &TokenHash) -> Option<&TokenEntry> {
        let entries = &self.entries;
        self.by_hash
            .find(digest_hash(hash), |&i| entries[i as usize].hash == *hash)
            .map(|&i| &entries[i as usize])
    }

    /// The split-token rules this index was built with.
    #[inline]
    fn split_rules(&self) -> Option<&SplitTokens> {
        self.split.as_deref()
    }

    /// The entry for a presented split token (`rules` claims it): every
    /// way it can be wrong — shape, key, pepper, digest — is `None`; the
    /// digest is compared in constant time.
    fn get_split(&self, rules: &SplitTokens, token: &[u8]) -> Option<&TokenEntry> {
        let (key, secret) = rules.parse(token)?;
        let keys = &self.split_keys;
        let &at = self.by_key.find(self.ids.hash_one(key.as_bytes()), |&i| {
            &*keys[i as usize].1.key == key
        })?;
        let (entry, stored) = &keys[at as usize];
        rules
            .verify(&stored.digest, secret)
            .then(|| &self.entries[*entry as usize])
    }

    /// The split key of the token with this id, if it is a split token
    /// (a scan: for `explain`, not the request path).
    fn split_key_of(&self, id: &str) -> Option<&SplitKey> {
        self.split_keys
            .iter()
            .find(|(at, _)| self.entries[*at as usize].id_str() == id)
            .map(|(_, key)| key)
    }

    /// The entry with this id.
    fn find_id(&self, id: &str) -> Option<&TokenEntry> {
        let entries = &self.entries;
        self.by_id
            .find(self.ids.hash_one(id.as_bytes()), |&i| {
                entries[i as usize].id_str().as_bytes() == id.as_bytes()
            })
            .map(|&i| &entries[i as usize])
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The index requests are judged by: the table of the last full load,
/// and the tokens changed since, announced one by one by the source.
///
/// A change is applied by building a new, small `Changes` beside the
/// shared table, so applying one costs in proportion to the changes since
/// the last full load, never to the table: a full load empties it again.
#[derive(Debug, Default)]
pub struct TokenIndex {
    table: Arc<Table>,
    /// `None` until a change arrives: the lookup then costs one branch.
    changes: Option<Box<Changes>>,
}

/// Tokens changed since the table was loaded, and what they are now.
#[derive(Debug)]
struct Changes {
    /// Each changed id's current record; `None`: deleted (or now an
    /// invalid row, which authenticates nothing). These ids' entries in
    /// the table are hidden.
    records: HashMap<TokenId, Option<TokenRecord>>,
    /// The `Some` records, indexed.
    table: Table,
    /// How many of `records`' ids the table holds.
    hidden: usize,
}

impl Changes {
    /// Whether the table's entry with this id is out of date.
    #[inline]
    fn hides(&self, entry: &TokenEntry) -> bool {
        self.records.contains_key(entry.id_str())
    }
}

impl TokenIndex {
    /// Builds an index; all-or-nothing. Records were validated by their
    /// source (ids and scopes are valid by type); this checks what the
    /// index itself needs (unique ids and hashes).
    pub fn build(records: Vec<TokenRecord>) -> Result<TokenIndex, IndexError> {
        let mut builder = IndexBuilder::with_capacity(records.len());
        for r in records {
            builder.push(r)?;
        }
        Ok(builder.finish())
    }

    /// This index with `changed` applied: each id's current record, or
    /// `None` where the token is gone. Shares the table; costs in
    /// proportion to [`changed_since_load`](Self::changed_since_load). A
    /// record whose hash or key another changed token has fails, and the
    /// caller loads in full instead.
    pub fn with_changes(
        &self,
        changed: impl IntoIterator<Item = (TokenId, Option<TokenRecord>)>,
    ) -> Result<TokenIndex, IndexError> {
        let mut records = self
            .changes
            .as_ref()
            .map(|c| c.records.clone())
            .unwrap_or_default();
        // An id this index never had that is gone anyway (another
        // schema's token, announced on the same channel) changes nothing.
        for (id, now) in changed {
            if now.is_some() || self.concerns(id.as_str()) {
                records.insert(id, now);
            }
        }
        let mut builder = IndexBuilder::with_capacity(records.len());
        builder.split_rules(self.table.split.clone());
        for record in records.values().flatten() {
            builder.push(record.clone())?;
        }
        let hidden = records
            .keys()
            .filter(|id| self.table.find_id(id.as_str()).is_some())
            .count();
        Ok(TokenIndex {
            table: self.table.clone(),
            changes: Some(Box::new(Changes {
                records,
                table: builder.finish_table(),
                hidden,
            })),
        })
    }

    /// Whether the token `id` is in this index, or was deleted from it by
    /// a change: a change to it is one to this index.
    pub fn concerns(&self, id: &str) -> bool {
        self.changes
            .as_ref()
            .is_some_and(|c| c.records.contains_key(id))
            || self.table.find_id(id).is_some()
    }

    /// How many tokens changed since the last full load.
    pub fn changed_since_load(&self) -> usize {
        self.changes.as_ref().map_or(0, |c| c.records.len())
    }

    /// The entry for a presented token's hash.
    #[inline]
    pub fn get(&self, hash: &TokenHash) -> Option<&TokenEntry> {
        match &self.changes {
            None => self.table.get(hash),
            Some(c) => c
                .table
                .get(hash)
                .or_else(|| self.table.get(hash).filter(|e| !c.hides(e))),
        }
    }

    /// The split-token rules this index was built with.
    #[inline]
    pub fn split_rules(&self) -> Option<&SplitTokens> {
        self.table.split_rules()
    }

    /// The entry for a presented split token (`rules` claims it): every
    /// way it can be wrong — shape, key, pepper, digest — is `None`; the
    /// digest is compared in constant time.
    pub fn get_split(&self, rules: &SplitTokens, token: &[u8]) -> Option<&TokenEntry> {
        match &self.changes {
            None => self.table.get_split(rules, token),
            Some(c) => c
                .table
                .get_split(rules, token)
                .or_else(|| self.table.get_split(rules, token).filter(|e| !c.hides(e))),
        }
    }

    /// The split key of the token with this id, if it is a split token
    /// (a scan: for `explain`, not the request path).
    pub fn split_key_of(&self, id: &str) -> Option<&SplitKey> {
        match self.changes.as_ref().filter(|c| c.records.contains_key(id)) {
            Some(c) => c.table.split_key_of(id),
            None => self.table.split_key_of(id),
        }
    }

    /// The entry with this id.
    pub fn find_id(&self, id: &str) -> Option<&TokenEntry> {
        match self.changes.as_ref().filter(|c| c.records.contains_key(id)) {
            Some(c) => c.table.find_id(id),
            None => self.table.find_id(id),
        }
    }

    /// Whether a token with this id is in the index.
    pub fn contains_id(&self, id: &str) -> bool {
        self.find_id(id).is_some()
    }

    /// Number of entries, disabled and expired ones included.
    pub fn len(&self) -> usize {
        match &self.changes {
            None => self.table.len(),
            Some(c) => self.table.len() - c.hidden + c.table.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many rows of the read this index was built from were skipped
    /// as invalid (always 0 for a token file, which is all-or-nothing).
    pub fn rows_invalid(&self) -> usize {
        self.table.rows_invalid
    }

    /// Every entry, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &TokenEntry> {
        let changes = self.changes.as_deref();
        let table = self
            .table
            .entries
            .iter()
            .filter(move |e| !changes.is_some_and(|c| c.hides(e)));
        table.chain(changes.into_iter().flat_map(|c| c.table.entries.iter()))
    }
}

/// Builds a [`TokenIndex`] one record at a time, checking as it goes; a
/// builder that returned an error must be dropped, never finished.
#[derive(Debug)]
pub struct IndexBuilder {
    index: Table,
    scope_sets: HashMap<Vec<Scope>, Arc<ScopeSet>>,
    /// The chunk ids are being copied into.
    id_chunk: BytesMut,
}

impl Default for IndexBuilder {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl IndexBuilder {
    /// A builder with room for `n` tokens (a hint; it grows past it).
    pub fn with_capacity(n: usize) -> Self {
        IndexBuilder {
            index: Table {
                entries: Vec::with_capacity(n),
                by_hash: HashTable::with_capacity(n),
                by_id: HashTable::with_capacity(n),
                ids: RandomState::new(),
                rows_invalid: 0,
                split: None,
                split_keys: Vec::new(),
                by_key: HashTable::new(),
            },
            scope_sets: HashMap::new(),
            id_chunk: BytesMut::new(),
        }
    }

    /// Number of records pushed so far.
    pub fn len(&self) -> usize {
        self.index.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.entries.is_empty()
    }

    /// The split-token rules the finished index verifies split tokens with.
    pub fn split_rules(&mut self, rules: Option<Arc<SplitTokens>>) {
        self.index.split = rules;
    }

    /// Counts one row that was read but skipped as invalid.
    pub fn skip_invalid(&mut self) {
        self.index.rows_invalid += 1;
    }

    /// Adds one record; refuses a duplicate id and a duplicate hash.
    pub fn push(&mut self, r: TokenRecord) -> Result<(), IndexError> {
        let err = |problem: &'static str| IndexError {
            id: r.id.clone(),
            problem,
        };
        let index = &mut self.index;
        let position = u32::try_from(index.entries.len())
            .ok()
            .filter(|&p| p < u32::MAX)
            .ok_or_else(|| err("too many tokens for one index"))?;
        let id_bytes = r.id.as_str().as_bytes();
        let entries = &index.entries;
        let ids = &index.ids;
        let id_slot = match index.by_id.entry(
            ids.hash_one(id_bytes),
            |&i| entries[i as usize].id_str().as_bytes() == id_bytes,
            |&i| ids.hash_one(entries[i as usize].id_str().as_bytes()),
        ) {
            Entry::Occupied(_) => return Err(err("duplicate id")),
            Entry::Vacant(slot) => slot,
        };
        // A plain token is found by its hash, a split one by its key.
        let lookup_slot = match &r.split {
            None => match index.by_hash.entry(
                digest_hash(&r.hash),
                |&i| entries[i as usize].hash == r.hash,
                |&i| digest_hash(&entries[i as usize].hash),
            ) {
                Entry::Occupied(_) => return Err(err("its hash duplicates another token's")),
                Entry::Vacant(slot) => LookupSlot::Hash(slot),
            },
            Some(split) => {
                let keys = &index.split_keys;
                let key = split.key.as_bytes();
                match index.by_key.entry(
                    ids.hash_one(key),
                    |&i| keys[i as usize].1.key.as_bytes() == key,
                    |&i| ids.hash_one(keys[i as usize].1.key.as_bytes()),
                ) {
                    Entry::Occupied(_) => {
                        return Err(err("its split-token key duplicates another token's"))
                    }
                    Entry::Vacant(slot) => LookupSlot::Key(slot),
                }
            }
        };
        let scopes = match self.scope_sets.get(&r.scopes) {
            Some(s) => s.clone(),
            None => {
                let header = HeaderValue::from_str(&r.scopes.join(" "))
                    .map_err(|_| err("a scope is not visible ASCII"))?;
                let set = Arc::new(ScopeSet {
                    names: r.scopes.iter().map(|s| s.as_str().into()).collect(),
                    header,
                });
                self.scope_sets.insert(r.scopes.clone(), set.clone());
                set
            }
        };
        // Both slots are taken only once nothing can fail any more.
        id_slot.insert(position);
        match lookup_slot {
            LookupSlot::Hash(slot) => {
                slot.insert(position);
            }
            LookupSlot::Key(slot) => {
                let at = u32::try_from(index.split_keys.len()).unwrap_or(u32::MAX);
                slot.insert(at);
                if let Some(split) = r.split {
                    index.split_keys.push((position, split));
                }
            }
        }
        let id = shared_id(&mut self.id_chunk, &r.id);
        index.entries.push(TokenEntry {
            hash: r.hash,
            id,
            scopes,
            read_only: r.read_only,
            disabled: r.disabled,
            expires_at: r.expires_at.map(|t| t.unix_timestamp()),
            allowed_ips: r.allowed_ips.into_boxed_slice(),
            rate_limit: r.rate_limit,
            limiter: OnceLock::new(),
            usage: OnceLock::new(),
        });
        Ok(())
    }

    /// The finished index, trimmed to its size.
    pub fn finish(self) -> TokenIndex {
        TokenIndex {
            table: Arc::new(self.finish_table()),
            changes: None,
        }
    }

    fn finish_table(self) -> Table {
        let mut table = self.index;
        table.entries.shrink_to_fit();
        table.split_keys.shrink_to_fit();
        table
    }
}

/// Where a new entry will be found: by its hash, or by its split key.
enum LookupSlot<'a> {
    Hash(hashbrown::hash_table::VacantEntry<'a, u32>),
    Key(hashbrown::hash_table::VacantEntry<'a, u32>),
}

/// `id` again, with its bytes in a shared chunk: one allocation per 64 KiB
/// of ids, not one per id.
fn shared_id(chunk: &mut BytesMut, id: &TokenId) -> TokenId {
    let text = id.as_str().as_bytes();
    if chunk.capacity() - chunk.len() < text.len() {
        *chunk = BytesMut::with_capacity(ID_CHUNK);
    }
    chunk.extend_from_slice(text);
    TokenId::from_shared(chunk.split().freeze()).unwrap_or_else(|| id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::id::id;

    fn rec(id: &str, secret: &str, scopes: &[&str]) -> TokenRecord {
        TokenRecord::new(
            TokenId::parse(id).unwrap(),
            TokenHash::of(secret.as_bytes()),
            scopes.iter().map(|s| Scope::parse(s).unwrap()).collect(),
        )
    }

    #[test]
    fn lookup_finds_a_token_by_the_hash_of_its_secret() {
        let idx =
            TokenIndex::build(vec![rec("a", "s1", &["x"]), rec("b", "s2", &["y", "z"])]).unwrap();
        let e = idx.get(&TokenHash::of(b"s2")).unwrap();
        assert_eq!(e.id_str(), "b");
        assert_eq!(e.scopes.header, "y z");
        assert!(idx.get(&TokenHash::of(b"s3")).is_none());
        assert_eq!(idx.len(), 2);
    }

    #[test]
    fn lookup_by_id_finds_the_same_entry_as_by_hash() {
        let idx = TokenIndex::build(vec![rec("a", "s1", &["x"]), rec("b", "s2", &[])]).unwrap();
        let by_id = idx.find_id("b").unwrap();
        assert!(std::ptr::eq(by_id, idx.get(&TokenHash::of(b"s2")).unwrap()));
        assert!(idx.contains_id("a"));
        assert!(!idx.contains_id("c"));
        assert!(!idx.contains_id(""));
    }

    #[test]
    fn tokens_with_the_same_scopes_share_one_scope_set() {
        let idx = TokenIndex::build(vec![rec("a", "s1", &["x"]), rec("b", "s2", &["x"])]).unwrap();
        let a = idx.get(&TokenHash::of(b"s1")).unwrap();
        let b = idx.get(&TokenHash::of(b"s2")).unwrap();
        assert!(Arc::ptr_eq(&a.scopes, &b.scopes));
    }

    #[test]
    fn duplicate_ids_or_hashes_fail_the_whole_build() {
        assert!(TokenIndex::build(vec![rec("a", "s1", &[]), rec("a", "s2", &[])]).is_err());
        let e = TokenIndex::build(vec![rec("a", "s1", &[]), rec("b", "s1", &[])]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "token \"b\": its hash duplicates another token's"
        );
        assert!(!e.to_string().contains(&TokenHash::of(b"s1").to_hex()));
    }

    #[test]
    fn a_refused_record_leaves_no_trace_in_the_builder() {
        let mut b = IndexBuilder::default();
        b.push(rec("a", "s1", &["x"])).unwrap();
        // Same id, new secret: refused, and its secret must not be findable.
        assert!(b.push(rec("a", "s2", &["x"])).is_err());
        // New id, same secret: refused, and its id must not be taken.
        assert!(b.push(rec("b", "s1", &["x"])).is_err());
        b.push(rec("b", "s3", &["x"])).unwrap();
        let idx = b.finish();
        assert_eq!(idx.len(), 2);
        assert!(idx.get(&TokenHash::of(b"s2")).is_none());
        assert_eq!(idx.find_id("b").unwrap().id_str(), "b");
    }

    #[test]
    fn changes_replace_add_and_remove_tokens_and_hide_the_old_entries() {
        let base = TokenIndex::build(vec![
            rec("a", "s1", &["x"]),
            rec("b", "s2", &["x"]),
            rec("c", "s3", &["x"]),
        ])
        .unwrap();
        let mut revoked = rec("a", "s1", &["x"]);
        revoked.disabled = true;
        let idx = base
            .with_changes([
                (revoked.id.clone(), Some(revoked)),
                (id("b"), None),
                (id("never-here"), None),
                (id("d"), Some(rec("d", "s4", &["y"]))),
            ])
            .unwrap();
        assert!(idx.get(&TokenHash::of(b"s1")).unwrap().disabled);
        assert!(idx.get(&TokenHash::of(b"s2")).is_none());
        assert!(!idx.contains_id("b"));
        assert_eq!(idx.get(&TokenHash::of(b"s4")).unwrap().id_str(), "d");
        assert_eq!(idx.get(&TokenHash::of(b"s3")).unwrap().id_str(), "c");
        assert_eq!(idx.len(), 3);
        let mut ids: Vec<_> = idx.entries().map(|e| e.id_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["a", "c", "d"]);
        // A rotated secret: the old one is refused, the new one found.
        let later = idx
            .with_changes([(id("c"), Some(rec("c", "s5", &["x"])))])
            .unwrap();
        assert!(later.get(&TokenHash::of(b"s3")).is_none());
        assert_eq!(later.find_id("c").unwrap().hash(), &TokenHash::of(b"s5"));
        assert_eq!(later.changed_since_load(), 4);
        assert!(later.get(&TokenHash::of(b"s1")).unwrap().disabled);
        // A token added by a change and then deleted is gone.
        let gone = later.with_changes([(id("d"), None)]).unwrap();
        assert!(gone.get(&TokenHash::of(b"s4")).is_none());
        assert_eq!(gone.len(), 2);
        // The base is untouched and shared.
        assert!(!base.get(&TokenHash::of(b"s1")).unwrap().disabled);
        assert!(Arc::ptr_eq(&base.table, &later.table));
    }

    #[test]
    fn the_longest_id_goes_into_the_index_and_back_out_whole() {
        let long = "x".repeat(crate::tokens::id::MAX_ID_LEN);
        let idx = TokenIndex::build(vec![rec(&long, "s1", &[])]).unwrap();
        assert_eq!(idx.find_id(&long).unwrap().id.header(), long.as_str());
        assert_eq!(idx.rows_invalid(), 0);
    }

    #[test]
    fn many_ids_spanning_several_chunks_keep_their_own_bytes() {
        let n = 3 * ID_CHUNK / 20;
        let records: Vec<_> = (0..n)
            .map(|i| rec(&format!("token-{i:014}"), &format!("secret-{i}"), &["s"]))
            .collect();
        let idx = TokenIndex::build(records).unwrap();
        assert_eq!(idx.len(), n);
        for i in [0, 1, n / 2, n - 1] {
            let e = idx.get(&TokenHash::of(format!("secret-{i}").as_bytes()));
            assert_eq!(e.unwrap().id_str(), format!("token-{i:014}"));
        }
    }

    fn split_rules() -> Arc<SplitTokens> {
        let peppers = HashMap::from([("1".into(), b"pepper-one".to_vec().into_boxed_slice())]);
        Arc::new(SplitTokens::new("nbt_", ".", peppers))
    }

    fn split_rec(id: &str, key: &str, pepper_id: &str, secret: &str) -> TokenRecord {
        let digest = crate::tokens::split::hmac_hex(b"pepper-one", secret.as_bytes());
        let split = SplitKey {
            key: key.into(),
            digest: crate::tokens::split::SplitDigest::from_hex(pepper_id, &digest).unwrap(),
        };
        let mut r = rec(id, "unused", &["x"]);
        r.hash = split.binding_hash();
        r.split = Some(split);
        r
    }

    fn split_index(records: Vec<TokenRecord>) -> Result<TokenIndex, IndexError> {
        let mut b = IndexBuilder::default();
        b.split_rules(Some(split_rules()));
        for r in records {
            b.push(r)?;
        }
        Ok(b.finish())
    }

    #[test]
    fn a_split_token_is_found_by_its_key_and_verified_by_its_digest() {
        let idx = split_index(vec![
            split_rec("v2", "k1", "1", "s3cret"),
            split_rec("v2-other-pepper", "k2", "9", "s3cret"),
            rec("v1", "plain", &["x"]),
        ])
        .unwrap();
        let rules = idx.split_rules().unwrap();
        assert_eq!(
            idx.get_split(rules, b"nbt_k1.s3cret").unwrap().id_str(),
            "v2"
        );
        assert!(
            idx.get_split(rules, b"nbt_k1.s3cres").is_none(),
            "wrong digest"
        );
        assert!(
            idx.get_split(rules, b"nbt_k3.s3cret").is_none(),
            "unknown key"
        );
        assert!(
            idx.get_split(rules, b"nbt_k2.s3cret").is_none(),
            "unknown pepper"
        );
        assert!(idx.get_split(rules, b"nbt_k1").is_none(), "wrong shape");
        // A split token is never found by a hash, whatever is presented.
        let v2 = idx.find_id("v2").unwrap();
        assert!(idx.get(v2.hash()).is_none());
        assert_eq!(idx.get(&TokenHash::of(b"plain")).unwrap().id_str(), "v1");
    }

    #[test]
    fn a_duplicate_split_key_fails_the_build_and_leaves_no_trace() {
        let e = split_index(vec![
            split_rec("a", "k1", "1", "one"),
            split_rec("b", "k1", "1", "two"),
        ])
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "token \"b\": its split-token key duplicates another token's"
        );
        let mut b = IndexBuilder::default();
        b.split_rules(Some(split_rules()));
        b.push(split_rec("a", "k1", "1", "one")).unwrap();
        assert!(b.push(split_rec("b", "k1", "1", "two")).is_err());
        b.push(split_rec("c", "k2", "1", "two")).unwrap();
        let idx = b.finish();
        let rules = idx.split_rules().unwrap();
        assert!(idx.find_id("b").is_none());
        assert_eq!(idx.get_split(rules, b"nbt_k2.two").unwrap().id_str(), "c");
        assert_eq!(idx.get_split(rules, b"nbt_k1.one").unwrap().id_str(), "a");
    }

    #[test]
    fn expiry_and_disabled_make_a_token_dead() {
        let mut r = rec("a", "s1", &[]);
        r.expires_at = Some(time::OffsetDateTime::from_unix_timestamp(100).unwrap());
        let idx = TokenIndex::build(vec![r]).unwrap();
        let e = idx.get(&TokenHash::of(b"s1")).unwrap();
        assert!(e.is_live(99));
        assert!(!e.is_live(100));
    }
}
