//! The homeserver's behaviour, one folder or file per capability; no HTTP types here.
//!
//! [`Services`] is built once at start-up and shared as an `Arc`.

pub mod accounts;
pub mod background;
pub mod cache;
pub mod cpu_share;
pub mod deactivation;
pub mod ephemeral;
pub mod error;
pub mod federation;
pub mod health;
pub mod key_backup;
pub mod keyed_locks;
pub mod media;
pub mod memory;
pub mod outbox;
pub mod partial_resync;
pub mod push;
pub mod rate_limit;
pub mod records;
pub mod rooms;
pub mod search;
pub mod server_keys;
pub mod single_flight;
pub mod stream;
pub mod sync;
pub mod timestamp_lookup;
pub mod upgrade_settings;
pub mod user_directory;

use std::sync::Arc;

use crate::config::Config;
use crate::core::SigningKeyPair;
use crate::services::error::ServiceResult;
use crate::storage::{Db, DbOptions};
use accounts::Accounts;
use ephemeral::Ephemeral;
use media::{Media, MediaLimits};
use rate_limit::RateLimiter;
use rooms::Rooms;
use stream::StreamPositions;

/// Milliseconds since the Unix epoch (the spec's timestamps).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `N` bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source works");
    bytes
}

/// Striped async locks: changes under one key (a user, a room) are serialized, different
/// keys rarely wait for each other, and memory stays fixed.
pub struct StripedLocks([Arc<tokio::sync::Mutex<()>>; 32]);

impl Default for StripedLocks {
    fn default() -> Self {
        Self(std::array::from_fn(|_| {
            Arc::new(tokio::sync::Mutex::new(()))
        }))
    }
}

/// Which of `stripes` stripes `key` falls in (striped locks keyed by user or room).
pub fn stripe_of(key: &[u8], stripes: usize) -> usize {
    let hash = key
        .iter()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(*b as usize));
    hash % stripes
}

impl StripedLocks {
    fn stripe(&self, key: &[u8]) -> usize {
        stripe_of(key, self.0.len())
    }

    /// Waits for the lock of `key`'s stripe.
    pub async fn lock(&self, key: &[u8]) -> tokio::sync::MutexGuard<'_, ()> {
        self.0[self.stripe(key)].lock().await
    }

    /// As [`StripedLocks::lock`], a guard a spawned task can hold: a change that must
    /// run to its end even if its request is dropped keeps the key locked until then.
    pub async fn lock_owned(&self, key: &[u8]) -> tokio::sync::OwnedMutexGuard<()> {
        Arc::clone(&self.0[self.stripe(key)]).lock_owned().await
    }

    /// Waits for the locks of all the keys' stripes, taken in stripe order so that two
    /// callers never wait for each other in a cycle.
    pub async fn lock_all<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = keys.into_iter().map(|k| self.stripe(k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            guards.push(self.0[stripe].lock().await);
        }
        guards
    }
}

/// Everything a request handler may call.
pub struct Services {
    /// The validated configuration.
    pub config: Config,
    /// The database.
    pub db: Arc<Db>,
    /// Our server's signing key.
    pub signing_key: Arc<SigningKeyPair>,
    /// The keys it replaced, published as `old_verify_keys`.
    pub old_signing_keys: Arc<Vec<server_keys::OldKey>>,
    /// Users, devices, tokens, UIA.
    pub accounts: Accounts,
    /// Uploads, downloads, thumbnails.
    pub media: Media,
    /// Rooms, events, state, membership, aliases.
    pub rooms: Arc<Rooms>,
    /// The global stream's positions and watermark.
    pub stream_positions: Arc<StreamPositions>,
    /// Typing and receipts.
    pub ephemeral: Ephemeral,
    /// Server-side backups of room keys.
    pub key_backup: key_backup::KeyBackup,
    /// Push rules and notification counts.
    pub push: Arc<push::Push>,
    /// Online, unavailable, offline.
    pub presence: Arc<ephemeral::presence::Presence>,
    /// Per-user wake-ups, filters, `/sync`.
    pub sync: sync::Sync,
    /// Token buckets.
    pub rate_limiter: Arc<RateLimiter>,
    /// The listeners' states, for the health report.
    pub listeners: health::Listeners,
    /// Talking to other servers: outbound requests and their keys.
    pub federation: federation::Federation,
    /// The device lists of other servers' users we share a room with.
    pub remote_device_lists: Arc<federation::device_lists::RemoteDeviceLists>,
    /// The member resyncs of rooms joined with a partial state.
    pub partial_resyncs: partial_resync::PartialResyncs,
}

impl Services {
    /// Opens the data folder (database and signing key) and builds every service.
    pub fn open(config: Config) -> Result<Arc<Self>, String> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("cannot create data_dir {}: {e}", config.data_dir.display()))?;
        let db = Db::open(
            &config.data_path("db"),
            &DbOptions {
                block_cache_bytes: usize::try_from(config.storage.cache_size).unwrap_or(usize::MAX),
                write_buffer_bytes: usize::try_from(config.storage.write_buffer_size)
                    .unwrap_or(usize::MAX),
                max_open_files: i32::try_from(config.storage.max_open_files).unwrap_or(i32::MAX),
                index_in_cache: config.storage.index_in_cache,
            },
        )
        .map_err(|e| e.to_string())?;
        let signing_key = Arc::new(server_keys::load_or_create(
            &config.data_path(server_keys::SIGNING_KEY_FILE),
        )?);
        let old_signing_keys = Arc::new(server_keys::load_old_keys(
            &config.data_path(server_keys::OLD_SIGNING_KEYS_FILE),
            &signing_key,
        )?);
        let rate_limiter = Arc::new(RateLimiter::new(&config.rate_limits));
        let last_event_pos = rooms::event_store::EventStore::last_event_pos(&db)
            .map_err(|e| format!("cannot read the event stream: {}", e.message))?;
        let stream_positions = StreamPositions::open(Arc::clone(&db), last_event_pos)
            .map_err(|e| format!("cannot open the stream: {e}"))?;
        let sync = sync::Sync::new(Arc::clone(&stream_positions));
        let outbox = Arc::new(outbox::Outbox::default());
        let ignore_lists = Arc::new(
            accounts::account_data::load_ignore_lists(&db)
                .map_err(|e| format!("cannot read the accounts: {}", e.message))?,
        );
        let accounts = Accounts::new(
            Arc::clone(&db),
            config.server_name.clone(),
            config.registration.clone(),
            Arc::clone(&rate_limiter),
            Arc::clone(&stream_positions),
            Arc::clone(&outbox),
            Arc::clone(&ignore_lists),
        );
        let media = Media::open(
            Arc::clone(&db),
            &config.data_path("media"),
            config.server_name.clone(),
            MediaLimits {
                max_uploads_per_user: usize::try_from(config.media.max_uploads_per_user)
                    .unwrap_or(usize::MAX),
                max_upload_size: config.media.max_upload_size,
                max_thumbnail_pixels: config.media.max_thumbnail_pixels,
            },
        )
        .map_err(|e| {
            format!(
                "cannot open the media store in {}: {e}",
                config.data_dir.display()
            )
        })?;
        let push = Arc::new(
            push::Push::open(Arc::clone(&db), Arc::clone(&stream_positions), ignore_lists)
                .map_err(|e| format!("cannot load the pushers: {}", e.message))?,
        );
        accounts.attach_device_removal(Arc::clone(&push) as Arc<dyn accounts::DeviceRemovalHook>);
        let remote_device_lists = Arc::new(federation::device_lists::RemoteDeviceLists::new(
            Arc::clone(&db),
            config.server_name.clone(),
        ));
        let rooms = Rooms::open(
            Arc::clone(&db),
            Arc::clone(&stream_positions),
            vec![
                push.clone(),
                Arc::new(search::index::SearchIndex),
                Arc::clone(&remote_device_lists) as Arc<dyn rooms::writer::NewEventHook>,
            ],
            config.server_name.clone(),
            Arc::clone(&signing_key),
            (config.rooms.default_version, Arc::clone(&outbox)),
        )
        .map_err(|e| format!("cannot open the rooms tables: {}", e.message))?;
        let rooms = Arc::new(rooms);
        accounts.attach_rooms(rooms.shared_store());
        accounts.attach_room_mates(Arc::clone(&rooms) as Arc<dyn rooms::room_mates::RoomMates>);
        for (user_id, at) in accounts
            .erased_users()
            .map_err(|e| format!("cannot read the accounts: {}", e.message))?
        {
            rooms.store().mark_erased(&user_id, at);
        }
        search::index::index_existing_events(&db, rooms.store())
            .map_err(|e| format!("cannot build the search index: {}", e.message))?;
        let ephemeral = Ephemeral::new(
            Arc::clone(&db),
            Arc::clone(&stream_positions),
            Arc::clone(&outbox),
        );
        let presence = ephemeral::presence::Presence::open(
            Arc::clone(&db),
            Arc::clone(&stream_positions),
            rooms.shared_store(),
            config.presence.enabled,
        )
        .map_err(|e| format!("cannot load presence: {}", e.message))?;
        presence.attach_federation(ephemeral::presence::PresenceFederation {
            server_name: config.server_name.as_str().to_owned(),
            outbox: Arc::clone(&outbox),
            mates: Arc::clone(&rooms) as Arc<dyn rooms::room_mates::RoomMates>,
        });
        let key_backup = key_backup::KeyBackup::new(Arc::clone(&db));
        let federation = federation::Federation::new(
            &config,
            Arc::clone(&db),
            (Arc::clone(&signing_key), Arc::clone(&old_signing_keys)),
            outbox,
        )?;
        let partial_resyncs =
            partial_resync::PartialResyncs::new(config.federation.partial_state_resync_delay);
        Ok(Arc::new(Self {
            config,
            db,
            signing_key,
            old_signing_keys,
            accounts,
            media,
            rooms,
            stream_positions,
            ephemeral,
            key_backup,
            push,
            presence,
            sync,
            rate_limiter,
            listeners: health::Listeners::default(),
            partial_resyncs,
            federation,
            remote_device_lists,
        }))
    }
}

impl Services {
    /// Drops the kept device lists of `room_id`'s members from other servers (they may
    /// have missed updates while we shared no room with them: after a join, or once a
    /// partial state's members are in), reading the room's state off the async threads.
    pub async fn forget_member_device_lists(&self, room_id: &str) {
        let forget = {
            let (lists, rooms) = (
                Arc::clone(&self.remote_device_lists),
                Arc::clone(&self.rooms),
            );
            let room_id = room_id.to_owned();
            move || lists.forget_members_of(rooms.store(), &room_id)
        };
        match tokio::task::spawn_blocking(forget).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(room = %room_id, error = %e.message, "kept device lists of the room's members were not dropped")
            }
            Err(e) => {
                tracing::warn!(room = %room_id, error = %e, "kept device lists of the room's members were not dropped")
            }
        }
    }
}

impl push::delivery::PushLookups for Services {
    fn event(&self, short: u64) -> ServiceResult<(String, serde_json::Value)> {
        let event = self.rooms.store().event(short)?;
        Ok((event.event_id.clone(), event.pdu().clone()))
    }

    fn member_room(
        &self,
        room: u64,
        user_id: &str,
    ) -> ServiceResult<Option<push::delivery::MemberRoom>> {
        let store = self.rooms.store();
        let room_id = store.room_by_short(room)?.record.room_id;
        let Some(membership) = store.membership(user_id, &room_id)? else {
            return Ok(None);
        };
        let invited_at = match membership.membership.as_str() {
            "join" => None,
            "invite" => Some(membership.pos),
            _ => return Ok(None),
        };
        Ok(Some(push::delivery::MemberRoom {
            room_id,
            invited_at,
        }))
    }

    fn read_positions(
        &self,
        room: u64,
        user_id: &str,
    ) -> ServiceResult<ephemeral::receipts::ReadPositions> {
        self.ephemeral.read_positions(room, user_id)
    }

    fn names(&self, room_id: &str, sender: &str) -> (Option<String>, Option<String>) {
        let store = self.rooms.store();
        let Ok(Some(room)) = store.room(room_id) else {
            return (None, None);
        };
        let field = |kind: &str, key: &str, field: &str| {
            store
                .state_event(room.record.state, kind, key)
                .ok()
                .flatten()
                .and_then(|e| e.pdu()["content"][field].as_str().map(str::to_owned))
        };
        (
            field("m.room.name", "", "name"),
            field("m.room.member", sender, "displayname"),
        )
    }
}
