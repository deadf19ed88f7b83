//! Push rules and notification counts.
//!
//! Spec: client-server API, "Push Notifications" ("Push Rules", "Predefined Rules",
//! `GET/PUT/DELETE /pushrules/...`, `GET /notifications`), and `/sync`'s
//! `unread_notifications`. Each user's rules are evaluated ([`crate::core::push_rules`])
//! for every event of the rooms they are joined to, inside the event's write batch (a
//! [`NewEventHook`]), so counts and the event reach a syncing client together. An event
//! whose actions notify leaves one entry per user; the unread counts are the entries after
//! the user's read receipt, so reading up to an event clears everything before it.
//!
//! Owns the tables `userid_pushrules` and `userid_shortroomid_pos_notify`.

pub mod notifications;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::core::push_rules::{self, RuleEditError, Ruleset};
use crate::error::{ErrorCode, MatrixError, MatrixResult};
use crate::services::records::{decode, encode};
use crate::services::stream::{StreamChange, StreamPositions};
use crate::services::StripedLocks;
use crate::storage::{Db, Table};

/// Parsed rulesets kept in memory at most (the cache is cleared past this).
const MAX_CACHED_RULESETS: usize = 10_000;

/// `userid_pushrules`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RulesRecord {
    /// Stream position of the last change.
    pos: u64,
    ruleset: Ruleset,
}

/// The push service.
pub struct Push {
    db: Arc<Db>,
    stream: Arc<StreamPositions>,
    rulesets: Mutex<HashMap<String, Arc<Ruleset>>>,
    locks: StripedLocks,
}

fn rule_error(e: RuleEditError) -> MatrixError {
    match e {
        RuleEditError::NotFound => MatrixError::not_found("Push rule not found"),
        RuleEditError::Reserved => MatrixError::invalid_param(
            "Rule ids starting with '.' are reserved for the server's rules",
        ),
        RuleEditError::BadPlacement(m) => MatrixError::not_found(m),
        RuleEditError::Invalid(m) => MatrixError::new(400, ErrorCode::InvalidParam, m),
    }
}

impl Push {
    /// The service over `db`.
    pub fn new(db: Arc<Db>, stream: Arc<StreamPositions>) -> Self {
        Self {
            db,
            stream,
            rulesets: Mutex::new(HashMap::new()),
            locks: StripedLocks::default(),
        }
    }

    fn record(&self, user_id: &str) -> MatrixResult<Option<RulesRecord>> {
        self.db
            .get(Table::UseridPushrules, user_id)?
            .map(|b| decode(Table::UseridPushrules, &b))
            .transpose()
    }

    /// The user's rules: the stored ones brought up to the server's defaults, or the
    /// defaults.
    pub fn ruleset(&self, user_id: &str) -> MatrixResult<Arc<Ruleset>> {
        if let Some(cached) = self
            .rulesets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(user_id)
        {
            return Ok(Arc::clone(cached));
        }
        let stored = self.record(user_id)?.map(|r| r.ruleset);
        let ruleset = Arc::new(push_rules::with_server_defaults(stored, user_id));
        let mut cache = self.rulesets.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_RULESETS {
            cache.clear();
        }
        cache.insert(user_id.to_owned(), Arc::clone(&ruleset));
        Ok(ruleset)
    }

    /// Changes the user's rules with `edit`, durably, and tells their syncing clients.
    pub async fn update_rules(
        &self,
        user_id: &str,
        edit: impl FnOnce(&mut Ruleset) -> Result<(), RuleEditError>,
    ) -> MatrixResult<()> {
        let _guard = self.locks.lock(user_id.as_bytes()).await;
        let mut ruleset = (*self.ruleset(user_id)?).clone();
        edit(&mut ruleset).map_err(rule_error)?;
        let stored = ruleset.clone();
        let key = user_id.as_bytes().to_vec();
        // The cache first: an event written from now on uses the new rules.
        self.rulesets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(user_id.to_owned(), Arc::new(ruleset));
        let written = self
            .stream
            .write_at_new_position(
                move |pos| {
                    let record = RulesRecord {
                        pos,
                        ruleset: stored,
                    };
                    vec![(Table::UseridPushrules, key, Some(encode(&record)))]
                },
                vec![StreamChange::AccountData {
                    user: user_id.to_owned(),
                }],
            )
            .await;
        if written.is_err() {
            self.rulesets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(user_id);
        }
        written?;
        Ok(())
    }

    /// The `m.push_rules` account data event, if the rules changed in `(after, upto]`
    /// (always when `after` is `None`).
    pub fn rules_event(
        &self,
        user_id: &str,
        after: Option<u64>,
        upto: u64,
    ) -> MatrixResult<Option<Value>> {
        if let Some(after) = after {
            let changed = self
                .record(user_id)?
                .is_some_and(|r| r.pos > after && r.pos <= upto);
            if !changed {
                return Ok(None);
            }
        }
        let ruleset = self.ruleset(user_id)?;
        Ok(Some(
            json!({ "type": "m.push_rules", "content": { "global": *ruleset } }),
        ))
    }
}
