//! A made-up origin server for the benches that feed remote PDUs to the rooms service:
//! `remote.example` with a fixed test key (or several such servers, `remote2.example`
//! and on, each with its own key), which knows its own key and has nothing else to give;
//! and the public room a local user creates for its users to join. Included by `#[path]`
//! (each bench is its own crate).

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use serde_json::Value;

use ourwhats::core::pdu_checks::KnownKey;
use ourwhats::core::{SigningKeyPair, UserId};
use ourwhats::services::rooms::create::CreateRoomRequest;
use ourwhats::services::rooms::membership::MemberProfile;
use ourwhats::services::rooms::receive::{MissingSource, PduOutcome};
use ourwhats::services::Services;

/// The origin's server name.
pub const REMOTE: &str = "remote.example";

/// The origin's signing key.
#[allow(dead_code)] // Not every bench signs as the one origin.
pub fn remote_key() -> SigningKeyPair {
    numbered(0).1
}

/// Origin server `n` of several (0 is [`REMOTE`]): its name and signing key.
#[allow(dead_code)] // Not every bench has several origins.
pub fn numbered(n: usize) -> (String, SigningKeyPair) {
    let name = match n {
        0 => REMOTE.to_owned(),
        n => format!("remote{}.example", n + 1),
    };
    let seed = 9u8.wrapping_add(n as u8);
    (name, SigningKeyPair::from_seed(&[seed; 32], "r1"))
}

/// The origin (or origins) as a [`MissingSource`]: their own keys, no events.
pub struct Origin(HashMap<String, (String, KnownKey)>);

impl Origin {
    #[allow(dead_code)] // Not every bench has one origin.
    pub fn new() -> Self {
        Self::many(1)
    }

    /// Origins 0 to `count - 1` of [`numbered`].
    pub fn many(count: usize) -> Self {
        let servers = (0..count.max(1))
            .map(|n| {
                let (name, key) = numbered(n);
                let known = KnownKey {
                    key: key.verifying_key(),
                    valid_until_ts: u64::MAX,
                };
                (name, (key.key_id().to_owned(), known))
            })
            .collect();
        Origin(servers)
    }
}

impl MissingSource for Origin {
    fn keys<'a>(
        &'a self,
        server: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, HashMap<String, KnownKey>> {
        Box::pin(async move {
            let mut out = HashMap::new();
            if let Some((id, key)) = self.0.get(server).filter(|(id, _)| ids.contains(id)) {
                out.insert(id.clone(), *key);
            }
            out
        })
    }

    fn events<'a>(&'a self, _: &'a str, _: &'a [String]) -> BoxFuture<'a, Vec<Value>> {
        Box::pin(async { Vec::new() })
    }
}

/// A public room created by `@alice:localhost`, as the origin needs to know it.
pub struct PublicRoom {
    pub id: String,
    /// The power levels event's id.
    pub levels: String,
    /// The join rules event's id.
    pub rules: String,
    /// The room's newest event.
    pub tip: String,
    pub depth: u64,
}

/// Creates a [`PublicRoom`].
pub async fn public_room(services: &Services) -> PublicRoom {
    let alice = UserId::parse("@alice:localhost").expect("a user id");
    let no_profile = |_: &UserId| None;
    let id = services
        .rooms
        .create_room(
            &alice,
            CreateRoomRequest {
                preset: Some("public_chat".into()),
                ..CreateRoomRequest::default()
            },
            &MemberProfile::default(),
            &no_profile,
        )
        .await
        .expect("the room is created")
        .room_id;
    let store = services.rooms.store();
    let record = store.room(&id).expect("readable").expect("the room").record;
    let state_id = |kind: &str| {
        store
            .state_event(record.state, kind, "")
            .expect("readable")
            .expect("the state event")
            .event_id
    };
    PublicRoom {
        levels: state_id("m.room.power_levels"),
        rules: state_id("m.room.join_rules"),
        tip: record.extremities[0].clone(),
        depth: record.depth,
        id,
    }
}

/// PDUs per transaction, the most a `/send` carries.
pub const PER_TRANSACTION: usize = 50;

/// `origin`'s PDUs received in transactions of [`PER_TRANSACTION`], one after the other
/// (as a server sends to one destination), each PDU accepted.
pub async fn send_in_transactions(
    services: &Services,
    (origin, source): (&str, &Origin),
    pdus: Vec<Value>,
) {
    let mut pdus = pdus.into_iter().peekable();
    while pdus.peek().is_some() {
        let transaction: Vec<Value> = pdus.by_ref().take(PER_TRANSACTION).collect();
        for result in services
            .rooms
            .receive_pdus(origin, transaction, source)
            .await
        {
            let (_, outcome) = result.expect("no storage error");
            assert_eq!(outcome, PduOutcome::Accepted);
        }
    }
}
