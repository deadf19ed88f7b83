//! Accounts: users, passwords, devices, access tokens, user-interactive auth and the stored
//! profile.
//!
//! Owns the tables `userid_account`, `tokenhash_session`, `userid_deviceid_device`,
//! `userid_profile`, `userid_roomid_type_accountdata`, `userid_pos_accountdata`,
//! `userid_deviceid_pos_todevice` and `txnid_todevice`, and the end-to-end encryption keys
//! that belong to devices and users (`userid_deviceid_devicekeys`,
//! `userid_deviceid_algorithm_pos_onetimekey`, `userid_deviceid_algorithm_fallbackkey`,
//! `userid_usage_crosssigningkey`, `userid_keyid_signer_signature`, `userid_devicelistpos`),
//! so that deleting a device deletes its keys in the same write. Spec: client-server API,
//! "Client Authentication", "Account registration and management", "Device Management",
//! "End-to-End Encryption".

pub mod account_data;
pub mod cross_signing;
pub mod device_keys;
pub mod device_list_updates;
pub mod device_lists;
pub mod ignore_lists;
pub mod openid;
pub mod profiles;
pub mod records;
pub mod secrets;
pub mod to_device;
pub mod uia;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

use crate::config::RegistrationConfig;
use crate::core::hex;
use crate::core::identifiers::is_valid_user_localpart;
use crate::core::{ServerName, UserId};
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::now_ms;
use crate::services::rate_limit::{RateAction, RateLimiter};
use crate::services::records::{decode, encode};
use crate::services::rooms::event_store::EventStore;
use crate::services::rooms::membership::MemberProfile;
use crate::services::stream::{StreamPositions, Write};
use crate::services::StripedLocks;
use crate::storage::{keys, Db, Table};
use device_list_updates::Changed;
use records::{Account, Device, LastSeen, Profile, TokenSession};
use uia::{stages, UiaPassed, UiaRequest, UiaSessions};

/// Passwords longer than this are refused (hashing cost is linear in length).
pub const MAX_PASSWORD_BYTES: usize = 512;

/// Device display names longer than this are refused.
pub const MAX_DEVICE_NAME_BYTES: usize = 512;

/// Entries in the last-seen throttle beyond which stale ones are dropped.
const LAST_SEEN_PRUNE_THRESHOLD: usize = 100_000;

/// How often a device's last-seen time is written at most.
const LAST_SEEN_WRITE_INTERVAL_MS: u64 = 60_000;

/// Who an access token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The authenticated user.
    pub user_id: UserId,
    /// Their device.
    pub device_id: String,
    /// Whether the user is a guest.
    pub is_guest: bool,
}

/// A new login: the token is shown once and never stored in clear.
#[derive(Debug, Clone)]
pub struct NewLogin {
    /// The user logged in.
    pub user_id: UserId,
    /// The new access token.
    pub access_token: String,
    /// The device it belongs to.
    pub device_id: String,
}

/// A device as listed to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device id.
    pub device_id: String,
    /// Name chosen by the user.
    pub display_name: Option<String>,
    /// Last request IP.
    pub last_seen_ip: Option<String>,
    /// Last request time (ms).
    pub last_seen_ts: Option<u64>,
}

/// What `/register` asks for, already parsed.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// Desired localpart (or full id on our server); generated when absent.
    pub username: Option<String>,
    /// Password; an account without one cannot use password login.
    pub password: Option<String>,
    /// Device to create or reuse.
    pub device_id: Option<String>,
    /// Its display name.
    pub initial_device_display_name: Option<String>,
    /// Create the account without logging in.
    pub inhibit_login: bool,
    /// `kind=guest`.
    pub guest: bool,
    /// A guest's access token: the guest's account becomes a full one.
    pub guest_access_token: Option<String>,
    /// The `auth` object, if any.
    pub auth: Option<Value>,
}

/// Why an auth stage did not complete.
enum StageError {
    /// The stage failed (a wrong password, a bad token): the client may try again, so
    /// the answer is the 401 challenge carrying this error.
    Failed(ServiceError),
    /// The request is not allowed at all (another user's password, a rate limit, a
    /// storage failure): this error is the answer.
    Refused(ServiceError),
}

/// The accounts service.
pub struct Accounts {
    db: Arc<Db>,
    server_name: ServerName,
    registration: RegistrationConfig,
    uia: UiaSessions,
    /// Serialises account creation, so two registrations of one name cannot both win.
    create_lock: tokio::sync::Mutex<()>,
    /// Serialises every read-modify-write of an account record, its devices and tokens, so
    /// no interleaving (two logins on one device, a login during deactivation, a password
    /// change during deactivation) can leave an orphaned, still valid token behind.
    account_lock: tokio::sync::Mutex<()>,
    /// Shared limits (failed password checks in user-interactive auth are limited per user).
    rate_limiter: Arc<RateLimiter>,
    /// Last time each device's last-seen record was written, to write it at most once a minute.
    /// Keyed by token hash: checking it on every request allocates nothing.
    last_seen_written: Mutex<HashMap<[u8; 32], u64>>,
    /// Positions for account data changes.
    stream: Arc<StreamPositions>,
    /// Serializes each user's account data changes.
    account_data_locks: StripedLocks,
    /// Serializes to-device sends per sender device and transaction.
    to_device_locks: StripedLocks,
    /// When the old to-device transaction ids were last swept (ms).
    to_device_swept_at: std::sync::atomic::AtomicU64,
    /// Serializes every change of a user's one-time, fallback and cross-signing keys and
    /// signatures (per user), so a key is claimed at most once and a claim never
    /// overwrites a newer fallback key.
    keys_locks: StripedLocks,
    /// The rooms' store, to tell room mates of device-list changes (set at start-up).
    rooms: OnceLock<Arc<EventStore>>,
    /// What waits to be sent to other servers (to-device messages to their users).
    outbox: Arc<crate::services::outbox::Outbox>,
    /// The servers sharing rooms with a user, for device-list updates (set at start-up).
    room_mates: OnceLock<Arc<dyn crate::services::rooms::room_mates::RoomMates>>,
    /// Serializes each user's device-list updates to other servers (their sequence).
    device_edu_locks: StripedLocks,
    /// Told when devices are deleted (the push service: their pushers go with them; set
    /// at start-up).
    device_removal: OnceLock<Arc<dyn DeviceRemovalHook>>,
    /// Every local user's ignore list, in memory (the push service reads it too).
    ignore_lists: Arc<ignore_lists::IgnoreLists>,
    /// When expired OpenID tokens were last swept (milliseconds since the epoch).
    openid_swept: std::sync::atomic::AtomicU64,
}

/// Whoever keeps something per device that must go when the device does.
pub trait DeviceRemovalHook: Send + Sync {
    /// `devices` of `user_id` were deleted.
    fn devices_removed<'a>(
        &'a self,
        user_id: &'a str,
        devices: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, ServiceResult<()>>;
}

fn device_key(user_id: &str, device_id: &str) -> Vec<u8> {
    keys::join(&[user_id.as_bytes(), device_id.as_bytes()])
}

impl Accounts {
    /// The service over `db`.
    pub fn new(
        db: Arc<Db>,
        server_name: ServerName,
        registration: RegistrationConfig,
        rate_limiter: Arc<RateLimiter>,
        stream: Arc<StreamPositions>,
        outbox: Arc<crate::services::outbox::Outbox>,
        ignore_lists: Arc<ignore_lists::IgnoreLists>,
    ) -> Self {
        Self {
            db,
            server_name,
            registration,
            uia: UiaSessions::default(),
            create_lock: tokio::sync::Mutex::new(()),
            account_lock: tokio::sync::Mutex::new(()),
            rate_limiter,
            last_seen_written: Mutex::new(HashMap::new()),
            stream,
            account_data_locks: Default::default(),
            to_device_locks: Default::default(),
            to_device_swept_at: Default::default(),
            keys_locks: Default::default(),
            rooms: OnceLock::new(),
            outbox,
            room_mates: OnceLock::new(),
            device_edu_locks: Default::default(),
            device_removal: OnceLock::new(),
            ignore_lists,
            openid_swept: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Lets device deletion tell `hook` (set once at start-up).
    pub fn attach_device_removal(&self, hook: Arc<dyn DeviceRemovalHook>) {
        let _ = self.device_removal.set(hook);
    }

    /// Our server name.
    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    fn account(&self, user_id: &str) -> ServiceResult<Option<Account>> {
        self.db
            .get(Table::UseridAccount, user_id)?
            .map(|bytes| decode(Table::UseridAccount, &bytes))
            .transpose()
    }

    /// Whether `user_id` is a registered, active account of ours.
    pub fn is_active_user(&self, user_id: &UserId) -> ServiceResult<bool> {
        Ok(self
            .account(user_id.as_str())?
            .is_some_and(|a| !a.deactivated))
    }

    /// Whether `user_id` is an active server administrator.
    pub fn is_admin(&self, user_id: &UserId) -> ServiceResult<bool> {
        Ok(self
            .account(user_id.as_str())?
            .is_some_and(|a| a.is_admin && !a.deactivated))
    }

    /// The profile a member event of `user_id` carries (empty when none is set).
    pub fn member_profile(&self, user_id: &UserId) -> ServiceResult<MemberProfile> {
        let profile = self.profile(user_id)?.unwrap_or_default();
        Ok(MemberProfile {
            displayname: profile.displayname,
            avatar_url: profile.avatar_url,
        })
    }

    /// Turns a requested username (localpart, or a full id on our server) into a user id,
    /// checking the grammar and that it is free. Spec: `/register/available` errors.
    pub fn check_username_available(&self, username: &str) -> ServiceResult<UserId> {
        let localpart = match username.strip_prefix('@') {
            Some(full) => {
                let id = UserId::parse(username).map_err(|_| invalid_username())?;
                if id.server_name() != self.server_name.as_str() {
                    return Err(invalid_username().with_message("User id is not on this server"));
                }
                full.split(':').next().unwrap_or("").to_owned()
            }
            None => username.to_owned(),
        };
        // Synapse lower-cases requested names; the spec's grammar has no capitals.
        let localpart = localpart.to_lowercase();
        if !is_valid_user_localpart(&localpart) {
            return Err(invalid_username());
        }
        let user_id = UserId::new_local(&localpart, &self.server_name).map_err(|_| {
            invalid_username().with_message("User id would be longer than 255 bytes")
        })?;
        if self.db.contains(Table::UseridAccount, user_id.as_str())? {
            return Err(ServiceError::new(
                ErrorKind::Invalid,
                ErrorCode::UserInUse,
                "User ID already taken",
            ));
        }
        Ok(user_id)
    }

    /// Creates an account (no login). Used by `/register` and `ourwhats create-user`.
    pub async fn create_account(
        &self,
        user_id: &UserId,
        password: Option<&str>,
        is_admin: bool,
        is_guest: bool,
    ) -> ServiceResult<()> {
        let password_hash = match password {
            Some(p) => Some(hash_password_blocking(p).await?),
            None => None,
        };
        let _guard = self.create_lock.lock().await;
        if self.db.contains(Table::UseridAccount, user_id.as_str())? {
            return Err(ServiceError::new(
                ErrorKind::Invalid,
                ErrorCode::UserInUse,
                "User ID already taken",
            ));
        }
        let account = Account {
            password_hash,
            created_ts: now_ms(),
            is_admin,
            is_guest,
            deactivated: false,
            erased_at: None,
        };
        let profile = Profile {
            displayname: Some(user_id.localpart().to_owned()),
            ..Profile::default()
        };
        let mut batch = self.db.batch();
        batch.put(Table::UseridAccount, user_id.as_str(), encode(&account));
        batch.put(Table::UseridProfile, user_id.as_str(), encode(&profile));
        self.db.commit(batch).await?;
        tracing::info!(user = %user_id, is_admin, is_guest, "account created");
        Ok(())
    }

    /// Registration through `/register`, with user-interactive auth.
    /// Answers `None` when `inhibit_login` was asked for.
    pub async fn register(
        &self,
        request: Registration,
    ) -> ServiceResult<(UserId, Option<NewLogin>)> {
        if request.guest {
            if !self.registration.allow_guests {
                return Err(ServiceError::new(
                    ErrorKind::Forbidden,
                    ErrorCode::GuestAccessForbidden,
                    "Guest access is disabled",
                ));
            }
            // Spec: for guests every parameter but `initial_device_display_name` is
            // ignored, and the server picks the device id.
            let name = request.initial_device_display_name;
            if let Some(name) = &name {
                check_device_name(name)?;
            }
            let user_id = self.generated_user_id()?;
            self.create_account(&user_id, None, false, true).await?;
            let login = self.create_login(&user_id, None, name, None).await?;
            return Ok((user_id, Some(login)));
        }
        if let Some(token) = &request.guest_access_token {
            return self.upgrade_guest(token, &request).await;
        }
        let (user_id, passed) = self.check_new_user(&request).await?;
        // Password login is the only login we offer, so an account without a password
        // could never log in: require one once auth is done (a first request without one
        // still gets the flows, as clients expect).
        let password = request
            .password
            .as_deref()
            .ok_or_else(|| ServiceError::missing_param("Missing `password`"))?;
        self.create_account(&user_id, Some(password), false, false)
            .await?;
        self.finish_uia(passed);
        let login = if request.inhibit_login {
            None
        } else {
            let login = self
                .create_login(
                    &user_id,
                    request.device_id,
                    request.initial_device_display_name,
                    None,
                )
                .await?;
            Some(login)
        };
        Ok((user_id, login))
    }

    /// Spec: "Guest Access": "Guest users can also upgrade their account by going through
    /// the ordinary `register` flow, but specifying the additional POST parameter
    /// `guest_access_token` containing the guest's access token. They are also required to
    /// specify the `username` parameter to the value of the local part of their username."
    /// The account keeps its id, rooms and devices, gets the password and stops being a
    /// guest (its existing tokens too); the answer is a new login, as for any registration.
    async fn upgrade_guest(
        &self,
        token: &str,
        request: &Registration,
    ) -> ServiceResult<(UserId, Option<NewLogin>)> {
        if !self.registration.enabled {
            return Err(ServiceError::forbidden("Registration has been disabled"));
        }
        let not_a_guest = || {
            ServiceError::forbidden(
                "guest_access_token is not the access token of a guest of this server",
            )
        };
        let guest = self.authenticate(token, None).map_err(|_| not_a_guest())?;
        if !guest.is_guest {
            return Err(not_a_guest());
        }
        if let Some(name) = &request.username {
            let named = name
                .strip_prefix('@')
                .map_or(name.as_str(), |full| full.split(':').next().unwrap_or(""));
            if named.to_lowercase() != guest.user_id.localpart() {
                return Err(ServiceError::forbidden(
                    "Cannot register taken user ID without valid guest credentials for that user",
                ));
            }
        }
        if let Some(password) = &request.password {
            check_password_shape(password)?;
        }
        check_device_id(request.device_id.as_deref())?;
        let flows = if self.registration.token.is_some() {
            vec![vec![stages::REGISTRATION_TOKEN]]
        } else {
            vec![vec![stages::DUMMY]]
        };
        let uia = UiaRequest {
            operation: "register_guest_upgrade",
            user: Some(guest.user_id.as_str()),
            subject: String::new(),
            flows,
        };
        let passed = self
            .user_interactive_auth(request.auth.as_ref(), &uia)
            .await?;
        let password = request
            .password
            .as_deref()
            .ok_or_else(|| ServiceError::missing_param("Missing `password`"))?;
        let hash = hash_password_blocking(password).await?;
        {
            let _guard = self.account_lock.lock().await;
            let mut account = self
                .account(guest.user_id.as_str())?
                .filter(|a| a.is_guest && !a.deactivated)
                .ok_or_else(not_a_guest)?;
            account.is_guest = false;
            account.password_hash = Some(hash);
            let mut batch = self.db.batch();
            batch.put(
                Table::UseridAccount,
                guest.user_id.as_str(),
                encode(&account),
            );
            // Every token of the account stops being a guest's in the same write.
            let prefix = keys::prefix(guest.user_id.as_str().as_bytes());
            for item in self.db.scan_prefix(Table::UseridDeviceidDevice, &prefix) {
                let (key, value) = item?;
                let device: Device = decode(Table::UseridDeviceidDevice, &value)?;
                let Some(hash) = hex::decode_32(&device.token_hash) else {
                    continue;
                };
                let session = TokenSession {
                    user_id: guest.user_id.to_string(),
                    device_id: String::from_utf8_lossy(&key[prefix.len()..]).into_owned(),
                    is_guest: false,
                };
                batch.put(Table::TokenhashSession, hash, encode(&session));
            }
            self.db.commit(batch).await?;
        }
        self.finish_uia(passed);
        tracing::info!(user = %guest.user_id, "guest account upgraded");
        let login = if request.inhibit_login {
            None
        } else {
            Some(
                self.create_login(
                    &guest.user_id,
                    request.device_id.clone(),
                    request.initial_device_display_name.clone(),
                    None,
                )
                .await?,
            )
        };
        Ok((guest.user_id, login))
    }

    /// Everything a regular registration checks before creating anything, then
    /// user-interactive auth; answers the user id to create.
    async fn check_new_user(&self, request: &Registration) -> ServiceResult<(UserId, UiaPassed)> {
        if !self.registration.enabled {
            return Err(ServiceError::forbidden("Registration has been disabled"));
        }
        // Checked before any auth stage, so clients learn about a taken or invalid name
        // (or a bad parameter) at once, and nothing is created that a later check refuses.
        let user_id = match &request.username {
            Some(name) => self.check_username_available(name)?,
            None => self.generated_user_id()?,
        };
        if let Some(password) = &request.password {
            check_password_shape(password)?;
        }
        check_device_id(request.device_id.as_deref())?;
        if let Some(name) = &request.initial_device_display_name {
            check_device_name(name)?;
        }
        let flows = if self.registration.token.is_some() {
            vec![vec![stages::REGISTRATION_TOKEN]]
        } else {
            vec![vec![stages::DUMMY]]
        };
        let uia = UiaRequest {
            operation: "register",
            user: None,
            subject: String::new(),
            flows,
        };
        let passed = self
            .user_interactive_auth(request.auth.as_ref(), &uia)
            .await?;
        Ok((user_id, passed))
    }

    fn generated_user_id(&self) -> ServiceResult<UserId> {
        for _ in 0..10 {
            let id = UserId::new_local(&secrets::new_numeric_localpart(), &self.server_name)
                .map_err(ServiceError::internal)?;
            if !self.db.contains(Table::UseridAccount, id.as_str())? {
                return Ok(id);
            }
        }
        Err(ServiceError::internal(
            "could not find a free generated user id",
        ))
    }

    /// Whether `token` is the configured registration token.
    /// Spec: `GET /_matrix/client/v1/register/m.login.registration_token/validity`.
    pub fn registration_token_valid(&self, token: &str) -> ServiceResult<bool> {
        if !self.registration.enabled {
            return Err(ServiceError::forbidden("Registration has been disabled"));
        }
        Ok(self
            .registration
            .token
            .as_deref()
            .is_some_and(|t| secrets::constant_time_eq(t.as_bytes(), token.as_bytes())))
    }

    /// Runs user-interactive auth for `request`: `Ok` once a flow is complete, else the 401
    /// challenge (or another error) to send back.
    pub async fn user_interactive_auth(
        &self,
        auth: Option<&Value>,
        request: &UiaRequest<'_>,
    ) -> ServiceResult<UiaPassed> {
        if let Some(auth) = auth {
            if !auth.is_object() {
                return Err(ServiceError::bad_json("`auth` must be an object"));
            }
        }
        let session = self.uia.open(auth, request)?;
        if let Some(stage) = auth.and_then(|a| a.get("type")).and_then(Value::as_str) {
            if !request.flows.iter().any(|flow| flow.contains(&stage)) {
                let failure = ServiceError::new(
                    ErrorKind::Invalid,
                    ErrorCode::Unrecognized,
                    format!("Auth stage {stage} is not offered for this request"),
                );
                return Err(self.uia.challenge(&session, request, Some(failure)));
            }
            let auth = auth.expect("stage came from auth");
            match self.verify_stage(stage, auth, request.user).await {
                Ok(()) => self.uia.complete_stage(&session, stage),
                Err(StageError::Refused(refusal)) => return Err(refusal),
                Err(StageError::Failed(failure)) => {
                    return Err(self.uia.challenge(&session, request, Some(failure)))
                }
            }
        }
        if self.uia.is_complete(&session, request) {
            Ok(UiaPassed { session })
        } else {
            Err(self.uia.challenge(&session, request, None))
        }
    }

    /// Ends a session whose operation succeeded. Until then a client may retry the
    /// operation with the same session (the spec: completed stages cannot be retried).
    pub fn finish_uia(&self, passed: UiaPassed) {
        self.uia.finish(&passed.session);
    }

    async fn verify_stage(
        &self,
        stage: &str,
        auth: &Value,
        user: Option<&str>,
    ) -> Result<(), StageError> {
        match stage {
            stages::DUMMY => Ok(()),
            stages::REGISTRATION_TOKEN => {
                let given = auth.get("token").and_then(Value::as_str).unwrap_or("");
                let expected = self.registration.token.as_deref().unwrap_or("");
                if !expected.is_empty()
                    && secrets::constant_time_eq(given.as_bytes(), expected.as_bytes())
                {
                    Ok(())
                } else {
                    Err(StageError::Failed(ServiceError::new(
                        ErrorKind::Unauthenticated,
                        ErrorCode::Forbidden,
                        "Invalid registration token",
                    )))
                }
            }
            stages::PASSWORD => {
                let Some(user) = user else {
                    return Err(StageError::Refused(ServiceError::forbidden(
                        "No user to check a password for",
                    )));
                };
                let claimed = self.identifier_user(auth).map_err(StageError::Failed)?;
                if claimed.as_str() != user {
                    // As Synapse: proving another account's password is no failed
                    // attempt to retry but a request that is not allowed.
                    return Err(StageError::Refused(ServiceError::forbidden(
                        "Password auth is for another user than the one logged in",
                    )));
                }
                // Each guess costs an Argon2 hash: limit guesses per user.
                self.rate_limiter
                    .check(RateAction::Login, user)
                    .map_err(StageError::Refused)?;
                let password = auth
                    .get("password")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ServiceError::missing_param("Missing `password`"))
                    .map_err(StageError::Failed)?;
                self.check_password(&claimed, password).await.map_err(|e| {
                    match e.kind.is_server_side() {
                        true => StageError::Refused(e),
                        false => StageError::Failed(e),
                    }
                })
            }
            other => Err(StageError::Failed(ServiceError::new(
                ErrorKind::Invalid,
                ErrorCode::Unrecognized,
                format!("Unknown auth stage {other}"),
            ))),
        }
    }

    /// The user named by a login or auth body: `identifier` of type `m.id.user`, or the
    /// deprecated top-level `user`. A localpart is taken as ours.
    pub fn identifier_user(&self, body: &Value) -> ServiceResult<UserId> {
        let name = match body.get("identifier") {
            Some(identifier) => {
                let kind = identifier.get("type").and_then(Value::as_str).unwrap_or("");
                if kind != "m.id.user" {
                    return Err(ServiceError::new(
                        ErrorKind::Invalid,
                        ErrorCode::Unrecognized,
                        format!("Identifier type {kind:?} is not supported; use m.id.user"),
                    ));
                }
                identifier.get("user").and_then(Value::as_str)
            }
            None => body.get("user").and_then(Value::as_str),
        }
        .ok_or_else(|| ServiceError::missing_param("Missing user identifier"))?;
        if name.starts_with('@') {
            UserId::parse(name).map_err(|_| ServiceError::forbidden("Invalid username or password"))
        } else {
            UserId::new_local(&name.to_lowercase(), &self.server_name)
                .map_err(|_| ServiceError::forbidden("Invalid username or password"))
        }
    }

    /// Checks a password; wrong user, wrong password and no password all answer the same
    /// 403, so the answer does not tell which accounts exist.
    pub async fn check_password(&self, user_id: &UserId, password: &str) -> ServiceResult<()> {
        let invalid = || ServiceError::forbidden("Invalid username or password");
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(invalid());
        }
        let account = self.account(user_id.as_str())?;
        let hash = account.as_ref().and_then(|a| a.password_hash.clone());
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || match hash {
            Some(hash) => secrets::verify_password(&password, &hash),
            None => {
                // Spend the same time as a real check, so timing does not reveal the account.
                let _ = secrets::hash_password(&password);
                false
            }
        })
        .await
        .map_err(ServiceError::internal)?;
        if !matches {
            return Err(invalid());
        }
        if account.is_some_and(|a| a.deactivated) {
            return Err(ServiceError::forbidden("This account has been deactivated")
                .with_code(ErrorCode::UserDeactivated));
        }
        Ok(())
    }

    /// Password login. Spec: `POST /login` with `m.login.password`.
    pub async fn login_with_password(
        &self,
        body: &Value,
        device_id: Option<String>,
        display_name: Option<String>,
        ip: Option<String>,
    ) -> ServiceResult<NewLogin> {
        let user_id = self.identifier_user(body)?;
        let password = body
            .get("password")
            .and_then(Value::as_str)
            .ok_or_else(|| ServiceError::missing_param("Missing `password`"))?;
        if user_id.server_name() != self.server_name.as_str() {
            return Err(ServiceError::forbidden("Invalid username or password"));
        }
        self.check_password(&user_id, password).await?;
        self.create_login(&user_id, device_id, display_name, ip)
            .await
    }

    /// A new access token for `user_id` on `device_id` (new, or existing: then its old token
    /// stops working, as the spec says for a reused device id).
    pub async fn create_login(
        &self,
        user_id: &UserId,
        device_id: Option<String>,
        display_name: Option<String>,
        ip: Option<String>,
    ) -> ServiceResult<NewLogin> {
        check_device_id(device_id.as_deref())?;
        if let Some(id) = &device_id {
            // Spec: "The given device ID must not be the same as a cross-signing key ID."
            if self.is_cross_signing_key_id(user_id.as_str(), id)? {
                return Err(ServiceError::invalid_param(
                    "This device id is one of the user's cross-signing keys",
                ));
            }
        }
        let device_id = device_id.unwrap_or_else(secrets::new_device_id);
        if let Some(name) = &display_name {
            check_device_name(name)?;
        }
        let token = secrets::new_access_token();
        let hash = secrets::token_hash(&token);
        let key = device_key(user_id.as_str(), &device_id);
        let _guard = self.account_lock.lock().await;
        let account = self
            .account(user_id.as_str())?
            .ok_or_else(|| ServiceError::forbidden("Unknown user"))?;
        if account.deactivated {
            return Err(ServiceError::forbidden("This account has been deactivated")
                .with_code(ErrorCode::UserDeactivated));
        }
        let mut writes: Vec<Write> = Vec::with_capacity(4);
        let existing: Option<Device> = self
            .db
            .get(Table::UseridDeviceidDevice, &key)?
            .map(|b| decode(Table::UseridDeviceidDevice, &b))
            .transpose()?;
        if let Some(old) = &existing {
            if let Some(old_hash) = hex::decode_32(&old.token_hash) {
                writes.push((Table::TokenhashSession, old_hash.to_vec(), None));
            }
        }
        // A new device is a change of the user's device list (spec: "Tracking the device
        // list for a user"); a reused one keeps its keys and changes nothing others see.
        let announce = existing.is_none();
        // Spec: the display name is "ignored if device_id corresponds to a known device".
        let device = Device {
            display_name: match existing {
                Some(d) => d.display_name,
                None => display_name,
            },
            token_hash: hex::encode(&hash),
        };
        let last_seen = LastSeen { ts: now_ms(), ip };
        let session = TokenSession {
            user_id: user_id.to_string(),
            device_id: device_id.clone(),
            is_guest: account.is_guest,
        };
        writes.push((
            Table::UseridDeviceidDevice,
            key.clone(),
            Some(encode(&device)),
        ));
        writes.push((Table::UseridDeviceidLastseen, key, Some(encode(&last_seen))));
        writes.push((
            Table::TokenhashSession,
            hash.to_vec(),
            Some(encode(&session)),
        ));
        self.commit_keys_change(user_id.as_str(), announce, move |_| writes)
            .await?;
        if announce {
            self.tell_other_servers(user_id.as_str(), Changed::Devices(&[&device_id]))
                .await;
        }
        Ok(NewLogin {
            user_id: user_id.clone(),
            access_token: token,
            device_id,
        })
    }

    /// Who `token` belongs to; 401 `M_UNKNOWN_TOKEN` if nobody. Records the device's
    /// last-seen time and IP at most once a minute.
    pub fn authenticate(&self, token: &str, ip: Option<&str>) -> ServiceResult<Session> {
        let unknown =
            || ServiceError::unknown_token("Unknown access token").with("soft_logout", false);
        if token.is_empty() || token.len() > 512 {
            return Err(unknown());
        }
        let hash = secrets::token_hash(token);
        let Some(bytes) = self.db.get(Table::TokenhashSession, hash)? else {
            return Err(unknown());
        };
        let record: TokenSession = decode(Table::TokenhashSession, &bytes)?;
        let user_id = UserId::parse(&record.user_id).map_err(ServiceError::internal)?;
        self.note_last_seen(hash, &record.user_id, &record.device_id, ip);
        Ok(Session {
            user_id,
            device_id: record.device_id,
            is_guest: record.is_guest,
        })
    }

    fn note_last_seen(
        &self,
        token_hash: [u8; 32],
        user_id: &str,
        device_id: &str,
        ip: Option<&str>,
    ) {
        let now = now_ms();
        {
            let mut written = self
                .last_seen_written
                .lock()
                .expect("last-seen lock poisoned");
            if written.len() > LAST_SEEN_PRUNE_THRESHOLD {
                // Tokens logged out long ago: forget them.
                written.retain(|_, at| now.saturating_sub(*at) < LAST_SEEN_WRITE_INTERVAL_MS);
            }
            let entry = written.entry(token_hash).or_insert(0);
            if now.saturating_sub(*entry) < LAST_SEEN_WRITE_INTERVAL_MS {
                return;
            }
            *entry = now;
        }
        let mut batch = self.db.batch();
        let record = LastSeen {
            ts: now,
            ip: ip.map(str::to_owned),
        };
        batch.put(
            Table::UseridDeviceidLastseen,
            device_key(user_id, device_id),
            encode(&record),
        );
        // Losing a last-seen time in a crash is harmless: no fsync. (If the device was just
        // deleted, the stray record is never listed and a later login overwrites it.)
        if let Err(e) = self.db.write_relaxed(batch) {
            tracing::warn!(error = %e, "could not record last-seen time");
        }
    }

    /// The devices of `user_id`.
    pub fn devices(&self, user_id: &UserId) -> ServiceResult<Vec<DeviceInfo>> {
        let prefix = keys::prefix(user_id.as_str().as_bytes());
        let mut found = Vec::new();
        for item in self.db.scan_prefix(Table::UseridDeviceidDevice, &prefix) {
            let (key, value) = item?;
            let device: Device = decode(Table::UseridDeviceidDevice, &value)?;
            found.push((key, device));
        }
        let seen = self
            .db
            .multi_get(Table::UseridDeviceidLastseen, found.iter().map(|(k, _)| k))?;
        found
            .into_iter()
            .zip(seen)
            .map(|((key, device), seen)| {
                let device_id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                self.device_info(device_id, device, seen.as_deref())
            })
            .collect()
    }

    fn device_info(
        &self,
        device_id: String,
        device: Device,
        last_seen: Option<&[u8]>,
    ) -> ServiceResult<DeviceInfo> {
        let seen: Option<LastSeen> = last_seen
            .map(|b| decode(Table::UseridDeviceidLastseen, b))
            .transpose()?;
        Ok(DeviceInfo {
            device_id,
            display_name: device.display_name,
            last_seen_ip: seen.as_ref().and_then(|s| s.ip.clone()),
            last_seen_ts: seen.map(|s| s.ts),
        })
    }

    /// One device of `user_id`; 404 `M_NOT_FOUND` if it does not exist.
    pub fn device(&self, user_id: &UserId, device_id: &str) -> ServiceResult<DeviceInfo> {
        let device = self.device_record(user_id, device_id)?;
        let seen = self.db.get(
            Table::UseridDeviceidLastseen,
            device_key(user_id.as_str(), device_id),
        )?;
        self.device_info(device_id.to_owned(), device, seen.as_deref())
    }

    fn device_record(&self, user_id: &UserId, device_id: &str) -> ServiceResult<Device> {
        self.db
            .get(
                Table::UseridDeviceidDevice,
                device_key(user_id.as_str(), device_id),
            )?
            .map(|b| decode(Table::UseridDeviceidDevice, &b))
            .transpose()?
            .ok_or_else(|| ServiceError::not_found("No such device"))
    }

    /// Renames a device. Spec: `PUT /devices/{deviceId}`.
    pub async fn rename_device(
        &self,
        user_id: &UserId,
        device_id: &str,
        display_name: Option<String>,
    ) -> ServiceResult<()> {
        if let Some(name) = &display_name {
            check_device_name(name)?;
        }
        let _guard = self.account_lock.lock().await;
        let mut device = self.device_record(user_id, device_id)?;
        // Spec: "If not given, the display name is unchanged."
        if display_name.is_none() {
            return Ok(());
        }
        device.display_name = display_name;
        let write = (
            Table::UseridDeviceidDevice,
            device_key(user_id.as_str(), device_id),
            Some(encode(&device)),
        );
        // The name is part of what `/keys/query` shows (`unsigned.device_display_name`).
        self.commit_keys_change(user_id.as_str(), true, move |_| vec![write])
            .await?;
        self.tell_other_servers(user_id.as_str(), Changed::Devices(&[device_id]))
            .await;
        Ok(())
    }

    /// Deletes devices and their tokens; unknown ids are ignored, as the spec asks.
    pub async fn delete_devices(
        &self,
        user_id: &UserId,
        device_ids: &[String],
    ) -> ServiceResult<()> {
        let guard = self.account_lock.lock().await;
        self.delete_devices_locked(&guard, user_id, device_ids)
            .await
    }

    /// Deletes every device of `user_id` except `keep`.
    pub async fn delete_all_devices(
        &self,
        user_id: &UserId,
        keep: Option<&str>,
    ) -> ServiceResult<()> {
        let guard = self.account_lock.lock().await;
        self.delete_all_devices_locked(&guard, user_id, keep).await
    }

    /// [`Accounts::delete_devices`] for a caller that holds the account lock (the guard
    /// is the proof).
    async fn delete_devices_locked(
        &self,
        _guard: &tokio::sync::MutexGuard<'_, ()>,
        user_id: &UserId,
        device_ids: &[String],
    ) -> ServiceResult<()> {
        // Listed and removed under the user's keys lock, so that no upload for a device
        // being deleted lands between the listing and the removal.
        let _keys = self.keys_locks.lock(user_id.as_str().as_bytes()).await;
        let mut writes: Vec<Write> = Vec::new();
        // Only devices that exist are announced as deleted (made-up ids would each cost
        // an update to every server sharing a room).
        let mut removed: std::collections::BTreeSet<&str> = Default::default();
        for device_id in device_ids {
            let key = device_key(user_id.as_str(), device_id);
            let Some(bytes) = self.db.get(Table::UseridDeviceidDevice, &key)? else {
                continue;
            };
            if !removed.insert(device_id) {
                continue;
            }
            let device: Device = decode(Table::UseridDeviceidDevice, &bytes)?;
            if let Some(hash) = hex::decode_32(&device.token_hash) {
                writes.push((Table::TokenhashSession, hash.to_vec(), None));
            }
            writes.push((Table::UseridDeviceidDevice, key.clone(), None));
            writes.push((Table::UseridDeviceidLastseen, key, None));
            self.clear_inbox(&mut writes, user_id.as_str(), device_id)?;
            // Spec: "Device keys for the device are deleted alongside the device."
            self.device_key_removals(&mut writes, user_id.as_str(), device_id)?;
        }
        if !writes.is_empty() {
            self.commit_keys_change(user_id.as_str(), true, move |_| writes)
                .await?;
            let removed: Vec<&str> = removed.into_iter().collect();
            self.tell_other_servers(user_id.as_str(), Changed::Devices(&removed))
                .await;
        }
        // Spec ("Push Notifications"): a device's pushers go with it (as Synapse removes
        // the pushers of a deleted access token).
        if let Some(hook) = self.device_removal.get() {
            hook.devices_removed(user_id.as_str(), device_ids).await?;
        }
        Ok(())
    }

    async fn delete_all_devices_locked(
        &self,
        guard: &tokio::sync::MutexGuard<'_, ()>,
        user_id: &UserId,
        keep: Option<&str>,
    ) -> ServiceResult<()> {
        let ids: Vec<String> = self
            .devices(user_id)?
            .into_iter()
            .map(|d| d.device_id)
            .filter(|id| Some(id.as_str()) != keep)
            .collect();
        self.delete_devices_locked(guard, user_id, &ids).await
    }

    /// Sets a new password. Spec: `POST /account/password`.
    pub async fn change_password(
        &self,
        user_id: &UserId,
        new_password: &str,
        logout_other_devices: bool,
        current_device: Option<&str>,
    ) -> ServiceResult<()> {
        check_password_shape(new_password)?;
        let hash = hash_password_blocking(new_password).await?;
        let guard = self.account_lock.lock().await;
        let mut account = self
            .account(user_id.as_str())?
            .ok_or_else(|| ServiceError::forbidden("Unknown user"))?;
        if account.deactivated {
            return Err(ServiceError::forbidden("This account has been deactivated")
                .with_code(ErrorCode::UserDeactivated));
        }
        account.password_hash = Some(hash);
        let mut batch = self.db.batch();
        batch.put(Table::UseridAccount, user_id.as_str(), encode(&account));
        self.db.commit(batch).await?;
        if logout_other_devices {
            self.delete_all_devices_locked(&guard, user_id, current_device)
                .await?;
        }
        Ok(())
    }

    /// Deactivates an account: no more logins, every device and token gone, profile
    /// cleared, the id kept reserved. The password hash stays so that a login with the
    /// right password can be told `M_USER_DEACTIVATED` (a wrong one still gets the plain
    /// 403). With `erase`, the user's events are served redacted from now on to users who
    /// join their rooms afterwards (spec: "any users (or servers) which join the room
    /// after the erasure request are served redacted copies of the events sent by this
    /// account. Users which had visibility on the events prior to the erasure are still
    /// able to see unredacted copies"). Spec: `POST /account/deactivate`.
    pub async fn deactivate(&self, user_id: &UserId, erase: bool) -> ServiceResult<()> {
        let guard = self.account_lock.lock().await;
        let mut account = self
            .account(user_id.as_str())?
            .ok_or_else(|| ServiceError::forbidden("Unknown user"))?;
        account.deactivated = true;
        if erase && account.erased_at.is_none() {
            let at = self.stream.watermark();
            account.erased_at = Some(at);
            if let Some(rooms) = self.rooms.get() {
                rooms.mark_erased(user_id.as_str(), at);
            }
        }
        let mut batch = self.db.batch();
        batch.put(Table::UseridAccount, user_id.as_str(), encode(&account));
        batch.put(
            Table::UseridProfile,
            user_id.as_str(),
            encode(&Profile::default()),
        );
        self.db.commit(batch).await?;
        self.delete_all_devices_locked(&guard, user_id, None)
            .await?;
        self.remove_cross_signing(user_id.as_str()).await?;
        if erase {
            // Spec: "The server should additionally erase any non-event data associated
            // with the user, such as account data". Each object becomes `{}`, as a
            // removal does.
            for data in self.all_account_data(user_id.as_str())? {
                self.update_account_data(
                    user_id.as_str(),
                    data.room_id.as_deref(),
                    &data.kind,
                    |content| {
                        content
                            .filter(|c| c != &Value::Object(Default::default()))
                            .map(|_| None)
                    },
                )
                .await?;
            }
        }
        tracing::info!(user = %user_id, "account deactivated");
        Ok(())
    }

    /// The deactivated accounts (read at start-up, to finish their leaving of rooms).
    pub fn deactivated_users(&self) -> ServiceResult<Vec<UserId>> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(Table::UseridAccount, b"") {
            let (key, value) = item?;
            let account: Account = decode(Table::UseridAccount, &value)?;
            if account.deactivated {
                if let Ok(user) = UserId::parse(&String::from_utf8_lossy(&key)) {
                    out.push(user);
                }
            }
        }
        Ok(out)
    }

    /// Users who asked for erasure, and from which stream position (read at start-up, for
    /// the rooms' store).
    pub fn erased_users(&self) -> ServiceResult<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(Table::UseridAccount, b"") {
            let (key, value) = item?;
            let account: Account = decode(Table::UseridAccount, &value)?;
            if let Some(at) = account.erased_at {
                out.push((String::from_utf8_lossy(&key).into_owned(), at));
            }
        }
        Ok(out)
    }

    /// The stored profile of `user_id`, if the account exists.
    pub fn profile(&self, user_id: &UserId) -> ServiceResult<Option<Profile>> {
        self.db
            .get(Table::UseridProfile, user_id.as_str())?
            .map(|b| decode(Table::UseridProfile, &b))
            .transpose()
    }
}

fn invalid_username() -> ServiceError {
    ServiceError::new(
        ErrorKind::Invalid,
        ErrorCode::InvalidUsername,
        "User ID may only contain a-z, 0-9, '.', '_', '=', '-', '/' and '+'",
    )
}

fn check_password_shape(password: &str) -> ServiceResult<()> {
    if password.is_empty() {
        return Err(ServiceError::new(
            ErrorKind::Invalid,
            ErrorCode::WeakPassword,
            "Password must not be empty",
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ServiceError::invalid_param(format!(
            "Password is longer than {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

fn check_device_id(device_id: Option<&str>) -> ServiceResult<()> {
    match device_id {
        Some(id) if id.is_empty() || id.len() > 255 => Err(ServiceError::invalid_param(
            "device_id must be 1 to 255 bytes",
        )),
        _ => Ok(()),
    }
}

fn check_device_name(name: &str) -> ServiceResult<()> {
    if name.len() > MAX_DEVICE_NAME_BYTES {
        return Err(ServiceError::invalid_param(format!(
            "Device display name is longer than {MAX_DEVICE_NAME_BYTES} bytes"
        )));
    }
    Ok(())
}

async fn hash_password_blocking(password: &str) -> ServiceResult<String> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || secrets::hash_password(&password))
        .await
        .map_err(ServiceError::internal)?
        .map_err(ServiceError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hashes_round_trip_through_hex() {
        let hash = secrets::token_hash("abc");
        assert_eq!(hex::decode_32(&hex::encode(&hash)), Some(hash));
    }
}
