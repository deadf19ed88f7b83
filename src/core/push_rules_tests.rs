//! Tests of `push_rules`, named after the spec's rules and conditions.

use super::*;
use crate::core::power_levels::INFINITE;
use serde_json::json;

const ALICE: &str = "@alice:hs";
const NOTIFY: Outcome = Outcome {
    notify: true,
    highlight: false,
};
const HIGHLIGHT: Outcome = Outcome {
    notify: true,
    highlight: true,
};
const SILENT: Outcome = Outcome {
    notify: false,
    highlight: false,
};

fn ctx<'a>(members: u64) -> PushContext<'a> {
    PushContext {
        user_id: ALICE,
        display_name: Some("Alice Smith"),
        room_member_count: members,
        sender_power: 0,
        notification_levels: None,
    }
}

fn event(event_type: &str, content: Value) -> Value {
    json!({"type": event_type, "sender": "@bob:hs", "room_id": "!r:hs", "content": content})
}

fn message(body: &str) -> Value {
    event("m.room.message", json!({"msgtype": "m.text", "body": body}))
}

/// The id of the rule that applies ("" for none) and what its actions ask for.
fn apply(ruleset: &Ruleset, event: &Value, ctx: &PushContext<'_>) -> (String, Outcome) {
    evaluate(ruleset, &PushEvent::new(event), ctx)
        .map_or((String::new(), Outcome::default()), |rule| {
            (rule.rule_id.clone(), outcome(&rule.actions))
        })
}

fn matches(condition: &PushCondition, event: &Value, ctx: &PushContext<'_>) -> bool {
    condition_matches(condition, &PushEvent::new(event), ctx)
}

fn applied(rule_id: &str, outcome: Outcome) -> (String, Outcome) {
    (rule_id.to_owned(), outcome)
}

fn rule_body(actions: Value, conditions: Option<Value>, pattern: Option<&str>) -> RuleBody {
    serde_json::from_value(
        json!({"actions": actions, "conditions": conditions, "pattern": pattern}),
    )
    .unwrap()
}

fn ids(rules: &[PushRule]) -> Vec<&str> {
    rules.iter().map(|rule| rule.rule_id.as_str()).collect()
}

#[test]
fn room_one_to_one_notifies_in_a_two_member_room() {
    let rules = default_ruleset(ALICE);
    let got = apply(&rules, &message("hi"), &ctx(2));
    assert_eq!(got, applied(".m.rule.room_one_to_one", NOTIFY));
}

#[test]
fn message_notifies_in_a_group_room() {
    let rules = default_ruleset(ALICE);
    let got = apply(&rules, &message("hi"), &ctx(3));
    assert_eq!(got, applied(".m.rule.message", NOTIFY));
}

#[test]
fn encrypted_rules_split_on_member_count() {
    let rules = default_ruleset(ALICE);
    let encrypted = event("m.room.encrypted", json!({"ciphertext": "x"}));
    let one_to_one = applied(".m.rule.encrypted_room_one_to_one", NOTIFY);
    assert_eq!(apply(&rules, &encrypted, &ctx(2)), one_to_one);
    assert_eq!(
        apply(&rules, &encrypted, &ctx(5)),
        applied(".m.rule.encrypted", NOTIFY)
    );
}

#[test]
fn own_events_never_notify() {
    let rules = default_ruleset(ALICE);
    let mut own = message("hi");
    own["sender"] = json!(ALICE);
    assert_eq!(evaluate(&rules, &PushEvent::new(&own), &ctx(2)), None);
}

#[test]
fn suppress_notices_silences_m_notice() {
    let rules = default_ruleset(ALICE);
    let notice = event(
        "m.room.message",
        json!({"msgtype": "m.notice", "body": "bot"}),
    );
    let got = apply(&rules, &notice, &ctx(2));
    assert_eq!(got, applied(".m.rule.suppress_notices", SILENT));
}

#[test]
fn is_user_mention_highlights() {
    let rules = default_ruleset(ALICE);
    let content = json!({"msgtype": "m.text", "body": "hey", "m.mentions": {"user_ids": [ALICE]}});
    let got = apply(&rules, &event("m.room.message", content), &ctx(3));
    assert_eq!(got, applied(".m.rule.is_user_mention", HIGHLIGHT));
}

#[test]
fn is_room_mention_needs_sender_notification_permission() {
    let rules = default_ruleset(ALICE);
    let content = json!({"msgtype": "m.text", "body": "@room", "m.mentions": {"room": true}});
    let at_room = event("m.room.message", content);
    let mention = applied(".m.rule.is_room_mention", HIGHLIGHT);
    // The default level for `room` is 50.
    let moderator = PushContext {
        sender_power: 50,
        ..ctx(3)
    };
    assert_eq!(apply(&rules, &at_room, &moderator), mention);
    assert_eq!(
        apply(&rules, &at_room, &ctx(3)),
        applied(".m.rule.message", NOTIFY)
    );
    let creator = PushContext {
        sender_power: INFINITE,
        ..ctx(3)
    };
    assert_eq!(apply(&rules, &at_room, &creator), mention);
    let levels = json!({"room": 0});
    let open = PushContext {
        notification_levels: levels.as_object(),
        ..ctx(3)
    };
    assert_eq!(apply(&rules, &at_room, &open), mention);
}

#[test]
fn suppress_edits_silences_replacements() {
    let rules = default_ruleset(ALICE);
    let content = json!({
        "msgtype": "m.text",
        "body": "* hi",
        "m.new_content": {"msgtype": "m.text", "body": "hi"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": "$original"}
    });
    let got = apply(&rules, &event("m.room.message", content), &ctx(2));
    assert_eq!(got, applied(".m.rule.suppress_edits", SILENT));
}

#[test]
fn invite_for_me_notifies_and_member_event_does_not() {
    let rules = default_ruleset(ALICE);
    let member = |target: &str, membership: &str| {
        let mut e = event("m.room.member", json!({"membership": membership}));
        e["state_key"] = json!(target);
        e
    };
    let invite = applied(".m.rule.invite_for_me", NOTIFY);
    let other = applied(".m.rule.member_event", SILENT);
    assert_eq!(apply(&rules, &member(ALICE, "invite"), &ctx(2)), invite);
    assert_eq!(
        apply(&rules, &member("@carol:hs", "invite"), &ctx(2)),
        other
    );
    assert_eq!(apply(&rules, &member("@bob:hs", "join"), &ctx(2)), other);
}

#[test]
fn tombstone_highlights_only_as_state() {
    let rules = default_ruleset(ALICE);
    let mut tombstone = event("m.room.tombstone", json!({"replacement_room": "!new:hs"}));
    assert_eq!(apply(&rules, &tombstone, &ctx(3)).0, "");
    tombstone["state_key"] = json!("");
    let got = apply(&rules, &tombstone, &ctx(3));
    assert_eq!(got, applied(".m.rule.tombstone", HIGHLIGHT));
}

#[test]
fn master_enabled_suppresses_everything() {
    let mut rules = default_ruleset(ALICE);
    rules.set_enabled(RuleKind::Override, MASTER, true).unwrap();
    let content = json!({"body": "hey", "m.mentions": {"user_ids": [ALICE]}});
    let got = apply(&rules, &event("m.room.message", content), &ctx(2));
    assert_eq!(got, applied(MASTER, SILENT));
}

#[test]
fn room_rule_without_actions_suppresses_the_room() {
    let mut rules = default_ruleset(ALICE);
    // "a rule with `["dont_notify"]` actions MUST be equivalent to ... an empty actions array"
    let body = rule_body(json!(["dont_notify"]), None, None);
    rules
        .put_rule(RuleKind::Room, "!r:hs", body, None, None)
        .unwrap();
    assert_eq!(rules.room[0].actions, Vec::<Value>::new());
    assert_eq!(
        apply(&rules, &message("hi"), &ctx(2)),
        applied("!r:hs", SILENT)
    );
    let mut elsewhere = message("hi");
    elsewhere["room_id"] = json!("!other:hs");
    assert_eq!(apply(&rules, &elsewhere, &ctx(3)).0, ".m.rule.message");
}

#[test]
fn sender_rule_matches_the_sender() {
    let mut rules = default_ruleset(ALICE);
    let body = rule_body(json!(["notify", {"set_tweak": "highlight"}]), None, None);
    rules
        .put_rule(RuleKind::Sender, "@bob:hs", body, None, None)
        .unwrap();
    assert_eq!(
        apply(&rules, &message("hi"), &ctx(3)),
        applied("@bob:hs", HIGHLIGHT)
    );
}

#[test]
fn content_rule_matches_body_on_word_boundaries() {
    let mut rules = default_ruleset(ALICE);
    let body = rule_body(
        json!(["notify", {"set_tweak": "highlight"}]),
        None,
        Some("alice"),
    );
    rules
        .put_rule(RuleKind::Content, "me", body, None, None)
        .unwrap();
    for text in ["hi Alice!", "alice", "ping @alice:hs"] {
        assert_eq!(
            apply(&rules, &message(text), &ctx(3)),
            applied("me", HIGHLIGHT),
            "{text}"
        );
    }
    for text in ["alicesmith", "malice", "alice_b"] {
        assert_eq!(
            apply(&rules, &message(text), &ctx(3)).0,
            ".m.rule.message",
            "{text}"
        );
    }
}

#[test]
fn contains_display_name_matches_words_case_insensitively() {
    let mut rules = default_ruleset(ALICE);
    let body = rule_body(
        json!(["notify", {"set_tweak": "highlight"}]),
        Some(json!([{"kind": "contains_display_name"}])),
        None,
    );
    rules
        .put_rule(RuleKind::Override, "name", body, None, None)
        .unwrap();
    let named = applied("name", HIGHLIGHT);
    assert_eq!(
        apply(&rules, &message("hey ALICE SMITH, hi"), &ctx(3)),
        named
    );
    assert_eq!(
        apply(&rules, &message("alice smithers"), &ctx(3)).0,
        ".m.rule.message"
    );
    let nameless = PushContext {
        display_name: None,
        ..ctx(3)
    };
    assert_eq!(
        apply(&rules, &message("Alice Smith"), &nameless).0,
        ".m.rule.message"
    );
    let empty = PushContext {
        display_name: Some(""),
        ..ctx(3)
    };
    assert_eq!(
        apply(&rules, &message("Alice Smith"), &empty).0,
        ".m.rule.message"
    );
}

/// Spec: "Conditions", `event_match`, the `lunc?*` and `ex*ple` examples.
#[test]
fn event_match_globs_whole_values_and_body_words() {
    let topic = |value: Value| event("m.room.topic", json!({"topic": value}));
    let lunch = event_match("content.topic", "lunc?*");
    for value in ["Lunch plans", "LUNCH"] {
        assert!(matches(&lunch, &topic(json!(value)), &ctx(2)), "{value}");
    }
    for value in [json!(" lunch"), json!("lunc"), Value::Null] {
        assert!(!matches(&lunch, &topic(value.clone()), &ctx(2)), "{value}");
    }
    let example = event_match("content.body", "ex*ple");
    for body in ["An example event.", "exple", "An exciting triple-whammy"] {
        assert!(matches(&example, &message(body), &ctx(2)), "{body}");
    }
    assert!(!matches(&example, &message("counterexamples"), &ctx(2)));
    let any = event_match("content.missing", "*");
    assert!(!matches(&any, &message("hi"), &ctx(2)));
}

#[test]
fn glob_stars_and_question_marks() {
    let glob = |pattern: &str, value: &str| {
        let text: Vec<char> = value.to_lowercase().chars().collect();
        glob_matches(&glob_tokens(pattern), &text, false)
    };
    assert!(glob("*", ""));
    assert!(glob("a*b*c", "aXXbYYc"));
    assert!(glob("a**c", "ac"));
    assert!(glob("?é?", "XÉy"));
    assert!(!glob("a*b", "acbd"));
    assert!(!glob("", "x"));
    assert!(glob("", ""));
    assert!(!glob("*a*a*a*a*a*b", &"a".repeat(200)));
}

/// Spec: appendices, "Dot-separated property paths".
#[test]
fn dotted_keys_escape_dots_and_backslashes() {
    let e = json!({"content": {
        "m.relates_to": {"rel_type": "x"},
        "m\\foo": 1,
        "a\\x": 2,
        "m": {"relates_to": 3}
    }});
    assert_eq!(
        property(&e, r"content.m\.relates_to.rel_type"),
        Some(&json!("x"))
    );
    assert_eq!(property(&e, "content.m.relates_to"), Some(&json!(3)));
    assert_eq!(property(&e, r"content.m\\foo"), Some(&json!(1)));
    assert_eq!(property(&e, r"content.a\x"), Some(&json!(2)));
    assert_eq!(property(&e, "content.nope"), None);
}

/// Spec: "Conditions", `event_property_is`, the `m.federate` example.
#[test]
fn event_property_is_matches_exact_scalars() {
    let create = |federate: Value| event("m.room.create", json!({"m.federate": federate}));
    let federate = property_is(r"content.m\.federate", json!(true));
    assert!(matches(&federate, &create(json!(true)), &ctx(2)));
    for other in [json!("true"), json!(1), Value::Null, json!([true])] {
        assert!(
            !matches(&federate, &create(other.clone()), &ctx(2)),
            "{other}"
        );
    }
    let one = property_is("content.m\\.federate", json!(1));
    assert!(matches(&one, &create(json!(1)), &ctx(2)));
    assert!(!matches(&one, &create(json!(1.0)), &ctx(2)));
    let null = property_is("content.m\\.federate", Value::Null);
    assert!(matches(&null, &create(Value::Null), &ctx(2)));
    assert!(!matches(&null, &event("m.room.create", json!({})), &ctx(2)));
}

/// Spec: "Conditions", `event_property_contains`, the `alt_aliases` example.
#[test]
fn event_property_contains_matches_array_items() {
    let aliases = json!({
        "alias": "#somewhere:localhost",
        "alt_aliases": ["#somewhere:example.org", "#myroom:example.com"]
    });
    let alias_event = event("m.room.canonical_alias", aliases);
    let contains = |value: &str| PushCondition::EventPropertyContains {
        key: "content.alt_aliases".to_owned(),
        value: json!(value),
    };
    assert!(matches(
        &contains("#myroom:example.com"),
        &alias_event,
        &ctx(2)
    ));
    assert!(!matches(&contains(":example.com"), &alias_event, &ctx(2)));
}

#[test]
fn room_member_count_prefixes() {
    let cases = [
        ("2", 2, true),
        ("==2", 3, false),
        ("<3", 2, true),
        (">3", 3, false),
    ];
    let more = [
        (">=3", 3, true),
        ("<=1", 2, false),
        ("x2", 2, false),
        ("", 0, false),
    ];
    for (is, count, expected) in cases.into_iter().chain(more) {
        assert_eq!(member_count_matches(is, count), expected, "{is} {count}");
    }
}

#[test]
fn outcome_reads_notify_and_highlight() {
    let actions = |v: Value| serde_json::from_value::<Vec<Value>>(v).unwrap();
    assert_eq!(
        outcome(&actions(json!(["notify", {"set_tweak": "highlight"}]))),
        HIGHLIGHT
    );
    let explicit_false = json!(["notify", {"set_tweak": "highlight", "value": false}]);
    assert_eq!(outcome(&actions(explicit_false)), NOTIFY);
    assert_eq!(
        outcome(&actions(json!(["dont_notify", "coalesce"]))),
        SILENT
    );
}

#[test]
fn put_rule_places_user_rules_after_master_and_before_defaults() {
    let mut rules = default_ruleset(ALICE);
    let body = || rule_body(json!(["notify"]), Some(json!([])), None);
    let kind = RuleKind::Override;
    rules.put_rule(kind, "a", body(), None, None).unwrap();
    rules.put_rule(kind, "b", body(), None, None).unwrap();
    rules.put_rule(kind, "c", body(), None, Some("b")).unwrap();
    rules
        .put_rule(kind, "d", body(), Some("a"), Some("b"))
        .unwrap();
    let order = [MASTER, "b", "c", "d", "a", ".m.rule.suppress_notices"];
    assert_eq!(ids(&rules.override_)[..6], order);
    // An update keeps the rule's place and `enabled`.
    rules.set_enabled(kind, "a", false).unwrap();
    let silent = rule_body(json!([]), Some(json!([])), None);
    rules.put_rule(kind, "a", silent, None, None).unwrap();
    assert_eq!(ids(&rules.override_)[..6], order);
    assert!(!rules.override_[4].enabled && rules.override_[4].actions.is_empty());
    let relative_to_default = rules.put_rule(kind, "e", body(), Some(".m.rule.reaction"), None);
    assert!(matches!(
        relative_to_default,
        Err(RuleEditError::BadPlacement(_))
    ));
    let unknown_anchor = rules.put_rule(kind, "e", body(), None, Some("zzz"));
    assert!(matches!(
        unknown_anchor,
        Err(RuleEditError::BadPlacement(_))
    ));
    rules.delete_rule(kind, "c").unwrap();
    assert_eq!(ids(&rules.override_)[..4], [MASTER, "b", "d", "a"]);
}

#[test]
fn server_default_rules_cannot_be_created_or_deleted() {
    let mut rules = default_ruleset(ALICE);
    let body = rule_body(json!([]), Some(json!([])), None);
    let put = rules.put_rule(RuleKind::Override, ".mine", body, None, None);
    assert_eq!(put, Err(RuleEditError::Reserved));
    let delete = rules.delete_rule(RuleKind::Underride, ".m.rule.message");
    assert_eq!(delete, Err(RuleEditError::Reserved));
    assert_eq!(
        rules.delete_rule(RuleKind::Room, "!x:hs"),
        Err(RuleEditError::NotFound)
    );
    assert_eq!(
        rules.set_enabled(RuleKind::Content, "x", true),
        Err(RuleEditError::NotFound)
    );
    // Their actions and `enabled` may change.
    rules
        .set_actions(RuleKind::Underride, ".m.rule.message", vec![])
        .unwrap();
    let message_rule = rules.get(RuleKind::Underride, ".m.rule.message").unwrap();
    assert!(message_rule.actions.is_empty());
}

#[test]
fn put_rule_validates_the_body_for_its_kind() {
    let mut rules = Ruleset::default();
    let mut put = |kind, id: &str, body| rules.put_rule(kind, id, body, None, None);
    let no_conditions = rule_body(json!([]), None, None);
    assert!(matches!(
        put(RuleKind::Override, "x", no_conditions),
        Err(RuleEditError::Invalid(_))
    ));
    let no_pattern = rule_body(json!([]), None, None);
    assert!(matches!(
        put(RuleKind::Content, "x", no_pattern),
        Err(RuleEditError::Invalid(_))
    ));
    let plain = || rule_body(json!([]), None, None);
    assert!(matches!(
        put(RuleKind::Sender, "bob", plain()),
        Err(RuleEditError::Invalid(_))
    ));
    assert!(matches!(
        put(RuleKind::Room, "a/b", plain()),
        Err(RuleEditError::Invalid(_))
    ));
    let bogus = rule_body(json!(["bogus"]), None, None);
    assert!(matches!(
        put(RuleKind::Room, "!r:hs", bogus),
        Err(RuleEditError::Invalid(_))
    ));
    let half = rule_body(
        json!([]),
        Some(json!([{"kind": "event_match", "key": "type"}])),
        None,
    );
    assert!(matches!(
        put(RuleKind::Underride, "x", half),
        Err(RuleEditError::Invalid(_))
    ));
    let future = rule_body(
        json!([]),
        Some(json!([{"kind": "org.example.future"}])),
        None,
    );
    assert_eq!(put(RuleKind::Underride, "x", future), Ok(()));
}

#[test]
fn unknown_conditions_round_trip_and_never_match() {
    let raw = json!({"kind": "org.example.future", "x": 1});
    let unknown: PushCondition = serde_json::from_value(raw.clone()).unwrap();
    assert_eq!(serde_json::to_value(&unknown).unwrap(), raw);
    assert!(!matches(&unknown, &message("hi"), &ctx(2)));
    assert!(serde_json::from_value::<PushCondition>(json!({"key": "type"})).is_err());
}

/// Spec: "Predefined Rules" (`.m.rule.master`, `.m.rule.is_room_mention`) and the
/// `pushrules.yaml` example of a content rule, verbatim.
#[test]
fn rules_serialise_as_in_the_spec() {
    let wire = serde_json::to_value(default_ruleset(ALICE)).unwrap();
    let master = json!({
        "rule_id": ".m.rule.master",
        "default": true,
        "enabled": false,
        "conditions": [],
        "actions": []
    });
    assert_eq!(wire["override"][0], master);
    let room_mention = json!({
        "rule_id": ".m.rule.is_room_mention",
        "default": true,
        "enabled": true,
        "conditions": [
            {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": true},
            {"kind": "sender_notification_permission", "key": "room"}
        ],
        "actions": ["notify", {"set_tweak": "highlight"}]
    });
    assert_eq!(wire["override"][5], room_mention);
    assert_eq!(wire["content"], json!([]));
    let back: Ruleset = serde_json::from_value(wire).unwrap();
    assert_eq!(back, default_ruleset(ALICE));
    let mut rules = Ruleset::default();
    let body = rule_body(json!([]), None, Some("cake*lie"));
    rules
        .put_rule(RuleKind::Content, "nocake", body, None, None)
        .unwrap();
    let nocake = json!({
        "actions": [],
        "pattern": "cake*lie",
        "rule_id": "nocake",
        "enabled": true,
        "default": false
    });
    assert_eq!(serde_json::to_value(&rules.content[0]).unwrap(), nocake);
}

#[test]
fn with_server_defaults_upgrades_a_stored_ruleset() {
    assert_eq!(with_server_defaults(None, ALICE), default_ruleset(ALICE));
    let mut stored = default_ruleset(ALICE);
    stored
        .set_enabled(RuleKind::Override, MASTER, true)
        .unwrap();
    let body = rule_body(json!(["notify"]), Some(json!([])), None);
    stored
        .put_rule(RuleKind::Override, "mine", body, None, None)
        .unwrap();
    stored
        .override_
        .retain(|r| r.rule_id != ".m.rule.reaction" && r.rule_id != ".m.rule.suppress_edits");
    stored.content.push(PushRule {
        rule_id: ".m.rule.contains_user_name".to_owned(),
        default: true,
        enabled: true,
        actions: vec![json!("notify")],
        conditions: None,
        pattern: Some("alice".to_owned()),
    });
    stored.underride[0].actions = Vec::new();
    stored.underride[3].conditions = Some(Vec::new());
    let upgraded = with_server_defaults(Some(stored), ALICE);
    let mut expected = default_ruleset(ALICE);
    expected.override_[0].enabled = true;
    expected.override_.insert(1, upgraded.override_[1].clone());
    expected.underride[0].actions = Vec::new();
    assert_eq!(upgraded.override_[1].rule_id, "mine");
    assert_eq!(upgraded, expected);
}

#[test]
fn rule_kinds_parse_their_wire_names() {
    for kind in RuleKind::ALL {
        assert_eq!(RuleKind::parse(kind.as_str()), Some(kind));
    }
    assert_eq!(RuleKind::parse("global"), None);
}

#[test]
fn the_literal_word_search_agrees_with_the_glob() {
    let bodies = [
        "",
        "alice",
        "Alice!",
        "hi alice smith, lunch?",
        "malice",
        "alice_x",
        "x@room",
        "ping @room now",
        "ÉTÉ à la plage",
        "été",
        "a.b a-b",
        "ΣΑΣ σας",
    ];
    let patterns = [
        "alice",
        "ALICE",
        "Alice Smith",
        "@room",
        "été",
        "Été",
        "a.b",
        "b",
        "ΣΑΣ",
        "smith,",
        "lunch?",
        "x",
    ];
    for body in bodies {
        let text: Vec<char> = body.to_lowercase().chars().collect();
        for pattern in patterns {
            let lowered: Vec<Token> = pattern.to_lowercase().chars().map(Token::Char).collect();
            assert_eq!(
                matches_words(pattern, &text, true),
                glob_matches(&lowered, &text, true),
                "{pattern:?} in {body:?}"
            );
        }
    }
    // Wildcards are wildcards unless the pattern is taken literally (a display name).
    let text: Vec<char> = "lunch? yes".chars().collect();
    assert!(matches_words("lun*", &text, false));
    assert!(!matches_words("lun*", &text, true));
    assert!(matches_words("lunch?", &text, true));
}
