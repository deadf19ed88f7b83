//! The homeserver's behaviour, one folder or file per capability; no HTTP types here.
//!
//! [`Services`] is built once at start-up and shared as an `Arc`.

pub mod accounts;
pub mod media;
pub mod rate_limit;
pub mod records;
pub mod rooms;
pub mod server_keys;

use std::sync::Arc;

use crate::config::Config;
use crate::core::SigningKeyPair;
use crate::storage::{Db, DbOptions};
use accounts::Accounts;
use media::{Media, MediaLimits};
use rate_limit::RateLimiter;
use rooms::Rooms;

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

/// Everything a request handler may call.
pub struct Services {
    /// The validated configuration.
    pub config: Config,
    /// The database.
    pub db: Arc<Db>,
    /// Our server's signing key.
    pub signing_key: Arc<SigningKeyPair>,
    /// Users, devices, tokens, UIA.
    pub accounts: Accounts,
    /// Uploads, downloads, thumbnails.
    pub media: Media,
    /// Rooms, events, state, membership, aliases.
    pub rooms: Rooms,
    /// Token buckets.
    pub rate_limiter: Arc<RateLimiter>,
}

impl Services {
    /// Opens the data folder (database and signing key) and builds every service.
    pub fn open(config: Config) -> Result<Arc<Self>, String> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("cannot create data_dir {}: {e}", config.data_dir.display()))?;
        let db = Db::open(
            &config.data_path("db"),
            &DbOptions {
                block_cache_bytes: config.storage.cache_size as usize,
            },
        )
        .map_err(|e| e.to_string())?;
        let signing_key = Arc::new(server_keys::load_or_create(
            &config.data_path(server_keys::SIGNING_KEY_FILE),
        )?);
        let rate_limiter = Arc::new(RateLimiter::new(&config.rate_limits));
        let accounts = Accounts::new(
            Arc::clone(&db),
            config.server_name.clone(),
            config.registration.clone(),
            Arc::clone(&rate_limiter),
        );
        let media = Media::open(
            Arc::clone(&db),
            &config.data_path("media"),
            config.server_name.clone(),
            MediaLimits {
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
        let rooms = Rooms::open(
            Arc::clone(&db),
            config.server_name.clone(),
            Arc::clone(&signing_key),
            config.rooms.default_version,
        )
        .map_err(|e| format!("cannot open the rooms tables: {}", e.message))?;
        Ok(Arc::new(Self {
            config,
            db,
            signing_key,
            accounts,
            media,
            rooms,
            rate_limiter,
        }))
    }
}
