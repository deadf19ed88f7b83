//! Who ignores whom, kept in memory: each local user's `m.ignored_user_list` and its
//! reverse, so that the send path learns in one lookup which members ignore an event's
//! sender (usually nobody), without reading anyone's account data.
//!
//! Spec: client-server API, "Ignoring Users": the server must not send the events of
//! ignored users to the client (state events excepted), nor their invites. As Synapse,
//! an ignored user's events that are not state neither push nor count as unread for the
//! user who ignores them; following the spec, their invites do not push either (Synapse
//! pushes them).
//!
//! Loaded from every local account at start-up
//! ([`super::account_data::load_ignore_lists`]; a list that cannot be read is taken as
//! empty, with a warning); changed by [`super::Accounts::update_account_data`] in the
//! list's own write, just before it commits.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use serde_json::Value;

/// The account data type that holds a user's ignore list.
pub const IGNORED_USER_LIST: &str = "m.ignored_user_list";

/// Every local user's ignore list and its reverse.
#[derive(Debug, Default)]
pub struct IgnoreLists {
    lists: RwLock<Lists>,
}

#[derive(Debug, Default)]
struct Lists {
    /// Whom each user ignores (users with an empty list are absent).
    ignores: HashMap<String, Vec<String>>,
    /// Who ignores each user (users nobody ignores are absent).
    ignored_by: HashMap<String, Vec<String>>,
}

/// The users an `m.ignored_user_list` content names (the keys of its `ignored_users`).
pub fn listed(content: &Value) -> Vec<String> {
    content
        .get("ignored_users")
        .and_then(Value::as_object)
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

impl IgnoreLists {
    /// Whom `user_id` ignores.
    pub fn ignored_by_user(&self, user_id: &str) -> Vec<String> {
        self.read()
            .ignores
            .get(user_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Who ignores `sender` (allocates nothing when nobody does).
    pub fn ignorers_of(&self, sender: &str) -> Vec<String> {
        self.read()
            .ignored_by
            .get(sender)
            .cloned()
            .unwrap_or_default()
    }

    /// `user_id` now ignores exactly `ignored`.
    pub fn set(&self, user_id: &str, mut ignored: Vec<String>) {
        ignored.sort_unstable();
        ignored.dedup();
        let mut lists = self.lists.write().unwrap_or_else(PoisonError::into_inner);
        let old = if ignored.is_empty() {
            lists.ignores.remove(user_id)
        } else {
            lists.ignores.insert(user_id.to_owned(), ignored.clone())
        };
        for gone in old.iter().flatten() {
            if let Some(by) = lists.ignored_by.get_mut(gone) {
                by.retain(|u| u != user_id);
                if by.is_empty() {
                    lists.ignored_by.remove(gone);
                }
            }
        }
        for target in ignored {
            lists
                .ignored_by
                .entry(target)
                .or_default()
                .push(user_id.to_owned());
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Lists> {
        self.lists.read().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reverse_follows_every_change() {
        let lists = IgnoreLists::default();
        lists.set("@a:x", vec!["@m:x".into(), "@n:x".into(), "@m:x".into()]);
        lists.set("@b:x", vec!["@m:x".into()]);
        assert_eq!(lists.ignorers_of("@m:x"), vec!["@a:x", "@b:x"]);
        assert_eq!(lists.ignorers_of("@n:x"), vec!["@a:x"]);
        assert_eq!(lists.ignored_by_user("@a:x"), vec!["@m:x", "@n:x"]);

        lists.set("@a:x", vec!["@n:x".into()]);
        assert_eq!(lists.ignorers_of("@m:x"), vec!["@b:x"]);
        assert_eq!(lists.ignorers_of("@n:x"), vec!["@a:x"]);

        lists.set("@a:x", Vec::new());
        lists.set("@b:x", Vec::new());
        assert!(lists.ignorers_of("@m:x").is_empty());
        assert!(lists.ignorers_of("@n:x").is_empty());
        assert!(lists.ignored_by_user("@a:x").is_empty());
        let inner = lists.read();
        assert!(inner.ignores.is_empty() && inner.ignored_by.is_empty());
    }

    #[test]
    fn a_list_is_the_keys_of_its_ignored_users() {
        let content = serde_json::json!({ "ignored_users": { "@m:x": {}, "@n:x": {} } });
        let mut named = listed(&content);
        named.sort();
        assert_eq!(named, vec!["@m:x", "@n:x"]);
        assert!(listed(&serde_json::json!({ "ignored_users": [] })).is_empty());
        assert!(listed(&serde_json::json!({})).is_empty());
    }
}
