//! The current snapshot: one `ArcSwap` that every request loads once.
//!
//! A snapshot pairs a policy with the token index; each is replaced whole,
//! so a request sees either the old or the new state, never a mix.
//! Invariant: only complete results are stored.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Policy;
use crate::tokens::TokenIndex;

/// What a request is judged by.
pub struct Snapshot {
    pub policy: Arc<Policy>,
    /// `None` until the first successful token load.
    pub tokens: Option<Arc<TokenIndex>>,
}

/// The current snapshot, swapped whole on every reload.
pub struct Current(ArcSwap<Snapshot>);

impl Current {
    pub fn new(policy: Policy) -> Self {
        Current(ArcSwap::from_pointee(Snapshot {
            policy: Arc::new(policy),
            tokens: None,
        }))
    }

    /// The snapshot a request is judged by.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.0.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Replaces the policy, keeping the token index.
    pub fn set_policy(&self, policy: Policy) {
        let policy = Arc::new(policy);
        self.0.rcu(|old| Snapshot {
            policy: policy.clone(),
            tokens: old.tokens.clone(),
        });
    }

    /// Replaces the token index, keeping the policy.
    pub fn set_tokens(&self, tokens: TokenIndex) {
        let tokens = Arc::new(tokens);
        self.0.rcu(|old| Snapshot {
            policy: old.policy.clone(),
            tokens: Some(tokens.clone()),
        });
    }
}
