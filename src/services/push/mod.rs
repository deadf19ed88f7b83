//! Push rules, notification counts, pushers and their delivery.
//!
//! Spec: client-server API, "Push Notifications" ("Push Rules", "Predefined Rules",
//! `GET/PUT/DELETE /pushrules/...`, `GET /notifications`, `GET /pushers`,
//! `POST /pushers/set`), `/sync`'s `unread_notifications`, and the push gateway API.
//! Each user's rules are evaluated ([`crate::core::push_rules`]) for every event of the
//! rooms they are joined to (and for an invite of theirs), unless they ignore its sender
//! (as Synapse: an ignored user's events neither push nor count), inside the event's write batch
//! (a [`NewEventHook`]), so counts and the event reach a syncing client together. An
//! event whose actions notify leaves one entry per user; the unread counts are the
//! entries after the user's read receipt, so reading up to an event clears everything
//! before it, and a redaction deletes its target's entries.
//!
//! A notifying event for users with pushers also queues one entry in the same batch,
//! listing those users' tags ([`queue`], [`delivery`]).
//!
//! Owns the tables `userid_pushrules`, `userid_shortroomid_pos_notify`,
//! `userid_appid_pushkey_pusher`, `pos_pushqueue` and `pusherkey_pushcursor`.

mod badge;
pub mod delivery;
pub mod notifications;
pub mod pushers;
mod queue;
mod ruleset_cache;
mod unread_cache;

use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::core::push_rules::{self, RuleEditError, Ruleset};
use crate::services::accounts::ignore_lists::IgnoreLists;
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::records::{decode, encode};
use crate::services::stream::{StreamChange, StreamPositions};
use crate::services::StripedLocks;
use crate::storage::{keys, Db, Table};
use pushers::{Pusher, PusherChange, PusherIndex, MAX_PUSHERS_PER_USER};

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
    rulesets: Arc<ruleset_cache::RulesetCache>,
    locks: StripedLocks,
    /// Every pusher (the table's contents), published whole: a reader takes the current
    /// index and holds no lock while it reads (the delivery worker's low-priority threads
    /// read it too, and a change must never wait for them, nor the send path behind it).
    pushers: RwLock<Arc<PusherIndex>>,
    /// Serializes pusher changes.
    pusher_lock: tokio::sync::Mutex<()>,
    /// Wakes the delivery worker.
    delivery: Arc<delivery::Delivery>,
    /// Unread counts already made (see [`unread_cache`]).
    unread: unread_cache::UnreadCache,
    /// The rooms a push's badge sums (see [`badge`]).
    badge: badge::BadgeRooms,
    /// Who ignores whom (an ignored sender's events notify nobody who ignores them).
    ignore_lists: Arc<IgnoreLists>,
}

fn rule_error(e: RuleEditError) -> ServiceError {
    match e {
        RuleEditError::NotFound => ServiceError::not_found("Push rule not found"),
        RuleEditError::Reserved => ServiceError::invalid_param(
            "Rule ids starting with '.' are reserved for the server's rules",
        ),
        RuleEditError::BadPlacement(m) => ServiceError::not_found(m),
        RuleEditError::Invalid(m) => {
            ServiceError::new(ErrorKind::Invalid, ErrorCode::InvalidParam, m)
        }
    }
}

impl Push {
    /// The service over `db`, with the stored pushers loaded.
    pub fn open(
        db: Arc<Db>,
        stream: Arc<StreamPositions>,
        ignore_lists: Arc<IgnoreLists>,
    ) -> ServiceResult<Self> {
        let mut all = Vec::new();
        for entry in db.scan_prefix(Table::UseridAppidPushkeyPusher, &[]) {
            let (_, value) = entry?;
            all.push(decode::<Pusher>(Table::UseridAppidPushkeyPusher, &value)?);
        }
        Ok(Self {
            db,
            stream,
            rulesets: Arc::default(),
            locks: StripedLocks::default(),
            pushers: RwLock::new(Arc::new(PusherIndex::new(all))),
            pusher_lock: tokio::sync::Mutex::new(()),
            delivery: Arc::default(),
            unread: unread_cache::UnreadCache::default(),
            badge: badge::BadgeRooms::default(),
            ignore_lists,
        })
    }

    fn pusher_index(&self) -> Arc<PusherIndex> {
        Arc::clone(&self.pushers.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The user's pushers, as `GET /pushers` lists them.
    pub fn pushers(&self, user_id: &str) -> Vec<Value> {
        let mut list: Vec<Value> = self
            .pusher_index()
            .of(user_id)
            .iter()
            .map(Pusher::to_client)
            .collect();
        list.sort_by(|a, b| a["app_id"].as_str().cmp(&b["app_id"].as_str()));
        list
    }

    /// Applies a `POST /pushers/set`. Spec: without `append`, "the homeserver must remove
    /// any other pushers with the same App ID and pushkey for different users"; deleting
    /// a pusher that does not exist is not an error.
    pub async fn change_pusher(&self, user_id: &str, change: PusherChange) -> ServiceResult<()> {
        let _guard = self.pusher_lock.lock().await;
        let mut batch = self.db.batch();
        // The index changes once the batch is durable, so that memory never claims what
        // the table does not hold.
        let mut removed: Vec<(String, Vec<u8>)> = Vec::new();
        let mut added = None;
        match change {
            PusherChange::Delete { app_id, pushkey } => {
                let key = pushers::pusher_key(user_id, &app_id, &pushkey);
                if self.pusher_index().find(user_id, &key).is_some() {
                    batch.delete(Table::UseridAppidPushkeyPusher, &key);
                    queue::delete_cursor(&mut batch, &key);
                    removed.push((user_id.to_owned(), key));
                }
            }
            PusherChange::Set { pusher, append } => {
                let (others, count) = {
                    let index = self.pusher_index();
                    let others = if append {
                        Vec::new()
                    } else {
                        index.others_with(user_id, &pusher.app_id, &pusher.pushkey)
                    };
                    let replacing = index.find(user_id, &pusher.key()).is_some();
                    (others, index.of(user_id).len() + usize::from(!replacing))
                };
                if count > MAX_PUSHERS_PER_USER {
                    return Err(ServiceError::forbidden(format!(
                        "At most {MAX_PUSHERS_PER_USER} pushers per user: remove one first"
                    )));
                }
                for other in others {
                    batch.delete(Table::UseridAppidPushkeyPusher, other.key());
                    queue::delete_cursor(&mut batch, &other.key());
                    removed.push((other.user_id.clone(), other.key()));
                }
                batch.put(
                    Table::UseridAppidPushkeyPusher,
                    pusher.key(),
                    encode(&pusher),
                );
                // A new pusher gets what comes from now on (a cursor left by one removed
                // earlier does not count); one set again keeps its place.
                let existing = self.pusher_index().find(user_id, &pusher.key()).is_some();
                if !existing {
                    queue::put_cursor(&mut batch, &pusher.key(), self.stream.watermark());
                }
                added = Some(*pusher);
            }
        }
        self.db.commit(batch).await?;
        for (user, key) in removed {
            self.forget_pushers(&user, &[key]);
        }
        if let Some(pusher) = added {
            let mut index = self.pushers.write().unwrap_or_else(PoisonError::into_inner);
            Arc::make_mut(&mut index).insert(pusher);
        }
        Ok(())
    }

    /// Drops pushers from the index (their records are deleted; the worker forgets them
    /// and the queue entries only they still wanted go with the others').
    fn forget_pushers(&self, user_id: &str, keys: &[Vec<u8>]) {
        let none_left = {
            let mut index = self.pushers.write().unwrap_or_else(PoisonError::into_inner);
            let index = Arc::make_mut(&mut index);
            index.remove_where(user_id, |p| keys.contains(&p.key()));
            !index.has_any(user_id)
        };
        // Not under the index's lock: the send path reads the index, and the badge's lock
        // is taken by the delivery worker's low-priority threads.
        if none_left {
            self.badge.forget(user_id);
        }
    }

    /// Removes the pushers the user's `devices` set (the devices are being deleted).
    pub async fn remove_device_pushers(
        &self,
        user_id: &str,
        devices: &[String],
    ) -> ServiceResult<()> {
        if !self.pusher_index().has_any(user_id) {
            return Ok(());
        }
        let _guard = self.pusher_lock.lock().await;
        let gone: Vec<Vec<u8>> = self
            .pusher_index()
            .of(user_id)
            .iter()
            .filter(|p| devices.contains(&p.device_id))
            .map(Pusher::key)
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch();
        for key in &gone {
            batch.delete(Table::UseridAppidPushkeyPusher, key);
            queue::delete_cursor(&mut batch, key);
        }
        self.db.commit(batch).await?;
        self.forget_pushers(user_id, &gone);
        Ok(())
    }

    /// The short ids of the rooms the user has notification entries in.
    fn rooms_with_notifications(&self, user_id: &str) -> ServiceResult<Vec<u64>> {
        let prefix = keys::prefix(user_id.as_bytes());
        let end = keys::prefix_successor(&prefix).unwrap_or_else(|| vec![0xff; prefix.len() + 1]);
        let mut rooms = Vec::new();
        let mut from = prefix.clone();
        loop {
            let Some(first) = self
                .db
                .scan_range(Table::UseridShortroomidPosNotify, &from, &end, false)
                .next()
            else {
                break;
            };
            let (key, _) = first?;
            let Some(room) = key
                .get(prefix.len()..prefix.len() + 8)
                .and_then(keys::read_u64)
            else {
                break;
            };
            rooms.push(room);
            let Some(next) = room.checked_add(1) else {
                break;
            };
            from = prefix.clone();
            from.extend_from_slice(&next.to_be_bytes());
        }
        Ok(rooms)
    }

    /// The user's stored rules. A record that cannot be decoded (damaged) counts as none,
    /// logged: the server's defaults stand in for it (one member's bad record must not
    /// fail every event of their rooms, nor their own syncs), and their next change of
    /// rules replaces it. A read that fails is an error.
    fn record(&self, user_id: &str) -> ServiceResult<Option<RulesRecord>> {
        let Some(bytes) = self.db.get(Table::UseridPushrules, user_id)? else {
            return Ok(None);
        };
        match decode(Table::UseridPushrules, &bytes) {
            Ok(record) => Ok(Some(record)),
            Err(e) => {
                tracing::warn!(user = user_id, error = %e.message, "unreadable push rules: the defaults stand in");
                Ok(None)
            }
        }
    }

    /// The user's rules: the stored ones brought up to the server's defaults, or the
    /// defaults.
    pub fn ruleset(&self, user_id: &str) -> ServiceResult<Arc<Ruleset>> {
        let miss = match self.rulesets.get(user_id) {
            Ok(cached) => return Ok(cached),
            Err(miss) => miss,
        };
        let stored = self.record(user_id)?.map(|r| r.ruleset);
        let ruleset = Arc::new(push_rules::with_server_defaults(stored, user_id));
        self.rulesets.fill(user_id, &ruleset, miss);
        Ok(ruleset)
    }

    /// Changes the user's rules with `edit`, durably, and tells their syncing clients.
    pub async fn update_rules(
        &self,
        user_id: &str,
        edit: impl FnOnce(&mut Ruleset) -> Result<(), RuleEditError>,
    ) -> ServiceResult<()> {
        let guard = self.locks.lock_owned(user_id.as_bytes()).await;
        // From the stored rules, not the cache: a cache emptied while another change was
        // being written may have been filled again from the record before it.
        let stored = self.record(user_id)?.map(|r| r.ruleset);
        let mut ruleset = push_rules::with_server_defaults(stored, user_id);
        edit(&mut ruleset).map_err(rule_error)?;
        let stored = ruleset.clone();
        let key = user_id.as_bytes().to_vec();
        let (rulesets, stream, user) = (
            Arc::clone(&self.rulesets),
            Arc::clone(&self.stream),
            user_id.to_owned(),
        );
        // The cache first (an event written from now on uses the new rules), then the
        // write, then the cache again (a cache emptied meanwhile may have been filled
        // from the record before it), or read again if the write failed: in a task of
        // their own, holding the user's lock to their end even if the request is dropped
        // meanwhile, so that the cache is never left ahead of or behind what is stored.
        let ruleset = Arc::new(ruleset);
        let write = async move {
            let _guard = guard;
            rulesets.set(&user, Arc::clone(&ruleset));
            let written = stream
                .write_at_new_position(
                    move |pos| {
                        let record = RulesRecord {
                            pos,
                            ruleset: stored,
                        };
                        vec![(Table::UseridPushrules, key, Some(encode(&record)))]
                    },
                    vec![StreamChange::AccountData { user: user.clone() }],
                )
                .await;
            match &written {
                Ok(_) => rulesets.set(&user, ruleset),
                Err(_) => rulesets.forget(&user),
            }
            written
        };
        tokio::spawn(write)
            .await
            .map_err(|e| ServiceError::internal(format!("push rules write failed: {e}")))??;
        Ok(())
    }

    /// The `m.push_rules` account data event, if the rules changed in `(after, upto]`
    /// (always when `after` is `None`).
    pub fn rules_event(
        &self,
        user_id: &str,
        after: Option<u64>,
        upto: u64,
    ) -> ServiceResult<Option<Value>> {
        let record = self.record(user_id)?;
        if let Some(after) = after {
            let changed = record
                .as_ref()
                .is_some_and(|r| r.pos > after && r.pos <= upto);
            if !changed {
                return Ok(None);
            }
        }
        // The rules of the record read, not the cache's: while a change is being written
        // the cache may hold the rules before it, and a sync past the change must not
        // send those.
        let ruleset = push_rules::with_server_defaults(record.map(|r| r.ruleset), user_id);
        Ok(Some(
            json!({ "type": "m.push_rules", "content": { "global": ruleset } }),
        ))
    }
}

impl crate::services::accounts::DeviceRemovalHook for Push {
    fn devices_removed<'a>(
        &'a self,
        user_id: &'a str,
        devices: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, ServiceResult<()>> {
        Box::pin(self.remove_device_pushers(user_id, devices))
    }
}
