//! A user's own settings of a room carried to the room that replaced it, when they join
//! it: the room's tags, its place in `m.direct`, and the push rules that name it.
//!
//! Spec: client-server API, "Room Upgrades", "Server behaviour": "When a user joins the
//! new room, the server should automatically transfer/replicate some of the user's
//! personalized settings such as notifications, tags, etc." What the user set in the new
//! room already is kept; the old room's settings stay as they were (as Synapse does).
//! With a room another server upgraded, our first member to join the new room (through
//! another server) also takes our aliases of the old room and its place in our room
//! directory there (the spec's "Server behaviour" asks the upgrading server to move them;
//! ours only we can move; Synapse does the same on its first join).

use serde_json::Value;

use super::error::ServiceResult;
use super::Services;
use crate::core::push_rules::{PushCondition, RuleBody, RuleKind, Ruleset};

impl Services {
    /// Carries `user_id`'s settings of the room `room_id` replaced (its create event's
    /// `predecessor`) over to `room_id`, once they joined it. Failures are logged: the
    /// join itself has happened.
    pub async fn carry_settings_from_predecessor(&self, user_id: &str, room_id: &str) {
        if let Err(e) = self.carry_settings(user_id, room_id).await {
            tracing::warn!(user = %user_id, room = %room_id, error = %e.message, "settings of the replaced room were not carried over");
        }
    }

    /// After our server's first member joined `room_id` (a join through another
    /// server): when it replaced a room (another server upgraded it), our aliases of the
    /// old room and its place in our directory move to it. Only then, once: an alias
    /// pointed at the old room again later stays. Failures are logged.
    pub async fn transfer_directory_from_predecessor(&self, user_id: &str, room_id: &str) {
        let moved = match self.upgraded_from(user_id, room_id) {
            Ok(Some(old)) => self.rooms.transfer_directory(&old, room_id).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = moved {
            tracing::warn!(room = %room_id, error = %e.message, "the replaced room's aliases and listing were not moved");
        }
    }

    /// The room `room_id` replaced, when its tombstone names `room_id` (any room can claim
    /// any predecessor) and `user_id` was joined to it.
    fn upgraded_from(&self, user_id: &str, room_id: &str) -> ServiceResult<Option<String>> {
        let Some(old) = self.rooms.predecessor(room_id)? else {
            return Ok(None);
        };
        if self.rooms.replacement(&old)?.as_deref() != Some(room_id) {
            return Ok(None);
        }
        let was_member = self
            .rooms
            .store()
            .membership(user_id, &old)?
            .is_some_and(|m| m.last_join_pos > 0);
        Ok(was_member.then_some(old))
    }

    async fn carry_settings(&self, user_id: &str, room_id: &str) -> ServiceResult<()> {
        let Some(old) = self.upgraded_from(user_id, room_id)? else {
            return Ok(());
        };
        let accounts = &self.accounts;
        if let Some(tags) = accounts.account_data(user_id, Some(&old), "m.tag")? {
            accounts
                .update_account_data(user_id, Some(room_id), "m.tag", |current| {
                    current.is_none().then_some(Some(tags))
                })
                .await?;
        }
        accounts
            .update_account_data(user_id, None, "m.direct", |current| {
                let mut direct = current?;
                let mut changed = false;
                for rooms in direct.as_object_mut()?.values_mut() {
                    let Some(rooms) = rooms.as_array_mut() else {
                        continue;
                    };
                    let has = |id: &str| rooms.iter().any(|r| r.as_str() == Some(id));
                    if has(&old) && !has(room_id) {
                        rooms.push(Value::String(room_id.to_owned()));
                        changed = true;
                    }
                }
                changed.then_some(Some(direct))
            })
            .await?;
        let copies = rules_naming_room(&*self.push.ruleset(user_id)?, &old, room_id);
        if !copies.is_empty() {
            self.push
                .update_rules(user_id, |rules| {
                    for (kind, rule_id, body, enabled) in copies {
                        if rules.rules(kind).iter().any(|r| r.rule_id == rule_id) {
                            continue;
                        }
                        // One rule the ruleset refuses is left out, not the others.
                        if rules.put_rule(kind, &rule_id, body, None, None).is_ok() && !enabled {
                            let _ = rules.set_enabled(kind, &rule_id, false);
                        }
                    }
                    Ok(())
                })
                .await?;
        }
        Ok(())
    }
}

/// Copies of the user's rules that name room `old`, naming `new` instead (and whether
/// each was enabled): its `room` rule, and `override` and `underride` rules with a
/// `room_id` condition whose id names the room too (Element mutes a room that way);
/// the new id names the new room where the old one named the old. Server-default rules,
/// and rules whose id does not name the room (no new id to give them), are not copied.
pub fn rules_naming_room(
    ruleset: &Ruleset,
    old: &str,
    new: &str,
) -> Vec<(RuleKind, String, RuleBody, bool)> {
    let mut copies = Vec::new();
    for kind in [RuleKind::Override, RuleKind::Room, RuleKind::Underride] {
        for rule in ruleset.rules(kind).iter().filter(|r| !r.default) {
            let names_room = match kind {
                RuleKind::Room => rule.rule_id == old,
                _ => rule.conditions.iter().flatten().any(|c| {
                    matches!(c, PushCondition::EventMatch { key, pattern }
                        if key == "room_id" && pattern == old)
                }),
            };
            if !names_room || !rule.rule_id.contains(old) {
                continue;
            }
            let conditions = rule.conditions.as_ref().map(|conditions| {
                conditions
                    .iter()
                    .map(|c| match c {
                        PushCondition::EventMatch { key, pattern }
                            if key == "room_id" && pattern == old =>
                        {
                            PushCondition::EventMatch {
                                key: key.clone(),
                                pattern: new.to_owned(),
                            }
                        }
                        other => other.clone(),
                    })
                    .collect()
            });
            let rule_id = rule.rule_id.replace(old, new);
            let body = RuleBody {
                actions: rule.actions.clone(),
                conditions,
                pattern: rule.pattern.clone(),
            };
            copies.push((kind, rule_id, body, rule.enabled));
        }
    }
    copies
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_rules_naming_the_old_room_are_copied_for_the_new() {
        let mut rules = crate::core::push_rules::with_server_defaults(None, "@a:x");
        let body = |value: serde_json::Value| serde_json::from_value::<RuleBody>(value).unwrap();
        rules
            .put_rule(
                RuleKind::Room,
                "!old:x",
                body(json!({"actions": []})),
                None,
                None,
            )
            .unwrap();
        let mute = json!({"actions": [], "conditions": [
            {"kind": "event_match", "key": "room_id", "pattern": "!old:x"}]});
        rules
            .put_rule(RuleKind::Override, "!old:x", body(mute), None, None)
            .unwrap();
        let keyword = json!({"actions": ["notify"], "conditions": [
            {"kind": "event_match", "key": "room_id", "pattern": "!old:x"},
            {"kind": "event_match", "key": "content.body", "pattern": "lunch"}]});
        rules
            .put_rule(
                RuleKind::Underride,
                "lunch in !old:x",
                body(keyword.clone()),
                None,
                None,
            )
            .unwrap();
        // An id that does not name the room: no id to give its copy.
        rules
            .put_rule(RuleKind::Underride, "lunch", body(keyword), None, None)
            .unwrap();
        let elsewhere = json!({"actions": [], "conditions": [
            {"kind": "event_match", "key": "room_id", "pattern": "!other:x"}]});
        rules
            .put_rule(RuleKind::Override, "other", body(elsewhere), None, None)
            .unwrap();
        let copies = rules_naming_room(&rules, "!old:x", "!new:x");
        let ids: Vec<(RuleKind, &str)> = copies
            .iter()
            .map(|(k, id, _, _)| (*k, id.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                (RuleKind::Override, "!new:x"),
                (RuleKind::Room, "!new:x"),
                (RuleKind::Underride, "lunch in !new:x"),
            ]
        );
        let (_, _, lunch, enabled) = &copies[2];
        assert!(enabled);
        let conditions = lunch.conditions.as_ref().unwrap();
        assert_eq!(
            conditions[0],
            PushCondition::EventMatch {
                key: "room_id".into(),
                pattern: "!new:x".into()
            }
        );
        assert_eq!(lunch.actions, [json!("notify")]);
    }
}
