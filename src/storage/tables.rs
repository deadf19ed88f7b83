//! Every table (RocksDB column family) of the database, declared in one place.
//!
//! Names follow `key_value`. Keys made of several parts join them with `0xFF`
//! (see [`super::keys`]). Values are JSON unless noted.

/// A table of the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// `name -> bytes`: schema version and other server-wide records. Owner: storage.
    Meta,
    /// `user_id -> Account` (password hash, flags, creation time). Owner: accounts.
    UseridAccount,
    /// `sha256(access_token) -> TokenSession {user_id, device_id}`. Owner: accounts.
    TokenhashSession,
    /// `sha256(openid token) -> OpenIdToken {user_id, expires_at}`. Owner: accounts.
    TokenhashOpenid,
    /// `user_id 0xFF device_id -> Device` (display name, token hash). Owner: accounts.
    UseridDeviceidDevice,
    /// `user_id 0xFF device_id -> LastSeen` (time and IP of the device's last request),
    /// kept apart from `Device` so that writing it never races a device change. Owner: accounts.
    UseridDeviceidLastseen,
    /// `user_id -> Profile` (display name, avatar url). Owner: accounts.
    UseridProfile,
    /// `server_name 0xFF media_id -> MediaRecord` (uploader, content hash, type, name,
    /// image size). Owner: media.
    MediaidMedia,
    /// `user_id 0xFF media_id -> expiry (u64 BE)`: ids from `/create` not uploaded yet.
    /// Owner: media.
    UseridMediaidPending,
    /// `server_name 0xFF media_id 0xFF method 0xFF width (u32 BE) 0xFF height (u32 BE) ->
    /// ThumbnailRecord`. Owner: media.
    MediaidThumbnail,
    /// `type 0xFF state_key -> short id (u64 BE)`: interned state keys. Owner: rooms.
    StatekeyShortstatekey,
    /// `short id (u64 BE) -> type 0xFF state_key`. Owner: rooms.
    ShortstatekeyStatekey,
    /// `event_id -> short id (u64 BE)`: interned event ids. Owner: rooms.
    EventidShorteventid,
    /// `short id (u64 BE) -> event_id`. Owner: rooms.
    ShorteventidEventid,
    /// `short state hash (u64 BE) -> StateDiff` (binary: parent, depth, added pairs,
    /// removed keys): a state snapshot as a delta on its parent. Owner: rooms.
    ShortstatehashStatediff,
    /// `room_id -> short room id (u64 BE)`. Owner: rooms.
    RoomidShortroomid,
    /// `short room id (u64 BE) -> RoomRecord` (room id, version, current state snapshot,
    /// forward extremities, depth): a room's head, rewritten with each event. Owner: rooms.
    ShortroomidRoom,
    /// `short event id (u64 BE) -> PDU`: where schema versions 1 and 2 kept PDUs; moved
    /// into `shortroomid_shorteventid_pdu` at start-up (see `services/rooms/migrations.rs`;
    /// a PDU without metadata, which no read reaches, stays). Owner: rooms.
    ShorteventidPdu,
    /// `short room id (u64 BE) ++ short event id (u64 BE) -> PDU` (federation format;
    /// redacted in place when a redaction applies): a room's events lie together, so the
    /// latest events of a room are read from a block or two rather than one block each.
    /// The room comes from the event's `shorteventid_meta`. Owner: rooms.
    ShortroomidShorteventidPdu,
    /// `short event id (u64 BE) -> EventMeta` (binary: room, stream position, state
    /// snapshots before and after, replaced state event, redacting event; then the event
    /// id, in records written since schema version 2). The timeline entry of an event with
    /// a place holds a copy: whoever writes one writes both. Owner: rooms.
    ShorteventidMeta,
    /// `short room id (u64 BE) ++ stream position (u64 BE) -> short event id (u64 BE) ++
    /// the event's `shorteventid_meta` record`: a room's timeline in arrival order, read
    /// without a lookup per event. Entries written before schema version 3 held the short
    /// id alone; the move at start-up adds the record, except where it is a version-1
    /// record without the event id (read through `shorteventid_meta` as before). Owner:
    /// rooms.
    ShortroomidPosShorteventid,
    /// `stream position (u64 BE) -> short room id (u64 BE)`: every event of every room in
    /// one order (the global stream). Owner: rooms.
    PosShortroomid,
    /// `user_id 0xFF room_id -> MembershipRecord` (membership, event, positions,
    /// forgotten). Owner: rooms.
    UseridRoomidMembership,
    /// `user_id 0xFF device_id 0xFF txn_id -> event_id`: idempotent sends. Owner: rooms.
    TxnidEventid,
    /// `short event id (u64 BE) -> device_id 0xFF txn_id`: for `unsigned.transaction_id`.
    /// Owner: rooms.
    ShorteventidTxnid,
    /// `parent short event id (u64 BE) ++ position (u64 BE) ++ child short event id
    /// (u64 BE) -> Relation` (rel_type, event type, sender): relations of an event. Owner: rooms.
    RelatesPosChild,
    /// `short room id (u64 BE) ++ latest position (u64 BE) ++ root short event id (u64 BE)
    /// -> ()`: a room's threads by latest activity. Owner: rooms.
    ShortroomidThreadpos,
    /// `short room id (u64 BE) ++ origin_server_ts (u64 BE) ++ short event id (u64 BE) -> ()`:
    /// a room's events by timestamp, for `timestamp_to_event`. Owner: rooms.
    ShortroomidTsShorteventid,
    /// `parent short event id (u64 BE) -> Aggregates` (latest edit, thread summary,
    /// references): the bundled aggregations of an event. Owner: rooms.
    ShorteventidAggregates,
    /// `thread root short event id (u64 BE) -> latest reply position (u64 BE)`. Owner: rooms.
    ThreadrootLatestpos,
    /// `short event id (u64 BE) -> GraphRecord` (depth, prev and auth edges as short ids,
    /// status: accepted, outlier, soft-failed, rejected with its reason). Owner: rooms.
    ShorteventidGraph,
    /// `prev short event id (u64 BE) ++ child short event id (u64 BE) -> ()`: the events
    /// naming an event among their `prev_events`. Owner: rooms.
    PrevShorteventidChild,
    /// `auth short event id (u64 BE) ++ child short event id (u64 BE) -> child's short
    /// state key (u64 BE)`: the state events (whatever their status) naming an event
    /// among their `auth_events`, so state resolution can tell whether the room's state
    /// reaches an event without walking the state's auth chains. Owner: rooms (auth index).
    AuthShorteventidChild,
    /// `short event id (u64 BE) -> auth height (u32 BE)`: one more than the greatest
    /// height of its auth events (0 for an event with none held), worked out when a
    /// resolution first needs it and kept. Owner: rooms (auth index).
    ShorteventidAuthheight,
    /// `short event id (u64 BE) -> snapshot (u64 BE)`: the room's current state after an
    /// accepted event, kept where it is not the event's own state after (a fork).
    /// Owner: rooms (stream state).
    ShorteventidCurrentstate,
    /// `short room id (u64 BE) ++ position (u64 BE) -> ()`: events accepted with a gap
    /// before them (prev events not fetched, their state told). Owner: rooms (stream state).
    ShortroomidGappos,
    /// `prev event id 0xFF child short event id (u64 BE) -> ()`: the accepted events
    /// naming an event not held when they were stored among their `prev_events` (it
    /// arrives later: not a forward extremity then). Owner: rooms.
    EventidPendingchild,
    /// `short event id (u64 BE) -> [stripped state event]`: what another server told of a
    /// room with an invite or a knock answer (`invite_room_state`, `knock_room_state`),
    /// for a room we are not in, kept by the member event. Owner: rooms.
    ShorteventidStrippedstate,
    /// `parent event id 0xFF child short event id (u64 BE) -> ()`: relations (edits,
    /// reactions, thread replies) to an event not held yet, indexed once it gets its
    /// place. Owner: rooms.
    EventidPendingrelation,
    /// `short room id (u64 BE) ++ redacted event id -> (redaction short event id (u64 BE),
    /// power (u8))*`: accepted redactions of an event not held yet (backfill goes from the
    /// newest history back), applied when it comes; `power` is whether the redaction's
    /// sender had the power to redact when it came. Owner: rooms.
    ShortroomidEventidPendingredaction,
    /// `redacted event id [0xFF short room id (u64 BE)] -> (redaction short event id (u64
    /// BE), power (u8))*`: the waiting redactions of the builds before
    /// `shortroomid_eventid_pendingredaction`, moved there at start-up (empty after).
    /// Owner: rooms.
    EventidPendingredaction,
    /// `alias -> AliasRecord` (room id, creator). Owner: rooms.
    AliasRoomid,
    /// `room_id 0xFF alias -> ()`. Owner: rooms.
    RoomidAlias,
    /// `room_id -> ()`: rooms listed in the public room directory. Owner: rooms.
    RoomidPublished,
    /// `user_id 0xFF filter_id -> filter` (canonical JSON): stored sync filters. Owner: sync.
    UseridFilteridFilter,
    /// `user_id 0xFF room_id (empty for global) 0xFF type -> AccountDataRecord` (position,
    /// content). Owner: accounts.
    UseridRoomidTypeAccountdata,
    /// `user_id 0xFF position (u64 BE) -> room_id 0xFF type`: account data by change, for
    /// incremental sync. Owner: accounts.
    UseridPosAccountdata,
    /// `short room id (u64 BE) ++ user_id 0xFF receipt type 0xFF thread id -> ReceiptRecord`
    /// (event, timestamp, position): each user's latest receipt; with the type `implicit`
    /// (no receipt type a client may send) and the thread `main` or a root's event id, ->
    /// position (u64 BE): where the user last sent an event in that thread, their implicit
    /// read receipt, shown to no one. Owner: ephemeral.
    ShortroomidUseridReceipt,
    /// `short room id (u64 BE) ++ position (u64 BE) -> user_id 0xFF receipt type 0xFF thread
    /// id`: receipts by change, for incremental sync. Owner: ephemeral.
    ShortroomidPosReceipt,
    /// `user_id -> RulesRecord` (position, ruleset): a user's push rules. Owner: push.
    UseridPushrules,
    /// `user_id 0xFF short room id (u64 BE) ++ position (u64 BE) -> highlight (1 byte) ++
    /// event short id ++ timestamp ++ actions (JSON)`: events that notify the user, for unread
    /// counts and `/notifications`. Owner: push.
    UseridShortroomidPosNotify,
    /// `user_id 0xFF app_id 0xFF pushkey -> PusherRecord` (JSON): a user's pushers. Owner: push.
    UseridAppidPushkeyPusher,
    /// `position (u64 BE) -> room ++ event short id ++ queued at ++ users` (see
    /// `services/push/queue.rs`): events that notified users with pushers, one entry per
    /// event, waiting for every pusher's cursor to pass. Owner: push.
    PosPushqueue,
    /// `user_id 0xFF app_id 0xFF pushkey -> position (u64 BE)`: how far each pusher has
    /// delivered the push queue. Owner: push.
    PusherkeyPushcursor,
    /// `user_id 0xFF device_id 0xFF position (u64 BE) -> event` (JSON: sender, type,
    /// content): a device's inbox of send-to-device messages. Owner: accounts.
    UseridDeviceidPosTodevice,
    /// `user_id 0xFF device_id 0xFF txn_id -> position (u64 BE)`: idempotent to-device
    /// sends. Owner: accounts.
    TxnidTodevice,
    /// `short room id (u64 BE) ++ term ++ 0xFF ++ position (u64 BE) -> field, short event
    /// id, term count, field length` (binary): the full-text index. Owner: search.
    ShortroomidTermPosPosting,
    /// `user_id -> PresenceRecord` (state, status message, last active, position). Owner:
    /// ephemeral.
    UseridPresence,
    /// `user_id 0xFF device_id -> DeviceKeys` (JSON as the device uploaded it). Owner:
    /// accounts.
    UseridDeviceidDevicekeys,
    /// `user_id 0xFF device_id 0xFF algorithm 0xFF upload position (u64 BE) ++ key id ->
    /// key` (JSON): unclaimed one-time keys, oldest upload first. Owner: accounts.
    UseridDeviceidAlgorithmPosOnetimekey,
    /// `user_id 0xFF device_id 0xFF algorithm -> FallbackKey` (key id, key, used). Owner:
    /// accounts.
    UseridDeviceidAlgorithmFallbackkey,
    /// `user_id 0xFF usage (master, self_signing, user_signing) -> CrossSigningKey` (JSON as
    /// uploaded). Owner: accounts.
    UseridUsageCrosssigningkey,
    /// `target user_id 0xFF target key id (device id or public key) 0xFF signer user_id 0xFF
    /// signer key id -> signature`: signatures uploaded by `/keys/signatures/upload`. Owner:
    /// accounts.
    UseridKeyidSignerSignature,
    /// `user_id -> position (u64 BE)`: the latest change of the user's devices or
    /// cross-signing keys. Owner: accounts.
    UseridDevicelistpos,
    /// `user_id -> stream position (u64 BE)`: the `stream_id` of the latest
    /// `m.device_list_update` sent to other servers for one of our users (what `GET
    /// /user/devices` answers, so that the next update's `prev_id` names it). Owner: accounts.
    UseridDevicelistedu,
    /// `user_id -> record (JSON)`: the device list of another server's user we share a
    /// room with (devices and their keys, cross-signing keys, the list's `stream_id`,
    /// whether an update showed a gap). Owner: federation (`device_lists.rs`).
    UseridRemotedevicelist,
    /// `signer user_id 0xFF target user_id -> position (u64 BE)`: the latest signature the
    /// signer uploaded of the target's master key. Owner: accounts.
    UseridTargetidSignaturepos,
    /// `user_id 0xFF version (u64 BE) -> BackupVersion` (algorithm, auth data, etag,
    /// deleted): server-side key backup versions. Owner: key_backup.
    UseridVersionBackup,
    /// `user_id 0xFF version (u64 BE) 0xFF room_id 0xFF session_id -> KeyBackupData`
    /// (JSON): backed-up room keys. Owner: key_backup.
    UseridVersionRoomidSessionidRoomkey,
    /// `server_name -> KeyDocumentRecord` (the server's key document as fetched, and
    /// when): remote servers' keys, also served by our notary endpoint. Owner: federation.
    ServernameKeydocument,
    /// `server_name 0xFF position (u64 BE) -> EDU` (JSON `{edu_type, content}`): EDUs
    /// waiting to be sent to a server, in order. Owner: outbox (written by the services
    /// that make them, read and deleted by the federation sender).
    ServernamePosEdu,
    /// `server_name -> DestinationRecord` (consecutive failures, retry time): the
    /// federation sender's back-off per destination. Owner: federation.
    ServernameDestination,
    /// `origin server 0xFF transaction id -> answer` (JSON): transactions received, so a
    /// repeated one is answered the same without being processed again. Owner: federation.
    OriginTxnidAnswer,
}

impl Table {
    /// Every table, in declaration order.
    pub const ALL: &'static [Table] = &[
        Table::Meta,
        Table::UseridAccount,
        Table::TokenhashSession,
        Table::TokenhashOpenid,
        Table::UseridDeviceidDevice,
        Table::UseridDeviceidLastseen,
        Table::UseridProfile,
        Table::MediaidMedia,
        Table::UseridMediaidPending,
        Table::MediaidThumbnail,
        Table::StatekeyShortstatekey,
        Table::ShortstatekeyStatekey,
        Table::EventidShorteventid,
        Table::ShorteventidEventid,
        Table::ShortstatehashStatediff,
        Table::RoomidShortroomid,
        Table::ShortroomidRoom,
        Table::ShorteventidPdu,
        Table::ShortroomidShorteventidPdu,
        Table::ShorteventidMeta,
        Table::ShortroomidPosShorteventid,
        Table::PosShortroomid,
        Table::UseridRoomidMembership,
        Table::TxnidEventid,
        Table::ShorteventidTxnid,
        Table::RelatesPosChild,
        Table::ShortroomidThreadpos,
        Table::ShortroomidTsShorteventid,
        Table::ShorteventidAggregates,
        Table::ThreadrootLatestpos,
        Table::ShorteventidGraph,
        Table::PrevShorteventidChild,
        Table::AuthShorteventidChild,
        Table::ShorteventidAuthheight,
        Table::ShorteventidCurrentstate,
        Table::ShortroomidGappos,
        Table::EventidPendingchild,
        Table::ShorteventidStrippedstate,
        Table::EventidPendingrelation,
        Table::ShortroomidEventidPendingredaction,
        Table::EventidPendingredaction,
        Table::AliasRoomid,
        Table::RoomidAlias,
        Table::RoomidPublished,
        Table::UseridFilteridFilter,
        Table::UseridRoomidTypeAccountdata,
        Table::UseridPosAccountdata,
        Table::ShortroomidUseridReceipt,
        Table::ShortroomidPosReceipt,
        Table::UseridPushrules,
        Table::UseridShortroomidPosNotify,
        Table::UseridAppidPushkeyPusher,
        Table::PosPushqueue,
        Table::PusherkeyPushcursor,
        Table::UseridDeviceidPosTodevice,
        Table::TxnidTodevice,
        Table::ShortroomidTermPosPosting,
        Table::UseridPresence,
        Table::UseridDeviceidDevicekeys,
        Table::UseridDeviceidAlgorithmPosOnetimekey,
        Table::UseridDeviceidAlgorithmFallbackkey,
        Table::UseridUsageCrosssigningkey,
        Table::UseridKeyidSignerSignature,
        Table::UseridDevicelistpos,
        Table::UseridDevicelistedu,
        Table::UseridRemotedevicelist,
        Table::UseridTargetidSignaturepos,
        Table::UseridVersionBackup,
        Table::UseridVersionRoomidSessionidRoomkey,
        Table::ServernameKeydocument,
        Table::ServernamePosEdu,
        Table::ServernameDestination,
        Table::OriginTxnidAnswer,
    ];

    /// The column family's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::UseridAccount => "userid_account",
            Table::TokenhashSession => "tokenhash_session",
            Table::TokenhashOpenid => "tokenhash_openid",
            Table::UseridDeviceidDevice => "userid_deviceid_device",
            Table::UseridDeviceidLastseen => "userid_deviceid_lastseen",
            Table::UseridProfile => "userid_profile",
            Table::MediaidMedia => "mediaid_media",
            Table::UseridMediaidPending => "userid_mediaid_pending",
            Table::MediaidThumbnail => "mediaid_thumbnail",
            Table::StatekeyShortstatekey => "statekey_shortstatekey",
            Table::ShortstatekeyStatekey => "shortstatekey_statekey",
            Table::EventidShorteventid => "eventid_shorteventid",
            Table::ShorteventidEventid => "shorteventid_eventid",
            Table::ShortstatehashStatediff => "shortstatehash_statediff",
            Table::RoomidShortroomid => "roomid_shortroomid",
            Table::ShortroomidRoom => "shortroomid_room",
            Table::ShorteventidPdu => "shorteventid_pdu",
            Table::ShortroomidShorteventidPdu => "shortroomid_shorteventid_pdu",
            Table::ShorteventidMeta => "shorteventid_meta",
            Table::ShortroomidPosShorteventid => "shortroomid_pos_shorteventid",
            Table::PosShortroomid => "pos_shortroomid",
            Table::UseridRoomidMembership => "userid_roomid_membership",
            Table::TxnidEventid => "txnid_eventid",
            Table::ShorteventidTxnid => "shorteventid_txnid",
            Table::RelatesPosChild => "relates_pos_child",
            Table::ShortroomidThreadpos => "shortroomid_threadpos",
            Table::ShortroomidTsShorteventid => "shortroomid_ts_shorteventid",
            Table::ShorteventidAggregates => "shorteventid_aggregates",
            Table::ThreadrootLatestpos => "threadroot_latestpos",
            Table::ShorteventidGraph => "shorteventid_graph",
            Table::PrevShorteventidChild => "prev_shorteventid_child",
            Table::AuthShorteventidChild => "auth_shorteventid_child",
            Table::ShorteventidAuthheight => "shorteventid_authheight",
            Table::ShorteventidCurrentstate => "shorteventid_currentstate",
            Table::ShortroomidGappos => "shortroomid_gappos",
            Table::EventidPendingchild => "eventid_pendingchild",
            Table::ShorteventidStrippedstate => "shorteventid_strippedstate",
            Table::EventidPendingrelation => "eventid_pendingrelation",
            Table::ShortroomidEventidPendingredaction => "shortroomid_eventid_pendingredaction",
            Table::EventidPendingredaction => "eventid_pendingredaction",
            Table::AliasRoomid => "alias_roomid",
            Table::RoomidAlias => "roomid_alias",
            Table::RoomidPublished => "roomid_published",
            Table::UseridFilteridFilter => "userid_filterid_filter",
            Table::UseridRoomidTypeAccountdata => "userid_roomid_type_accountdata",
            Table::UseridPosAccountdata => "userid_pos_accountdata",
            Table::ShortroomidUseridReceipt => "shortroomid_userid_receipt",
            Table::ShortroomidPosReceipt => "shortroomid_pos_receipt",
            Table::UseridPushrules => "userid_pushrules",
            Table::UseridShortroomidPosNotify => "userid_shortroomid_pos_notify",
            Table::UseridAppidPushkeyPusher => "userid_appid_pushkey_pusher",
            Table::PosPushqueue => "pos_pushqueue",
            Table::PusherkeyPushcursor => "pusherkey_pushcursor",
            Table::UseridDeviceidPosTodevice => "userid_deviceid_pos_todevice",
            Table::TxnidTodevice => "txnid_todevice",
            Table::ShortroomidTermPosPosting => "shortroomid_term_pos_posting",
            Table::UseridPresence => "userid_presence",
            Table::UseridDeviceidDevicekeys => "userid_deviceid_devicekeys",
            Table::UseridDeviceidAlgorithmPosOnetimekey => {
                "userid_deviceid_algorithm_pos_onetimekey"
            }
            Table::UseridDeviceidAlgorithmFallbackkey => "userid_deviceid_algorithm_fallbackkey",
            Table::UseridUsageCrosssigningkey => "userid_usage_crosssigningkey",
            Table::UseridKeyidSignerSignature => "userid_keyid_signer_signature",
            Table::UseridDevicelistpos => "userid_devicelistpos",
            Table::UseridDevicelistedu => "userid_devicelistedu",
            Table::UseridRemotedevicelist => "userid_remotedevicelist",
            Table::UseridTargetidSignaturepos => "userid_targetid_signaturepos",
            Table::UseridVersionBackup => "userid_version_backup",
            Table::UseridVersionRoomidSessionidRoomkey => "userid_version_roomid_sessionid_roomkey",
            Table::ServernameKeydocument => "servername_keydocument",
            Table::ServernamePosEdu => "servername_pos_edu",
            Table::ServernameDestination => "servername_destination",
            Table::OriginTxnidAnswer => "origin_txnid_answer",
        }
    }
}
