//! Media bytes as files, content-addressed by SHA-256: the same bytes are stored once.
//!
//! Layout under `<data_dir>/media/`: `blobs/ab/cdef…` (hex hash, two-character fan-out) and
//! `tmp/` for uploads in progress. A blob is written to `tmp/`, fsynced, then renamed into
//! place, so a reader never sees a partial file; whatever `tmp/` holds at start-up is the
//! remains of an interrupted upload and is deleted.

use std::path::{Path, PathBuf};

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use ring::digest::{Context, SHA256};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::core::hex;
use crate::services::accounts::secrets;

/// Chunks queued between the receiving task and the writing thread.
const QUEUED_CHUNKS: usize = 2;

/// An upload that sends nothing for this long is abandoned (it holds a writer thread).
const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A blob in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
    /// Length in bytes.
    pub size: u64,
}

/// Why a blob was not stored.
#[derive(Debug)]
pub enum BlobWriteError {
    /// More than the allowed bytes arrived.
    TooLarge,
    /// The body stream failed (client went away, malformed chunking).
    Body(String),
    /// The disk failed.
    Io(std::io::Error),
}

impl From<std::io::Error> for BlobWriteError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// The file store.
pub struct BlobStore {
    blobs: PathBuf,
    tmp: PathBuf,
}

/// Deletes a temporary file unless it was renamed into place (also when the upload future
/// is dropped because the client disconnected).
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl BlobStore {
    /// Opens the store under `root`, creating it and clearing leftovers of interrupted uploads.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let blobs = root.join("blobs");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&blobs)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(Self { blobs, tmp })
    }

    /// Where the blob with this hash lives.
    pub fn path(&self, sha256: &str) -> PathBuf {
        let (fan, rest) = sha256.split_at(2.min(sha256.len()));
        self.blobs.join(fan).join(rest)
    }

    /// Streams `body` into the store, hashing as it goes and refusing more than `limit`
    /// bytes. Nothing is visible until the whole body is on disk.
    ///
    /// One blocking thread per upload hashes and writes the chunks as they arrive, through
    /// a short bounded queue: the async side never blocks, memory stays bounded by the
    /// queue (no large buffers are allocated per upload), and hashing overlaps receiving.
    pub async fn write_stream<S, E>(
        &self,
        mut body: S,
        limit: u64,
    ) -> Result<StoredBlob, BlobWriteError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut temp = TempFile {
            path: self.tmp.join(secrets::new_session_id()),
            keep: false,
        };
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(QUEUED_CHUNKS);
        let complete = Arc::new(AtomicBool::new(false));
        // Created here, not on the writer thread, so the guard above always covers it.
        let mut file = std::fs::File::create(&temp.path)?;
        let writer_complete = Arc::clone(&complete);
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut hash = Context::new(&SHA256);
            while let Some(chunk) = receiver.blocking_recv() {
                hash.update(&chunk);
                file.write_all(&chunk)?;
            }
            // An aborted upload is deleted anyway: no point making it durable.
            if writer_complete.load(Ordering::Acquire) {
                file.sync_data()?;
            }
            Ok(hex::encode(hash.finish().as_ref()))
        });
        let mut size: u64 = 0;
        let received = async {
            loop {
                let next = tokio::time::timeout(BODY_IDLE_TIMEOUT, body.next()).await;
                let Ok(next) = next else {
                    return Err(BlobWriteError::Body("no data for 60 seconds".into()));
                };
                let Some(chunk) = next else { break };
                let chunk = chunk.map_err(|e| BlobWriteError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(BlobWriteError::TooLarge);
                }
                if sender.send(chunk).await.is_err() {
                    // The writer stopped: its own error is reported below.
                    break;
                }
            }
            Ok(())
        }
        .await;
        complete.store(received.is_ok(), Ordering::Release);
        drop(sender);
        let written = writer
            .await
            .map_err(|e| BlobWriteError::Io(std::io::Error::other(e)))?;
        received?;
        let sha256 = written?;
        self.place(&mut temp, &sha256).await?;
        Ok(StoredBlob { sha256, size })
    }

    /// Stores bytes already in memory (thumbnails).
    pub async fn write_bytes(&self, bytes: Vec<u8>) -> Result<StoredBlob, BlobWriteError> {
        let size = bytes.len() as u64;
        let stream =
            futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from(bytes))]);
        let blob = self.write_stream(stream, u64::MAX).await?;
        debug_assert_eq!(blob.size, size);
        Ok(blob)
    }

    /// Renames the temp file to its content address; if that blob exists already, the
    /// temp file is dropped instead (same bytes, stored once).
    async fn place(&self, temp: &mut TempFile, sha256: &str) -> std::io::Result<()> {
        let target = self.path(sha256);
        if tokio::fs::try_exists(&target).await? {
            return Ok(());
        }
        let dir = target
            .parent()
            .expect("blob paths have a fan-out folder")
            .to_path_buf();
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::rename(&temp.path, &target).await?;
        temp.keep = true;
        // Make the rename itself durable.
        tokio::task::spawn_blocking(move || std::fs::File::open(&dir).and_then(|d| d.sync_all()))
            .await
            .map_err(std::io::Error::other)??;
        Ok(())
    }

    /// Opens a blob for reading.
    pub async fn open_read(&self, sha256: &str) -> std::io::Result<tokio::fs::File> {
        tokio::fs::File::open(self.path(sha256)).await
    }

    /// Reads a whole blob (for thumbnailing; callers bound the size first).
    pub async fn read_all(&self, sha256: &str) -> std::io::Result<Vec<u8>> {
        tokio::fs::read(self.path(sha256)).await
    }

    /// The number of files in `tmp/` (tests check that failed uploads leave none).
    pub fn pending_temp_files(&self) -> usize {
        std::fs::read_dir(&self.tmp).map_or(0, |d| d.count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        parts: &[&'static [u8]],
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn same_bytes_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let a = store
            .write_stream(chunks(&[b"hello ", b"world"]), 100)
            .await
            .unwrap();
        let b = store.write_bytes(b"hello world".to_vec()).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.size, 11);
        assert_eq!(
            a.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(store.read_all(&a.sha256).await.unwrap(), b"hello world");
        assert_eq!(store.pending_temp_files(), 0);
    }

    #[tokio::test]
    async fn too_large_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let err = store
            .write_stream(chunks(&[b"12345", b"67890"]), 8)
            .await
            .unwrap_err();
        assert!(matches!(err, BlobWriteError::TooLarge));
        assert_eq!(store.pending_temp_files(), 0);
    }

    #[tokio::test]
    async fn a_failing_body_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let body = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"part")),
            Err(std::io::Error::other("connection reset")),
        ]);
        let err = store.write_stream(body, 100).await.unwrap_err();
        assert!(matches!(err, BlobWriteError::Body(_)));
        assert_eq!(store.pending_temp_files(), 0);
    }

    #[test]
    fn leftovers_are_cleared_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("tmp/partial"), b"half").unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        assert_eq!(store.pending_temp_files(), 0);
    }
}
