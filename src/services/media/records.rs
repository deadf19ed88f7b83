//! The records the media service keeps, as stored (JSON) in its tables.

use serde::{Deserialize, Serialize};

/// `mediaid_media`: one per `mxc://server/media_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MediaRecord {
    /// Who created or uploaded it.
    pub uploader: String,
    /// Milliseconds since the epoch.
    pub created_ts: u64,
    /// For an id made by `/create` and not uploaded yet: when it expires.
    pub unused_expires_ts: Option<u64>,
    /// The content, once uploaded.
    pub content: Option<Content>,
}

/// Uploaded content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Content {
    /// Hex SHA-256: the blob's address.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// As given by the uploader (validated), else `application/octet-stream`.
    pub content_type: String,
    /// As given by the uploader, if any.
    pub filename: Option<String>,
    /// For images we can thumbnail: detected type and dimensions (read from the header).
    pub image: Option<ImageInfo>,
}

/// What the image header said.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    /// Detected content type (`image/jpeg`, `image/png`, `image/gif`, `image/webp`).
    pub content_type: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// `mediaid_thumbnail`: a generated thumbnail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThumbnailRecord {
    /// The thumbnail's blob.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// `image/jpeg` or `image/png`.
    pub content_type: String,
    /// Actual width.
    pub width: u32,
    /// Actual height.
    pub height: u32,
}
