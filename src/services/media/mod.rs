//! Media: uploads (direct and `create` + `PUT`), downloads, thumbnails.
//!
//! Owns the tables `mediaid_media`, `userid_mediaid_pending`, `mediaid_thumbnail` and the
//! blob files under `<data_dir>/media/`. Spec: client-server API, "Content repository".
//! Keys carry the server name so that remote media fetched over federation can live in the
//! same tables and store later; today only our own server's media exists.

pub mod blob_store;
pub mod records;
pub mod thumbnail;
pub mod upload_slots;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use futures_util::Stream;
use tokio::sync::Notify;

use crate::core::{ServerName, UserId};
use crate::services::accounts::secrets;
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::now_ms;
use crate::services::records::{decode, encode};
use crate::storage::{keys, Db, Table};
use blob_store::{BlobStore, BlobWriteError, StoredBlob};
use records::{Content, ImageInfo, MediaRecord, ThumbnailRecord};
use thumbnail::{Method, Plan, ThumbnailError};
use upload_slots::{NoSlot, UploadSlot, UploadSlots};

use crate::services::single_flight::SingleFlight;

/// How long an id from `/create` may wait for its upload (the spec's recommendation).
pub const UNUSED_EXPIRY_MS: u64 = 24 * 3_600_000;
/// Pending `/create` ids a user may hold at once.
pub const MAX_PENDING_PER_USER: usize = 50;
/// The longest a download waits for a pending upload, whatever `timeout_ms` asks.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Longest file name kept.
const MAX_FILENAME_BYTES: usize = 1024;
/// Uploads in progress at once, server-wide (each holds a writer thread); more get 429.
pub const MAX_CONCURRENT_UPLOADS: usize = 64;
/// Other servers' media fetched at once, server-wide; more get 429.
const MAX_CONCURRENT_REMOTE_FETCHES: usize = 32;
/// Media fetched at once from one server (a client shows several of its pictures at
/// once; the same media asked by several clients is one fetch).
const REMOTE_FETCHES_PER_SERVER: usize = 4;
/// Thumbnails decoded at once (decoding takes up to 8 bytes per source pixel).
const CONCURRENT_DECODES: usize = 2;
/// Thumbnails cached per media at most; further sizes are rendered but not stored.
const MAX_CACHED_THUMBNAILS: usize = 32;
/// Bytes of an upload read to find an image header.
const IMAGE_PROBE_BYTES: u64 = 1 << 20;

/// A stored piece of content, ready to serve.
#[derive(Debug, Clone)]
pub struct Served {
    /// The blob holding the bytes.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// Content type to serve.
    pub content_type: String,
    /// File name for `Content-Disposition`, if known.
    pub filename: Option<String>,
}

/// Limits the media service enforces.
#[derive(Debug, Clone, Copy)]
pub struct MediaLimits {
    /// Uploads one user may have in progress at once.
    pub max_uploads_per_user: usize,
    /// Largest upload in bytes.
    pub max_upload_size: u64,
    /// Largest image (pixels) thumbnails are made from.
    pub max_thumbnail_pixels: u64,
}

/// The media service.
pub struct Media {
    db: Arc<Db>,
    store: BlobStore,
    server_name: ServerName,
    limits: MediaLimits,
    /// Downloads waiting for a pending upload, by media key.
    waiters: Mutex<HashMap<Vec<u8>, Arc<Notify>>>,
    /// Serialises check-and-set of media records (create limits, first upload wins).
    write_lock: tokio::sync::Mutex<()>,
    /// Pending ids whose content is being uploaded right now (a second PUT gets 409).
    uploading: Mutex<std::collections::HashSet<Vec<u8>>>,
    /// Bounds concurrent uploads, in all and per user.
    upload_slots: UploadSlots,
    /// Bounds concurrent fetches of other servers' media, in all and per server.
    remote_slots: UploadSlots,
    /// Fetches of other servers' media in flight, by media key.
    remote_fetches: SingleFlight<ServiceResult<()>>,
    /// Bounds concurrent thumbnail decodes.
    decode_slots: tokio::sync::Semaphore,
}

fn media_key(server: &str, media_id: &str) -> Vec<u8> {
    keys::join(&[server.as_bytes(), media_id.as_bytes()])
}

fn thumbnail_key(server: &str, media_id: &str, method: Method, width: u32, height: u32) -> Vec<u8> {
    keys::join(&[
        server.as_bytes(),
        media_id.as_bytes(),
        method.as_str().as_bytes(),
        &width.to_be_bytes(),
        &height.to_be_bytes(),
    ])
}

/// Spec: "Matrix Content (mxc://) URIs": a media id is `[A-Za-z0-9_-]+`.
pub fn is_valid_media_id(media_id: &str) -> bool {
    !media_id.is_empty()
        && media_id.len() <= 255
        && media_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A content type fit for a header (`type/subtype` plus parameters, visible ASCII), else
/// `application/octet-stream`.
pub fn sanitize_content_type(given: Option<&str>) -> String {
    match given.map(str::trim) {
        Some(t)
            if !t.is_empty()
                && t.len() <= 255
                && t.contains('/')
                && t.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
        {
            t.to_owned()
        }
        _ => "application/octet-stream".to_owned(),
    }
}

/// The uploader's file name, kept as given (the spec wants the same name back; serving
/// escapes it), unless empty or absurdly long.
pub fn sanitize_filename(given: Option<&str>) -> Option<String> {
    let name = given?;
    if name.is_empty() || name.len() > MAX_FILENAME_BYTES {
        return None;
    }
    Some(name.to_owned())
}

fn blob_error(e: BlobWriteError, limit: u64) -> ServiceError {
    match e {
        BlobWriteError::TooLarge => ServiceError::new(
            ErrorKind::TooLarge,
            ErrorCode::TooLarge,
            format!("Upload is larger than the {limit} bytes allowed"),
        ),
        BlobWriteError::Body(e) => ServiceError::new(
            ErrorKind::Invalid,
            ErrorCode::Unknown,
            format!("Upload was interrupted: {e}"),
        ),
        BlobWriteError::Io(e) => ServiceError::internal(format!("media store: {e}")),
    }
}

impl Media {
    /// The service, with its blob store under `root`.
    pub fn open(
        db: Arc<Db>,
        root: &Path,
        server_name: ServerName,
        limits: MediaLimits,
    ) -> std::io::Result<Self> {
        Ok(Self {
            db,
            store: BlobStore::open(root)?,
            server_name,
            limits,
            waiters: Mutex::new(HashMap::new()),
            write_lock: tokio::sync::Mutex::new(()),
            uploading: Mutex::new(std::collections::HashSet::new()),
            upload_slots: UploadSlots::new(MAX_CONCURRENT_UPLOADS, limits.max_uploads_per_user),
            remote_slots: UploadSlots::new(
                MAX_CONCURRENT_REMOTE_FETCHES,
                REMOTE_FETCHES_PER_SERVER,
            ),
            remote_fetches: SingleFlight::default(),
            decode_slots: tokio::sync::Semaphore::new(CONCURRENT_DECODES),
        })
    }

    /// The configured limits.
    pub fn limits(&self) -> MediaLimits {
        self.limits
    }

    /// The blob store (handlers open files through it).
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    fn new_media_id() -> String {
        secrets::new_session_id()
    }

    fn mxc(&self, media_id: &str) -> String {
        format!("mxc://{}/{media_id}", self.server_name)
    }

    fn record(&self, key: &[u8]) -> ServiceResult<Option<MediaRecord>> {
        self.db
            .get(Table::MediaidMedia, key)?
            .map(|b| decode(Table::MediaidMedia, &b))
            .transpose()
    }

    /// Streams an upload into the store and answers its `mxc://` URI.
    /// Spec: `POST /_matrix/media/v3/upload`.
    pub async fn upload<S, E>(
        &self,
        uploader: &UserId,
        content_type: Option<&str>,
        filename: Option<&str>,
        body: S,
    ) -> ServiceResult<String>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let content = self
            .store_content(uploader, content_type, filename, body)
            .await?;
        let media_id = Self::new_media_id();
        let record = MediaRecord {
            uploader: uploader.to_string(),
            created_ts: now_ms(),
            unused_expires_ts: None,
            content: Some(content),
        };
        let mut batch = self.db.batch();
        batch.put(
            Table::MediaidMedia,
            media_key(self.server_name.as_str(), &media_id),
            encode(&record),
        );
        self.db.commit(batch).await?;
        Ok(self.mxc(&media_id))
    }

    async fn store_content<S, E>(
        &self,
        uploader: &UserId,
        content_type: Option<&str>,
        filename: Option<&str>,
        body: S,
    ) -> ServiceResult<Content>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let limit = self.limits.max_upload_size;
        let _slot = self
            .upload_slots
            .try_claim(uploader.as_str())
            .map_err(|busy| {
                ServiceError::limit_exceeded(1000).with_message(match busy {
                    NoSlot::UserBusy => "You have too many uploads in progress",
                    NoSlot::ServerBusy => "Too many uploads in progress",
                })
            })?;
        let StoredBlob { sha256, size } = self
            .store
            .write_stream(body, limit)
            .await
            .map_err(|e| blob_error(e, limit))?;
        let image = self.probe_image(&sha256).await;
        Ok(Content {
            sha256,
            size,
            content_type: sanitize_content_type(content_type),
            filename: sanitize_filename(filename),
            image,
        })
    }

    /// Reads an image header from the stored blob (only the header: cheap for any size).
    async fn probe_image(&self, sha256: &str) -> Option<ImageInfo> {
        let path = self.store.path(sha256);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut prefix = Vec::new();
            std::fs::File::open(path)
                .ok()?
                .take(IMAGE_PROBE_BYTES)
                .read_to_end(&mut prefix)
                .ok()?;
            let mut reader = image::ImageReader::new(std::io::Cursor::new(prefix))
                .with_guessed_format()
                .ok()?;
            // Only the header is read here; the decoder's allocation limits would refuse
            // to even report a huge image's size, and we want to know it to refuse it.
            reader.no_limits();
            let content_type = thumbnail::content_type_of(reader.format()?)?;
            let (width, height) = reader.into_dimensions().ok()?;
            (width > 0 && height > 0).then(|| ImageInfo {
                content_type: content_type.to_owned(),
                width,
                height,
            })
        })
        .await
        .ok()
        .flatten()
    }

    /// Reserves an `mxc://` URI for a later `PUT`. Spec: `POST /_matrix/media/v1/create`.
    pub async fn create_pending(&self, uploader: &UserId) -> ServiceResult<(String, u64)> {
        let _guard = self.write_lock.lock().await;
        let now = now_ms();
        let prefix = keys::prefix(uploader.as_str().as_bytes());
        let mut pending = 0;
        let mut batch = self.db.batch();
        for item in self.db.scan_prefix(Table::UseridMediaidPending, &prefix) {
            let (key, value) = item?;
            match keys::read_u64(&value) {
                Some(expires) if expires > now => pending += 1,
                _ => batch.delete(Table::UseridMediaidPending, key),
            }
        }
        if pending >= MAX_PENDING_PER_USER {
            return Err(ServiceError::limit_exceeded(60_000)
                .with_message("Too many pending uploads; finish or wait for some to expire"));
        }
        let media_id = Self::new_media_id();
        let expires = now + UNUSED_EXPIRY_MS;
        let record = MediaRecord {
            uploader: uploader.to_string(),
            created_ts: now,
            unused_expires_ts: Some(expires),
            content: None,
        };
        batch.put(
            Table::MediaidMedia,
            media_key(self.server_name.as_str(), &media_id),
            encode(&record),
        );
        batch.put(
            Table::UseridMediaidPending,
            keys::join(&[uploader.as_str().as_bytes(), media_id.as_bytes()]),
            expires.to_be_bytes(),
        );
        self.db.commit(batch).await?;
        Ok((self.mxc(&media_id), expires))
    }

    /// Uploads the content of an id from `/create`.
    /// Spec: `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_pending<S, E>(
        &self,
        uploader: &UserId,
        server: &str,
        media_id: &str,
        content_type: Option<&str>,
        filename: Option<&str>,
        body: S,
    ) -> ServiceResult<()>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let unknown = || ServiceError::not_found("Unknown media ID");
        if server != self.server_name.as_str() || !is_valid_media_id(media_id) {
            return Err(unknown());
        }
        let key = media_key(server, media_id);
        // Check before reading the body, so a doomed upload is refused at once...
        self.check_uploadable(&key, uploader)?;
        let _in_progress = InProgress::claim(&self.uploading, &key)?;
        let content = self
            .store_content(uploader, content_type, filename, body)
            .await?;
        // ...and again after, since another upload may have won meanwhile.
        let _guard = self.write_lock.lock().await;
        let mut record = self.check_uploadable(&key, uploader)?;
        record.content = Some(content);
        record.unused_expires_ts = None;
        let mut batch = self.db.batch();
        batch.put(Table::MediaidMedia, &key, encode(&record));
        batch.delete(
            Table::UseridMediaidPending,
            keys::join(&[uploader.as_str().as_bytes(), media_id.as_bytes()]),
        );
        self.db.commit(batch).await?;
        drop(_guard);
        if let Some(notify) = self
            .waiters
            .lock()
            .expect("waiters lock poisoned")
            .remove(&key)
        {
            notify.notify_waiters();
        }
        Ok(())
    }

    fn check_uploadable(&self, key: &[u8], uploader: &UserId) -> ServiceResult<MediaRecord> {
        let record = self
            .record(key)?
            .ok_or_else(|| ServiceError::not_found("Unknown media ID"))?;
        if record.uploader != uploader.as_str() {
            return Err(ServiceError::forbidden(
                "This media ID was created by another user",
            ));
        }
        if record.content.is_some() {
            return Err(ServiceError::new(
                ErrorKind::Conflict,
                ErrorCode::CannotOverwriteMedia,
                "Media already uploaded",
            ));
        }
        if record.unused_expires_ts.is_some_and(|t| t <= now_ms()) {
            return Err(ServiceError::not_found("This media ID has expired"));
        }
        Ok(record)
    }

    /// Whether another server's `mxc://server/media_id` is in our cache.
    pub fn has_remote(&self, server: &str, media_id: &str) -> ServiceResult<bool> {
        Ok(self
            .record(&media_key(server, media_id))?
            .is_some_and(|r| r.content.is_some()))
    }

    /// Brings another server's `mxc://server/media_id` here (the caller found it is not):
    /// `fetch` (a [`Media::remote_slot`], the fetch and [`Media::store_remote`]) runs once
    /// for every caller asking while it runs, who all get its outcome; a caller that goes
    /// away leaves it running for the others.
    pub async fn ensure_remote<F>(
        &self,
        server: &str,
        media_id: &str,
        fetch: impl FnOnce() -> F,
    ) -> ServiceResult<()>
    where
        F: std::future::Future<Output = ServiceResult<()>> + Send + 'static,
    {
        self.remote_fetches
            .run(&media_key(server, media_id), fetch)
            .await
            .unwrap_or_else(|| Err(ServiceError::internal("the media fetch failed")))
    }

    /// A slot for fetching media of `server`, held for the whole fetch (its request and
    /// its body): at most a few per origin server, under a global cap; 429 beyond.
    pub fn remote_slot(&self, server: &str) -> ServiceResult<UploadSlot> {
        self.remote_slots.try_claim(server).map_err(|_| {
            ServiceError::limit_exceeded(1000).with_message("Too many media downloads in progress")
        })
    }

    /// Stores another server's media, as its server gave it, under its own `mxc://` id
    /// (so downloads and thumbnails serve it like ours), within `media.max_upload_size`.
    /// The caller holds a [`Media::remote_slot`].
    pub async fn store_remote<S, E>(
        &self,
        server: &str,
        media_id: &str,
        content_type: Option<&str>,
        filename: Option<&str>,
        body: S,
    ) -> ServiceResult<()>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let limit = self.limits.max_upload_size;
        let StoredBlob { sha256, size } =
            self.store
                .write_stream(body, limit)
                .await
                .map_err(|e| match e {
                    BlobWriteError::TooLarge => ServiceError::new(
                        ErrorKind::RemoteFailed,
                        ErrorCode::TooLarge,
                        format!("The remote media is larger than the {limit} bytes allowed"),
                    ),
                    BlobWriteError::Body(e) => ServiceError::new(
                        ErrorKind::RemoteFailed,
                        ErrorCode::Unknown,
                        format!("The remote media did not arrive whole: {e}"),
                    ),
                    BlobWriteError::Io(e) => ServiceError::internal(format!("media store: {e}")),
                })?;
        let image = self.probe_image(&sha256).await;
        let record = MediaRecord {
            uploader: server.to_owned(),
            created_ts: now_ms(),
            unused_expires_ts: None,
            content: Some(Content {
                sha256,
                size,
                content_type: sanitize_content_type(content_type),
                filename: sanitize_filename(filename),
                image,
            }),
        };
        let mut batch = self.db.batch();
        batch.put(
            Table::MediaidMedia,
            media_key(server, media_id),
            encode(&record),
        );
        self.db.commit(batch).await?;
        Ok(())
    }

    /// The content of `mxc://server/media_id`, waiting up to `wait` for a pending upload.
    /// Spec: download endpoints, `timeout_ms` and 504 `M_NOT_YET_UPLOADED`.
    pub async fn content(
        &self,
        server: &str,
        media_id: &str,
        wait: Duration,
    ) -> ServiceResult<Content> {
        let unknown = || ServiceError::not_found("Unknown media ID");
        if ServerName::parse(server).is_err() || !is_valid_media_id(media_id) {
            return Err(unknown());
        }
        // Another server's media is here once fetched ([`Media::store_remote`]); it is
        // never pending, so the loop below answers at once.
        let key = media_key(server, media_id);
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let record = self.record(&key)?.ok_or_else(unknown)?;
            if let Some(content) = record.content {
                return Ok(content);
            }
            if record.unused_expires_ts.is_some_and(|t| t <= now_ms()) {
                return Err(unknown());
            }
            // Pending: wait for the upload. Only pending ids get a waiter entry, and the
            // last waiter removes it, so unknown ids cannot grow the map.
            let waiter = Waiter::register(&self.waiters, &key);
            let notified = waiter.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Read again now that we are registered: an upload that finished in between
            // would otherwise never wake us.
            if let Some(content) = self.record(&key)?.and_then(|r| r.content) {
                return Ok(content);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ServiceError::new(
                    ErrorKind::TimedOut,
                    ErrorCode::NotYetUploaded,
                    "Media has not been uploaded yet",
                ));
            }
        }
    }

    /// What to serve for a download.
    pub async fn download(
        &self,
        server: &str,
        media_id: &str,
        wait: Duration,
    ) -> ServiceResult<Served> {
        let content = self.content(server, media_id, wait).await?;
        Ok(Served {
            sha256: content.sha256,
            size: content.size,
            content_type: content.content_type,
            filename: content.filename,
        })
    }

    /// What to serve for a thumbnail: a cached one, a new one, or the original when it is
    /// no larger than asked. Spec: `GET /_matrix/client/v1/media/thumbnail/...`.
    pub async fn thumbnail(
        &self,
        server: &str,
        media_id: &str,
        method: Method,
        width: u32,
        height: u32,
        wait: Duration,
    ) -> ServiceResult<Served> {
        if width == 0 || height == 0 {
            return Err(ServiceError::invalid_param(
                "width and height must be positive",
            ));
        }
        let content = self.content(server, media_id, wait).await?;
        let cannot = || {
            ServiceError::new(
                ErrorKind::Invalid,
                ErrorCode::Unknown,
                "Cannot generate thumbnails for the requested content",
            )
        };
        let image = content.image.clone().ok_or_else(cannot)?;
        let may_be_animated = matches!(image.content_type.as_str(), "image/gif" | "image/webp");
        let plan = thumbnail::plan(
            method,
            width,
            height,
            (image.width, image.height),
            may_be_animated,
        );
        let (out_w, out_h) = match plan {
            Plan::Original => {
                return Ok(Served {
                    sha256: content.sha256,
                    size: content.size,
                    content_type: image.content_type,
                    filename: content.filename,
                })
            }
            Plan::Render { width, height } => (width, height),
        };
        if u64::from(image.width) * u64::from(image.height) > self.limits.max_thumbnail_pixels {
            return Err(ServiceError::new(
                ErrorKind::TooLarge,
                ErrorCode::TooLarge,
                "Image is too large to thumbnail",
            ));
        }
        // Keyed by what is produced, so requests that map to the same output share it.
        let key = thumbnail_key(server, media_id, method, out_w, out_h);
        if let Some(bytes) = self.db.get(Table::MediaidThumbnail, &key)? {
            let cached: ThumbnailRecord = decode(Table::MediaidThumbnail, &bytes)?;
            return Ok(thumbnail_served(cached));
        }
        // Clients may ask for many sizes; past a few per image, the nearest stored one is
        // served instead of rendering (and storing) one more: every size asked for would
        // otherwise be a file of its own, and any user or server may ask (spec: "Security
        // considerations" of the content repository; a thumbnail "may be larger" than
        // asked).
        let prefix = keys::prefix(&media_key(server, media_id));
        let mut stored: Vec<ThumbnailRecord> = Vec::new();
        for entry in self
            .db
            .scan_prefix(Table::MediaidThumbnail, &prefix)
            .take(MAX_CACHED_THUMBNAILS)
        {
            let (_, bytes) = entry?;
            stored.push(decode(Table::MediaidThumbnail, &bytes)?);
        }
        if stored.len() >= MAX_CACHED_THUMBNAILS {
            if let Some(nearest) = nearest_thumbnail(stored, (out_w, out_h)) {
                return Ok(thumbnail_served(nearest));
            }
        }
        let _decode = self
            .decode_slots
            .acquire()
            .await
            .map_err(ServiceError::internal)?;
        let original = self
            .store
            .read_all(&content.sha256)
            .await
            .map_err(|e| ServiceError::internal(format!("media store: {e}")))?;
        let max_pixels = self.limits.max_thumbnail_pixels;
        let rendered = tokio::task::spawn_blocking(move || {
            thumbnail::render(&original, method, out_w, out_h, max_pixels)
        })
        .await
        .map_err(ServiceError::internal)?
        .map_err(|e| match e {
            ThumbnailError::TooLarge => ServiceError::new(
                ErrorKind::TooLarge,
                ErrorCode::TooLarge,
                "Image is too large to thumbnail",
            ),
            ThumbnailError::Unsupported | ThumbnailError::Corrupt(_) => cannot(),
        })?;
        let blob = self
            .store
            .write_bytes(rendered.bytes)
            .await
            .map_err(|e| blob_error(e, u64::MAX))?;
        let record = ThumbnailRecord {
            sha256: blob.sha256,
            size: blob.size,
            content_type: rendered.content_type.to_owned(),
            width: rendered.width,
            height: rendered.height,
        };
        // Counted again: renders that waited for a decode slot meanwhile may have filled
        // the image's share (the file written is then the only one past it).
        let stored_now = self
            .db
            .scan_prefix(Table::MediaidThumbnail, &prefix)
            .take(MAX_CACHED_THUMBNAILS)
            .count();
        if stored_now < MAX_CACHED_THUMBNAILS {
            let mut batch = self.db.batch();
            batch.put(Table::MediaidThumbnail, &key, encode(&record));
            self.db.commit(batch).await?;
        }
        Ok(thumbnail_served(record))
    }
}

/// Of stored thumbnails, the one to serve for a `(width, height)` box once no more are
/// made: the smallest that covers the box, else the largest.
fn nearest_thumbnail(
    stored: Vec<ThumbnailRecord>,
    (width, height): (u32, u32),
) -> Option<ThumbnailRecord> {
    let area = |t: &ThumbnailRecord| u64::from(t.width) * u64::from(t.height);
    let covering = stored
        .iter()
        .filter(|t| t.width >= width && t.height >= height)
        .min_by_key(|t| area(t))
        .cloned();
    covering.or_else(|| stored.into_iter().max_by_key(area))
}

/// A download waiting for a pending upload; the last one out removes the map entry.
struct Waiter<'a> {
    map: &'a Mutex<HashMap<Vec<u8>, Arc<Notify>>>,
    key: Vec<u8>,
    notify: Arc<Notify>,
}

impl<'a> Waiter<'a> {
    fn register(map: &'a Mutex<HashMap<Vec<u8>, Arc<Notify>>>, key: &[u8]) -> Self {
        let notify = Arc::clone(
            map.lock()
                .expect("waiters lock poisoned")
                .entry(key.to_vec())
                .or_default(),
        );
        Self {
            map,
            key: key.to_vec(),
            notify,
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().expect("waiters lock poisoned");
        // The map's reference plus ours: nobody else waits.
        let last = map
            .get(&self.key)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify) && Arc::strong_count(n) <= 2);
        if last {
            map.remove(&self.key);
        }
    }
}

/// Marks a pending id as being uploaded for as long as the upload runs.
struct InProgress<'a> {
    set: &'a Mutex<std::collections::HashSet<Vec<u8>>>,
    key: Vec<u8>,
}

impl<'a> InProgress<'a> {
    fn claim(
        set: &'a Mutex<std::collections::HashSet<Vec<u8>>>,
        key: &[u8],
    ) -> ServiceResult<Self> {
        if !set
            .lock()
            .expect("uploading lock poisoned")
            .insert(key.to_vec())
        {
            return Err(ServiceError::new(
                ErrorKind::Conflict,
                ErrorCode::CannotOverwriteMedia,
                "This media is being uploaded already",
            ));
        }
        Ok(Self {
            set,
            key: key.to_vec(),
        })
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .expect("uploading lock poisoned")
            .remove(&self.key);
    }
}

fn thumbnail_served(record: ThumbnailRecord) -> Served {
    let extension = if record.content_type == "image/jpeg" {
        "jpg"
    } else {
        "png"
    };
    Served {
        sha256: record.sha256,
        size: record.size,
        content_type: record.content_type,
        filename: Some(format!("thumbnail.{extension}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids_follow_the_spec_alphabet() {
        assert!(is_valid_media_id("abcXYZ019_-"));
        for bad in ["", "../etc/passwd", "a.b", "a/b", "a%2Fb", "ü"] {
            assert!(!is_valid_media_id(bad), "{bad}");
        }
    }

    #[test]
    fn content_types_and_names_are_sanitised() {
        assert_eq!(sanitize_content_type(Some("image/png")), "image/png");
        assert_eq!(
            sanitize_content_type(Some("text/plain; charset=utf-8")),
            "text/plain; charset=utf-8"
        );
        assert_eq!(sanitize_content_type(None), "application/octet-stream");
        assert_eq!(
            sanitize_content_type(Some("nonsense")),
            "application/octet-stream"
        );
        assert_eq!(
            sanitize_content_type(Some("text/html\r\nX-Evil: 1")),
            "application/octet-stream"
        );
        assert_eq!(
            sanitize_filename(Some("Été.pdf")).as_deref(),
            Some("Été.pdf")
        );
        // Kept as given: serving escapes it.
        assert_eq!(sanitize_filename(Some("../x y")).as_deref(), Some("../x y"));
        assert_eq!(sanitize_filename(Some("")), None);
    }
}
