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
}

impl Table {
    /// Every table, in declaration order.
    pub const ALL: &'static [Table] = &[
        Table::Meta,
        Table::UseridAccount,
        Table::TokenhashSession,
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
    ];

    /// The column family's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::UseridAccount => "userid_account",
            Table::TokenhashSession => "tokenhash_session",
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
        }
    }
}
