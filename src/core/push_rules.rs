//! Push rules: the rule sets, the server-default rules, evaluation against an event, and the
//! edits of the `/pushrules` API.
//!
//! Spec: client-server API, "Push Notifications" ("Push Rules", "Actions", "Conditions",
//! "Predefined Rules") and `data/api/client-server/pushrules.yaml`. Pure: the caller supplies
//! the room's member count, the sender's power and the power levels' `notifications` through
//! [`PushContext`], and stores the user's whole [`Ruleset`] (the `m.push_rules` content),
//! reading it back through [`with_server_defaults`].

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Map, Value};

use super::canonical_json::MAX_SAFE_INTEGER;
use super::identifiers::{RoomId, UserId};
use super::power_levels::Power;

/// The rule that, enabled, silences everything, ahead of even the user's own rules.
const MASTER: &str = ".m.rule.master";

/// The condition kinds this module understands. Spec: "Conditions".
const KNOWN_KINDS: [&str; 6] = [
    "event_match",
    "event_property_is",
    "event_property_contains",
    "contains_display_name",
    "room_member_count",
    "sender_notification_permission",
];

/// The kinds of rule. Spec: "Push Rules", "The different `kind`s of rule".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// `override`: checked first.
    Override,
    /// `content`: a glob matched against `content.body` on word boundaries.
    Content,
    /// `room`: the rule id is the room id.
    Room,
    /// `sender`: the rule id is the sender's user id.
    Sender,
    /// `underride`: like `override`, checked last.
    Underride,
}

impl RuleKind {
    /// All kinds, in the order they are checked.
    pub const ALL: [RuleKind; 5] = [
        RuleKind::Override,
        RuleKind::Content,
        RuleKind::Room,
        RuleKind::Sender,
        RuleKind::Underride,
    ];

    /// The kind named in a `/pushrules/global/{kind}/...` path.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The kind's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Override => "override",
            RuleKind::Content => "content",
            RuleKind::Room => "room",
            RuleKind::Sender => "sender",
            RuleKind::Underride => "underride",
        }
    }
}

/// One push rule. Spec: `definitions/push_rule.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRule {
    /// Unique within its kind; server-default rules' ids start with `.`.
    pub rule_id: String,
    /// Whether this is a server-default rule.
    pub default: bool,
    /// Disabled rules never match.
    pub enabled: bool,
    /// The actions as on the wire: `"notify"` or `{"set_tweak": name, "value": ...}`.
    pub actions: Vec<Value>,
    /// All must hold; none always matches. Only `override` and `underride` rules have them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<PushCondition>>,
    /// The glob matched against `content.body`. Only `content` rules have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

/// A rule's condition, tagged on the wire by `kind`. Spec: "Conditions";
/// `definitions/push_condition.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub enum PushCondition {
    /// A glob against the string at `key`, on the whole value (on words for `content.body`).
    EventMatch {
        /// Dot-separated path of the property.
        key: String,
        /// Glob pattern (`*`, `?`).
        pattern: String,
    },
    /// The property at `key` is exactly `value` (a string, integer, boolean or null).
    EventPropertyIs {
        /// Dot-separated path of the property.
        key: String,
        /// The value, non-compound.
        value: Value,
    },
    /// The array at `key` holds exactly `value`.
    EventPropertyContains {
        /// Dot-separated path of the property.
        key: String,
        /// The value, non-compound.
        value: Value,
    },
    /// `content.body` holds the user's display name in the room (deprecated since v1.17).
    ContainsDisplayName,
    /// The room's member count compared to `is` (`2`, `==2`, `<2`, `>2`, `<=2`, `>=2`).
    RoomMemberCount {
        /// The comparison.
        is: String,
    },
    /// The sender's power reaches the power levels' `notifications[key]` (default 50).
    SenderNotificationPermission {
        /// The notification type, e.g. `room`.
        key: String,
    },
    /// A kind this server does not know, or a known kind with missing or ill-typed
    /// parameters: kept as sent, and "Unrecognised conditions MUST NOT match any events".
    Unknown(Map<String, Value>),
}

impl PushCondition {
    fn from_object(raw: Map<String, Value>) -> Self {
        let text = |name: &str| raw.get(name).and_then(Value::as_str).map(str::to_owned);
        let value = raw.get("value").filter(|v| is_scalar(v)).cloned();
        let known = match raw.get("kind").and_then(Value::as_str) {
            Some("event_match") => text("key")
                .zip(text("pattern"))
                .map(|(key, pattern)| Self::EventMatch { key, pattern }),
            Some("event_property_is") => text("key")
                .zip(value)
                .map(|(key, value)| Self::EventPropertyIs { key, value }),
            Some("event_property_contains") => text("key")
                .zip(value)
                .map(|(key, value)| Self::EventPropertyContains { key, value }),
            Some("contains_display_name") => Some(Self::ContainsDisplayName),
            Some("room_member_count") => text("is").map(|is| Self::RoomMemberCount { is }),
            Some("sender_notification_permission") => {
                text("key").map(|key| Self::SenderNotificationPermission { key })
            }
            _ => None,
        };
        known.unwrap_or(Self::Unknown(raw))
    }

    fn to_json(&self) -> Value {
        match self {
            Self::EventMatch { key, pattern } => {
                json!({"kind": "event_match", "key": key, "pattern": pattern})
            }
            Self::EventPropertyIs { key, value } => {
                json!({"kind": "event_property_is", "key": key, "value": value})
            }
            Self::EventPropertyContains { key, value } => {
                json!({"kind": "event_property_contains", "key": key, "value": value})
            }
            Self::ContainsDisplayName => json!({"kind": "contains_display_name"}),
            Self::RoomMemberCount { is } => json!({"kind": "room_member_count", "is": is}),
            Self::SenderNotificationPermission { key } => {
                json!({"kind": "sender_notification_permission", "key": key})
            }
            Self::Unknown(raw) => Value::Object(raw.clone()),
        }
    }
}

impl Serialize for PushCondition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PushCondition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Object(raw) if raw.get("kind").is_some_and(Value::is_string) => {
                Ok(Self::from_object(raw))
            }
            _ => Err(serde::de::Error::custom(
                "a push condition is an object with a string `kind`",
            )),
        }
    }
}

/// A user's global ruleset, each kind's rules highest priority first. Spec:
/// `definitions/push_ruleset.yaml`. Within a kind the order is `.m.rule.master`, then the
/// user's rules, then the other server-default rules ("Predefined Rules": server-default
/// rules "operate at a lower priority than user-defined rules", except the master rule).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Ruleset {
    /// `override` rules.
    #[serde(rename = "override", default)]
    pub override_: Vec<PushRule>,
    /// `content` rules.
    #[serde(default)]
    pub content: Vec<PushRule>,
    /// `room` rules.
    #[serde(default)]
    pub room: Vec<PushRule>,
    /// `sender` rules.
    #[serde(default)]
    pub sender: Vec<PushRule>,
    /// `underride` rules.
    #[serde(default)]
    pub underride: Vec<PushRule>,
}

/// What evaluation needs beyond the rules and the event.
#[derive(Debug, Clone, Copy)]
pub struct PushContext<'a> {
    /// The user whose rules these are.
    pub user_id: &'a str,
    /// The user's display name in the room, for `contains_display_name`.
    pub display_name: Option<&'a str>,
    /// The room's joined member count, for `room_member_count`.
    pub room_member_count: u64,
    /// The sender's power in the room (infinite for v12 creators).
    pub sender_power: Power,
    /// The `notifications` object of the room's `m.room.power_levels` content, if any. A
    /// missing key needs 50 (`m.room.power_levels`: `room` "Defaults to 50 if unspecified").
    pub notification_levels: Option<&'a Map<String, Value>>,
}

/// An event about to be evaluated against many users' rules: what every evaluation reads
/// of it is worked out once.
#[derive(Debug)]
pub struct PushEvent<'e> {
    pdu: &'e Value,
    sender: Option<&'e str>,
    /// `type`, which most predefined rules test.
    kind: Option<&'e Value>,
    /// `content.body` lowercased, as characters (the globs of content rules, display names
    /// and `@room` all run over it).
    body: Option<Vec<char>>,
}

impl<'e> PushEvent<'e> {
    /// Prepares `pdu` for evaluation.
    pub fn new(pdu: &'e Value) -> Self {
        let body = pdu
            .pointer("/content/body")
            .and_then(Value::as_str)
            .map(|body| body.to_lowercase().chars().collect());
        Self {
            pdu,
            sender: str_at(pdu, "sender"),
            kind: pdu.get("type"),
            body,
        }
    }
}

impl<'e> PushEvent<'e> {
    /// The property at a dotted `key` (see [`property`]).
    fn property(&self, key: &str) -> Option<&'e Value> {
        if key == "type" {
            return self.kind;
        }
        property(self.pdu, key)
    }
}

/// The rule that applies to `event` for `ctx.user_id`: the first enabled rule that matches,
/// kinds in the order override, content, room, sender, underride. `None` when no rule
/// matches, and for the user's own events. Spec: "Push Rules": "Disabled rules never
/// match", and "Homeservers MUST NOT notify the Push Gateway for events that the user has
/// sent themselves."
pub fn evaluate<'r>(
    ruleset: &'r Ruleset,
    event: &PushEvent<'_>,
    ctx: &PushContext<'_>,
) -> Option<&'r PushRule> {
    if event.sender == Some(ctx.user_id) {
        return None;
    }
    for kind in RuleKind::ALL {
        let rules = ruleset.rules(kind).iter();
        if let Some(rule) = rules
            .filter(|rule| rule.enabled)
            .find(|rule| rule_matches(kind, rule, event, ctx))
        {
            return Some(rule);
        }
    }
    None
}

/// What a matched rule's actions ask for. Spec: "Actions".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// `notify`: the event generates a notification.
    pub notify: bool,
    /// The `highlight` tweak: true if given with no value or `true`, false if absent.
    pub highlight: bool,
}

/// Reads a rule's actions. The historical `dont_notify` and `coalesce` (spec: "Historical
/// Actions") and actions this server does not know do nothing.
pub fn outcome(actions: &[Value]) -> Outcome {
    let mut outcome = Outcome::default();
    for action in actions {
        match action {
            Value::String(name) if name == "notify" => outcome.notify = true,
            Value::Object(tweak)
                if tweak.get("set_tweak").and_then(Value::as_str) == Some("highlight") =>
            {
                outcome.highlight = tweak
                    .get("value")
                    .is_none_or(|value| value == &Value::Bool(true));
            }
            _ => {}
        }
    }
    outcome
}

fn str_at<'e>(event: &'e Value, key: &str) -> Option<&'e str> {
    event.get(key).and_then(Value::as_str)
}

fn rule_matches(
    kind: RuleKind,
    rule: &PushRule,
    event: &PushEvent<'_>,
    ctx: &PushContext<'_>,
) -> bool {
    match kind {
        RuleKind::Override | RuleKind::Underride => rule
            .conditions
            .iter()
            .flatten()
            .all(|condition| condition_matches(condition, event, ctx)),
        RuleKind::Content => match (&rule.pattern, &event.body) {
            (Some(pattern), Some(body)) => matches_words(pattern, body, false),
            _ => false,
        },
        RuleKind::Room => str_at(event.pdu, "room_id") == Some(rule.rule_id.as_str()),
        RuleKind::Sender => event.sender == Some(rule.rule_id.as_str()),
    }
}

fn condition_matches(
    condition: &PushCondition,
    event: &PushEvent<'_>,
    ctx: &PushContext<'_>,
) -> bool {
    match condition {
        PushCondition::EventMatch { key, pattern } => {
            // "As a special case, if `key` is `content.body`, then `pattern` must instead
            // match any substring of the value ... which starts and ends at a word boundary."
            if key == "content.body" {
                return event
                    .body
                    .as_ref()
                    .is_some_and(|body| matches_words(pattern, body, false));
            }
            let Some(value) = event.property(key).and_then(Value::as_str) else {
                return false;
            };
            if !pattern.contains(['*', '?']) {
                // A literal pattern matching the whole value (most of the predefined
                // rules): no glob machinery, no allocation for ASCII.
                return literal_eq(pattern, value);
            }
            let text: Vec<char> = value.to_lowercase().chars().collect();
            glob_matches(&glob_tokens(pattern), &text, false)
        }
        // `value` is non-compound (checked on parsing), so equality is the exact match;
        // serde_json keeps integers and floats apart ("do not cast types").
        PushCondition::EventPropertyIs { key, value } => {
            event.property(key).is_some_and(|found| found == value)
        }
        PushCondition::EventPropertyContains { key, value } => event
            .property(key)
            .and_then(Value::as_array)
            .is_some_and(|items| items.iter().any(|item| item == value)),
        PushCondition::ContainsDisplayName => {
            let name = ctx.display_name.filter(|name| !name.is_empty());
            match (name, &event.body) {
                (Some(name), Some(body)) => matches_words(name, body, true),
                _ => false,
            }
        }
        PushCondition::RoomMemberCount { is } => member_count_matches(is, ctx.room_member_count),
        PushCondition::SenderNotificationPermission { key } => {
            let needed = ctx
                .notification_levels
                .and_then(|levels| levels.get(key))
                .and_then(super::power_levels::integer_or_integer_string)
                .unwrap_or(50);
            ctx.sender_power >= Power::from(needed)
        }
        PushCondition::Unknown(_) => false,
    }
}

/// A non-compound canonical JSON value: a string, an integer in ±(2^53 − 1), a boolean or
/// null. Spec: "`event_property_is`".
fn is_scalar(value: &Value) -> bool {
    match value {
        Value::String(_) | Value::Bool(_) | Value::Null => true,
        Value::Number(n) => n
            .as_i64()
            .is_some_and(|i| (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i)),
        _ => false,
    }
}

/// The property at a dotted `key`. Spec: appendices, "Dot-separated property paths": `.`
/// separates names, `\.` and `\\` are a literal dot and backslash, and any other `\x` is
/// kept as it is. Arrays are not indexed.
fn property<'e>(event: &'e Value, key: &str) -> Option<&'e Value> {
    path_segments(key).try_fold(event, |value, segment| {
        if !segment.contains('\\') {
            return value.get(segment);
        }
        // An escaped name: compared as it reads unescaped, without building it (this runs
        // per event and member).
        value
            .as_object()?
            .iter()
            .find(|(name, _)| unescaped(segment).eq(name.chars()))
            .map(|(_, found)| found)
    })
}

/// The names of a dotted path, still escaped: split at each `.` that no `\` escapes.
fn path_segments(key: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(key);
    std::iter::from_fn(move || {
        let text = rest?;
        let mut escaped = false;
        for (i, c) in text.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '.' => {
                    rest = Some(&text[i + 1..]);
                    return Some(&text[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(text)
    })
}

/// The characters of an escaped name: `\.` and `\\` are a dot and a backslash, any other
/// `\x` stays as it is.
fn unescaped(segment: &str) -> impl Iterator<Item = char> + '_ {
    let mut chars = segment.chars();
    let mut pending = None;
    std::iter::from_fn(move || {
        if let Some(c) = pending.take() {
            return Some(c);
        }
        let c = chars.next()?;
        if c != '\\' {
            return Some(c);
        }
        match chars.next() {
            Some(escaped @ ('.' | '\\')) => Some(escaped),
            Some(other) => {
                pending = Some(other);
                Some('\\')
            }
            None => Some('\\'),
        }
    })
}

/// Spec: "`room_member_count`": a decimal integer "optionally prefixed by one of, `==`, `<`,
/// `>`, `>=` or `<=`"; no prefix means `==`. Anything else never matches.
fn member_count_matches(is: &str, count: u64) -> bool {
    let (op, number) = ["==", "<=", ">=", "<", ">"]
        .into_iter()
        .find_map(|op| is.strip_prefix(op).map(|rest| (op, rest)))
        .unwrap_or(("==", is));
    let Ok(number) = number.parse::<u64>() else {
        return false;
    };
    match op {
        "<" => count < number,
        ">" => count > number,
        "<=" => count <= number,
        ">=" => count >= number,
        _ => count == number,
    }
}

/// Case-insensitive equality, as [`glob_matches`] would decide for a pattern without
/// wildcards.
fn literal_eq(pattern: &str, value: &str) -> bool {
    if pattern.is_ascii() && value.is_ascii() {
        return pattern.eq_ignore_ascii_case(value);
    }
    pattern.to_lowercase() == value.to_lowercase()
}

/// One element of a glob: `*`, `?` or a (lowercased) literal character.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Token {
    Any,
    One,
    Char(char),
}

/// Spec: appendices, "Glob-style matching": `*` matches zero or more characters, `?`
/// exactly one.
fn glob_tokens(pattern: &str) -> Vec<Token> {
    let lower = pattern.to_lowercase();
    lower
        .chars()
        .map(|c| match c {
            '*' => Token::Any,
            '?' => Token::One,
            c => Token::Char(c),
        })
        .collect()
}

/// Whether `pattern` (a glob, or taken literally) matches a run of words of `body` (already
/// lowercased). A pattern without wildcards, the usual case (a user name, a display name,
/// `@room`), is searched for directly, without building the glob's states.
fn matches_words(pattern: &str, body: &[char], literal: bool) -> bool {
    if !literal && pattern.contains(['*', '?']) {
        return glob_matches(&glob_tokens(pattern), body, true);
    }
    if pattern.is_empty() {
        return glob_matches(&[], body, true);
    }
    // An ASCII pattern is compared byte by byte, lowercased on the way; another is
    // lowercased once, like the body.
    let ascii = pattern.is_ascii();
    let lowered: Vec<char> = if ascii {
        Vec::new()
    } else {
        pattern.to_lowercase().chars().collect()
    };
    let len = if ascii { pattern.len() } else { lowered.len() };
    if len > body.len() {
        return false;
    }
    let equal = |slice: &[char]| {
        if ascii {
            slice
                .iter()
                .zip(pattern.bytes())
                .all(|(c, b)| *c == char::from(b.to_ascii_lowercase()))
        } else {
            slice == lowered.as_slice()
        }
    };
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    (0..=body.len() - len).any(|i| {
        (i == 0 || !is_word(body[i - 1]))
            && (i + len == body.len() || !is_word(body[i + len]))
            && equal(&body[i..i + len])
    })
}

/// Whether `pattern` matches all of `text` or, with `words`, some substring of it that
/// starts and ends at a word boundary ("the start or end of the value, or any character
/// not in the sets `[A-Z]`, `[a-z]`, `[0-9]` or `_`"). Case-insensitive because both sides
/// come lowercased: the tokens by [`glob_tokens`], the text by the caller (the spec leaves
/// "case insensitive" to the homeserver). Runs the pattern as
/// a set of states over the characters, so the cost is O(value × pattern), with no
/// backtracking however many `*` there are.
fn glob_matches(pattern: &[Token], text: &[char], words: bool) -> bool {
    let is_word = |i: usize| {
        text.get(i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
    };
    let can_start = |i: usize| i == 0 || (words && !is_word(i - 1));
    let can_end = |i: usize| i == text.len() || (words && !is_word(i));
    // states[p]: the first p tokens match the text read so far from some start.
    let mut states = vec![false; pattern.len() + 1];
    let mut next = states.clone();
    for i in 0..=text.len() {
        if can_start(i) {
            states[0] = true;
        }
        // `*` may match nothing: being before it is also being after it.
        for (p, token) in pattern.iter().enumerate() {
            if *token == Token::Any && states[p] {
                states[p + 1] = true;
            }
        }
        if states[pattern.len()] && can_end(i) {
            return true;
        }
        let Some(&c) = text.get(i) else { break };
        next.fill(false);
        for (p, token) in pattern.iter().enumerate() {
            if !states[p] {
                continue;
            }
            match token {
                Token::Any => next[p] = true,
                Token::One => next[p + 1] = true,
                Token::Char(t) if *t == c => next[p + 1] = true,
                Token::Char(_) => {}
            }
        }
        std::mem::swap(&mut states, &mut next);
        if !words && !states.contains(&true) {
            return false;
        }
    }
    false
}

fn default_rule(rule_id: &str, conditions: Vec<PushCondition>, actions: Vec<Value>) -> PushRule {
    PushRule {
        rule_id: rule_id.to_owned(),
        default: true,
        enabled: rule_id != MASTER,
        actions,
        conditions: Some(conditions),
        pattern: None,
    }
}

fn event_match(key: &str, pattern: &str) -> PushCondition {
    PushCondition::EventMatch {
        key: key.to_owned(),
        pattern: pattern.to_owned(),
    }
}

fn property_is(key: &str, value: Value) -> PushCondition {
    PushCondition::EventPropertyIs {
        key: key.to_owned(),
        value,
    }
}

fn members_are(is: &str) -> PushCondition {
    PushCondition::RoomMemberCount { is: is.to_owned() }
}

fn sound(name: &str) -> Value {
    json!({"set_tweak": "sound", "value": name})
}

/// The server-default rules for `user_id`, verbatim from the spec's "Predefined Rules" and
/// in its order. Since v1.17 there are no default `content` rules and no rules looking for
/// mentions in `body` (`.m.rule.contains_display_name`, `.m.rule.contains_user_name`,
/// `.m.rule.roomnotif` were removed).
pub fn default_ruleset(user_id: &str) -> Ruleset {
    let notify = || Value::from("notify");
    let highlight = || json!({"set_tweak": "highlight"});
    let type_is = |event_type: &str| event_match("type", event_type);
    Ruleset {
        override_: vec![
            default_rule(MASTER, vec![], vec![]),
            default_rule(
                ".m.rule.suppress_notices",
                vec![event_match("content.msgtype", "m.notice")],
                vec![],
            ),
            default_rule(
                ".m.rule.invite_for_me",
                vec![
                    type_is("m.room.member"),
                    event_match("content.membership", "invite"),
                    event_match("state_key", user_id),
                ],
                vec![notify(), sound("default")],
            ),
            default_rule(
                ".m.rule.member_event",
                vec![type_is("m.room.member")],
                vec![],
            ),
            default_rule(
                ".m.rule.is_user_mention",
                vec![PushCondition::EventPropertyContains {
                    key: r"content.m\.mentions.user_ids".to_owned(),
                    value: Value::from(user_id),
                }],
                vec![notify(), sound("default"), highlight()],
            ),
            default_rule(
                ".m.rule.is_room_mention",
                vec![
                    property_is(r"content.m\.mentions.room", Value::Bool(true)),
                    PushCondition::SenderNotificationPermission {
                        key: "room".to_owned(),
                    },
                ],
                vec![notify(), highlight()],
            ),
            default_rule(
                ".m.rule.tombstone",
                vec![type_is("m.room.tombstone"), event_match("state_key", "")],
                vec![notify(), highlight()],
            ),
            default_rule(".m.rule.reaction", vec![type_is("m.reaction")], vec![]),
            default_rule(
                ".m.rule.room.server_acl",
                vec![type_is("m.room.server_acl"), event_match("state_key", "")],
                vec![],
            ),
            default_rule(
                ".m.rule.suppress_edits",
                vec![property_is(
                    r"content.m\.relates_to.rel_type",
                    Value::from("m.replace"),
                )],
                vec![],
            ),
        ],
        content: Vec::new(),
        room: Vec::new(),
        sender: Vec::new(),
        underride: vec![
            default_rule(
                ".m.rule.call",
                vec![type_is("m.call.invite")],
                vec![notify(), sound("ring")],
            ),
            default_rule(
                ".m.rule.encrypted_room_one_to_one",
                vec![members_are("2"), type_is("m.room.encrypted")],
                vec![notify(), sound("default")],
            ),
            default_rule(
                ".m.rule.room_one_to_one",
                vec![members_are("2"), type_is("m.room.message")],
                vec![notify(), sound("default")],
            ),
            default_rule(
                ".m.rule.message",
                vec![type_is("m.room.message")],
                vec![notify()],
            ),
            default_rule(
                ".m.rule.encrypted",
                vec![type_is("m.room.encrypted")],
                vec![notify()],
            ),
        ],
    }
}

/// Server-default rule ids start with a dot. Spec: "Predefined Rules".
fn is_server_default(rule_id: &str) -> bool {
    rule_id.starts_with('.')
}

/// The ruleset in force for a user: the stored one brought up to this server's defaults, or
/// the defaults if nothing is stored. Stored server-default rules take their current
/// definition, keeping the user's `enabled` and `actions`; those this server no longer has
/// are dropped; missing ones are inserted before the next default present (so after the
/// user's rules), or at the end.
pub fn with_server_defaults(stored: Option<Ruleset>, user_id: &str) -> Ruleset {
    let defaults = default_ruleset(user_id);
    let Some(mut ruleset) = stored else {
        return defaults;
    };
    for kind in RuleKind::ALL {
        let wanted = defaults.rules(kind);
        let rules = ruleset.rules_mut(kind);
        rules.retain_mut(|rule| {
            if !is_server_default(&rule.rule_id) {
                return true;
            }
            let Some(current) = wanted.iter().find(|d| d.rule_id == rule.rule_id) else {
                return false;
            };
            *rule = PushRule {
                enabled: rule.enabled,
                actions: std::mem::take(&mut rule.actions),
                ..current.clone()
            };
            true
        });
        for (i, default) in wanted.iter().enumerate() {
            if rules.iter().any(|rule| rule.rule_id == default.rule_id) {
                continue;
            }
            let at = if default.rule_id == MASTER {
                0
            } else {
                wanted[i + 1..]
                    .iter()
                    .find_map(|later| rules.iter().position(|r| r.rule_id == later.rule_id))
                    .unwrap_or(rules.len())
            };
            rules.insert(at, default.clone());
        }
    }
    ruleset
}

/// Why a `/pushrules` edit was refused. Spec: `pushrules.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleEditError {
    /// No rule of that kind has that id (404 `M_NOT_FOUND`).
    NotFound,
    /// The id starts with `.`, reserved for server-default rules, which can be neither
    /// created, replaced nor deleted.
    Reserved,
    /// `before` or `after` names no user-defined rule of the kind (400).
    BadPlacement(String),
    /// The rule, its id or its actions are malformed (400).
    Invalid(String),
}

impl std::fmt::Display for RuleEditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound => f.write_str("The push rule was not found."),
            Self::Reserved => f.write_str("rule ids starting with '.' are server-default rules"),
            Self::BadPlacement(reason) | Self::Invalid(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for RuleEditError {}

fn invalid(reason: impl Into<String>) -> RuleEditError {
    RuleEditError::Invalid(reason.into())
}

/// The body of `PUT /pushrules/global/{kind}/{ruleId}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RuleBody {
    /// The actions to perform when the rule matches.
    pub actions: Vec<Value>,
    /// Required for `override` and `underride` rules (may be empty); ignored otherwise.
    #[serde(default)]
    pub conditions: Option<Vec<PushCondition>>,
    /// Required for `content` rules; ignored otherwise.
    #[serde(default)]
    pub pattern: Option<String>,
}

impl Ruleset {
    /// The rules of one kind, highest priority first.
    pub fn rules(&self, kind: RuleKind) -> &[PushRule] {
        match kind {
            RuleKind::Override => &self.override_,
            RuleKind::Content => &self.content,
            RuleKind::Room => &self.room,
            RuleKind::Sender => &self.sender,
            RuleKind::Underride => &self.underride,
        }
    }

    fn rules_mut(&mut self, kind: RuleKind) -> &mut Vec<PushRule> {
        match kind {
            RuleKind::Override => &mut self.override_,
            RuleKind::Content => &mut self.content,
            RuleKind::Room => &mut self.room,
            RuleKind::Sender => &mut self.sender,
            RuleKind::Underride => &mut self.underride,
        }
    }

    /// The rule of that kind and id (`GET /pushrules/global/{kind}/{ruleId}`, `/enabled`,
    /// `/actions`).
    pub fn get(&self, kind: RuleKind, rule_id: &str) -> Option<&PushRule> {
        self.rules(kind).iter().find(|rule| rule.rule_id == rule_id)
    }

    fn get_mut(&mut self, kind: RuleKind, rule_id: &str) -> Result<&mut PushRule, RuleEditError> {
        self.rules_mut(kind)
            .iter_mut()
            .find(|rule| rule.rule_id == rule_id)
            .ok_or(RuleEditError::NotFound)
    }

    /// `PUT /pushrules/global/{kind}/{ruleId}/enabled`; server-default rules included.
    pub fn set_enabled(
        &mut self,
        kind: RuleKind,
        rule_id: &str,
        enabled: bool,
    ) -> Result<(), RuleEditError> {
        self.get_mut(kind, rule_id)?.enabled = enabled;
        Ok(())
    }

    /// `PUT /pushrules/global/{kind}/{ruleId}/actions`: "This can be used to change the
    /// actions of builtin rules."
    pub fn set_actions(
        &mut self,
        kind: RuleKind,
        rule_id: &str,
        actions: Vec<Value>,
    ) -> Result<(), RuleEditError> {
        let rule = self.get_mut(kind, rule_id)?;
        rule.actions = checked_actions(actions)?;
        Ok(())
    }

    /// `PUT /pushrules/global/{kind}/{ruleId}`: creates a user rule, or replaces the one
    /// with that id (keeping its `enabled`). Spec: `before` makes the rule the next more
    /// important than that user-defined rule, `after` the next less important; with both,
    /// `before` wins; neither puts a new rule first among the user's rules and leaves an
    /// updated one where it was. New rules are enabled.
    pub fn put_rule(
        &mut self,
        kind: RuleKind,
        rule_id: &str,
        body: RuleBody,
        before: Option<&str>,
        after: Option<&str>,
    ) -> Result<(), RuleEditError> {
        let mut rule = new_rule(kind, rule_id, body)?;
        let rules = self.rules_mut(kind);
        let anchor = match (before, after) {
            (Some(id), _) => Some((id, 0)),
            (None, Some(id)) => Some((id, 1)),
            (None, None) => None,
        };
        if let Some((id, _)) = anchor {
            if is_server_default(id) {
                return Err(RuleEditError::BadPlacement(format!(
                    "cannot place a rule relative to server-default rule {id}"
                )));
            }
            if id == rule_id || !rules.iter().any(|r| r.rule_id == id) {
                return Err(RuleEditError::BadPlacement(format!(
                    "before/after rule not found: {id}"
                )));
            }
        }
        let existing = rules.iter().position(|r| r.rule_id == rule_id);
        if let Some(i) = existing {
            rule.enabled = rules.remove(i).enabled;
        }
        let at = match anchor {
            Some((id, offset)) => rules
                .iter()
                .position(|r| r.rule_id == id)
                .map_or(rules.len(), |i| i + offset),
            None => {
                existing.unwrap_or_else(|| rules.iter().take_while(|r| r.rule_id == MASTER).count())
            }
        };
        rules.insert(at, rule);
        Ok(())
    }

    /// `DELETE /pushrules/global/{kind}/{ruleId}`; server-default rules cannot be deleted.
    pub fn delete_rule(&mut self, kind: RuleKind, rule_id: &str) -> Result<(), RuleEditError> {
        if is_server_default(rule_id) {
            return Err(RuleEditError::Reserved);
        }
        let rules = self.rules_mut(kind);
        let i = rules
            .iter()
            .position(|rule| rule.rule_id == rule_id)
            .ok_or(RuleEditError::NotFound)?;
        rules.remove(i);
        Ok(())
    }
}

/// Checks a `PUT` body against its kind. Spec: `pushrules.yaml`, `ruleId`: ids starting
/// with `.` are reserved, and `/` and `\` are not allowed; room and sender rules are keyed
/// by a room id and a user id ("Push Rules").
fn new_rule(kind: RuleKind, rule_id: &str, body: RuleBody) -> Result<PushRule, RuleEditError> {
    if is_server_default(rule_id) {
        return Err(RuleEditError::Reserved);
    }
    if rule_id.is_empty() || rule_id.contains(['/', '\\']) {
        return Err(invalid("a rule id is non-empty, without '/' or '\\'"));
    }
    let actions = checked_actions(body.actions)?;
    let (conditions, pattern) = match kind {
        RuleKind::Override | RuleKind::Underride => {
            let conditions = body
                .conditions
                .ok_or_else(|| invalid("override and underride rules need conditions"))?;
            if let Some(kind) = conditions.iter().find_map(malformed_kind) {
                return Err(invalid(format!("malformed {kind} condition")));
            }
            (Some(conditions), None)
        }
        RuleKind::Content => {
            let pattern = body
                .pattern
                .ok_or_else(|| invalid("content rules need a pattern"))?;
            (None, Some(pattern))
        }
        RuleKind::Room => {
            RoomId::parse(rule_id).map_err(|e| invalid(e.to_string()))?;
            (None, None)
        }
        RuleKind::Sender => {
            UserId::parse(rule_id).map_err(|e| invalid(e.to_string()))?;
            (None, None)
        }
    };
    Ok(PushRule {
        rule_id: rule_id.to_owned(),
        default: false,
        enabled: true,
        actions,
        conditions,
        pattern,
    })
}

/// The kind of a condition this module would know but could not read (missing or
/// ill-typed parameters): refused on input, though kept (never matching) in stored rules.
fn malformed_kind(condition: &PushCondition) -> Option<&str> {
    let PushCondition::Unknown(raw) = condition else {
        return None;
    };
    raw.get("kind")
        .and_then(Value::as_str)
        .filter(|kind| KNOWN_KINDS.contains(kind))
}

/// Spec: "Actions": `notify` as a string, tweaks as `{"set_tweak": ...}`; "Historical
/// Actions": `dont_notify` and `coalesce` are stripped. Anything else is refused.
fn checked_actions(actions: Vec<Value>) -> Result<Vec<Value>, RuleEditError> {
    let mut kept = Vec::with_capacity(actions.len());
    for action in actions {
        match &action {
            Value::String(name) if name == "notify" => {}
            Value::String(name) if name == "dont_notify" || name == "coalesce" => continue,
            Value::Object(tweak) if tweak.get("set_tweak").is_some_and(Value::is_string) => {}
            other => return Err(invalid(format!("unknown action {other}"))),
        }
        kept.push(action);
    }
    Ok(kept)
}

#[cfg(test)]
#[path = "push_rules_tests.rs"]
mod tests;
