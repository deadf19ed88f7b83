//! RocksDB: one opened database, a column family per table, write batches and scans.
//!
//! Storage knows keys and bytes, never HTTP or Matrix rules. Each service owns its tables
//! (listed in [`tables`]) and encodes its own values.
//!
//! # Durability (fsync policy)
//! The WAL is always on. Acknowledged writes go through [`Db::commit`], which writes with
//! `sync = true` on a blocking thread: RocksDB groups concurrent writers into one write
//! group whose leader appends every batch to the WAL and fsyncs once for all of them, so
//! many concurrent commits share one fsync (group commit) and none is acknowledged before
//! it is on disk. Writes whose loss after a crash is harmless (e.g. a device's last-seen
//! time) use [`Db::write_relaxed`], which skips the fsync but still goes through the WAL.
//! The room writers' committers write relaxed and then call [`Db::sync_wal`] once per
//! round (the drains of several rooms); callers that ask while an fsync is under way
//! share the next one ([`sync_gate`]).

pub mod health;
pub mod keys;
pub mod sync_gate;
pub mod tables;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode,
    Options, ReadOptions, WriteBufferManager, WriteOptions, DB,
};

pub use tables::Table;

/// The schema version this build writes. Bump it with a migration when a table's layout
/// changes; a database from a newer build refuses to open.
///
/// - 1: the first layout.
/// - 2: `shorteventid_meta` records carry the event id after their fixed fields. Records
///   written under version 1 lack it and are still read (the id then comes from
///   `shorteventid_eventid`), so a version-1 database opens as version 2 unchanged; a
///   version-1 build refuses a version-2 database instead of misreading its records.
/// - 3: PDUs are keyed by room and event (`shortroomid_shorteventid_pdu`) instead of by
///   event (`shorteventid_pdu`), and timeline entries carry their event's metadata
///   record. The rooms service moves a version-1 or -2 database's records at start-up,
///   before it serves (a move cut short resumes at the next start); an older build
///   refuses the version-3 database instead of finding no PDU.
pub const SCHEMA_VERSION: u64 = 3;

/// The oldest schema version this build opens, reading its records as they are or moving
/// them at start-up (see [`SCHEMA_VERSION`]).
const OLDEST_READABLE_SCHEMA: u64 = 1;

const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";
/// The `meta` key the health endpoint's probe writes (see [`Db::probe_writes`]).
const HEALTH_PROBE_KEY: &[u8] = b"health_probe";

thread_local! {
    /// Whether this thread's reads leave the block cache as it is ([`bulk_reads`]).
    static BULK_READS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's reads leaving the block cache as it is: for one large job
/// that reads a great deal once (the full `/sync` of thousands of rooms), whose blocks
/// would otherwise evict what every other request reads again, and take the process's
/// memory up to the cache's size until the server next goes idle. Blocks already
/// cached are still used.
pub fn bulk_reads<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BULK_READS.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(BULK_READS.with(|b| b.replace(true)));
    f()
}

/// Options for a read on this thread (see [`bulk_reads`]).
fn read_options() -> ReadOptions {
    let mut read = ReadOptions::default();
    if BULK_READS.with(std::cell::Cell::get) {
        read.fill_cache(false);
    }
    read
}

/// Whether this thread is in [`bulk_reads`].
fn in_bulk_reads() -> bool {
    BULK_READS.with(std::cell::Cell::get)
}

/// Words in the error of an open refused because another handle holds the folder's lock.
pub const LOCKED: &str = "the data folder is locked";

/// A storage failure: I/O, corruption, or a database this build cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageError {
    /// What went wrong (for the log, never for clients).
    pub message: String,
    /// A write failed and the database takes none until it recovers (see [`health`]), or
    /// a read failed for want of file descriptors: the caller may try again later.
    pub unwritable: bool,
}

impl StorageError {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unwritable: false,
        }
    }

    /// A write refused while the database does not take writes.
    pub fn unwritable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unwritable: true,
        }
    }
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "storage: {}", self.message)
    }
}

impl std::error::Error for StorageError {}

impl From<rocksdb::Error> for StorageError {
    /// A read that failed because the process ran out of file descriptors (RocksDB could
    /// not open a table file) is as passing as a refused write: 503, not 500.
    fn from(e: rocksdb::Error) -> Self {
        let message = e.into_string();
        if message.contains("Too many open files") {
            Self::unwritable(message)
        } else {
            Self::new(message)
        }
    }
}

extern "C" {
    /// `DB::Resume()` (src/storage/resume.cc): NULL on success, else an error text to
    /// free with `free`.
    fn ourwhats_rocksdb_resume(db: *mut librocksdb_sys::rocksdb_t) -> *mut std::ffi::c_char;
    /// Adds the listener that makes running out of descriptors a resumable error.
    fn ourwhats_rocksdb_options_add_recovery_listener(
        options: *mut librocksdb_sys::rocksdb_options_t,
    );
}

/// Result of a storage operation.
pub type StorageResult<T> = Result<T, StorageError>;

/// One entry found by a scan: key and value.
pub type Entry = (Box<[u8]>, Box<[u8]>);

/// Tuning for the opened database.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Bytes of the shared LRU block cache.
    pub block_cache_bytes: usize,
    /// Bytes all tables' memtables may hold together before the largest is flushed.
    pub write_buffer_bytes: usize,
    /// Table files RocksDB keeps open at most (its share of the descriptor budget).
    pub max_open_files: i32,
    /// Index and filter blocks in the block cache instead of with their open table.
    pub index_in_cache: bool,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            block_cache_bytes: 32 << 20,
            write_buffer_bytes: 32 << 20,
            max_open_files: 512,
            index_in_cache: false,
        }
    }
}

/// The opened database. Cheap to share behind an `Arc`.
pub struct Db {
    db: DB,
    /// The shared block cache and its configured size (emptied by [`Db::release_memory`]).
    cache: Cache,
    cache_bytes: usize,
    /// Writes so far (successful ones): how the idle-memory worker tells activity.
    writes: std::sync::atomic::AtomicU64,
    synced: WriteOptions,
    relaxed: WriteOptions,
    /// Whether writes go through, and their recovery (see [`health`]).
    health: Arc<health::WriteHealth>,
    /// WAL syncs shared across writers ([`Db::sync_wal`]).
    sync_gate: sync_gate::SyncGate,
    /// Whether a health probe is being written ([`Db::probe_writes`]).
    probing: std::sync::atomic::AtomicBool,
}

impl Drop for Db {
    fn drop(&mut self) {
        self.health.close();
    }
}

/// Scans of many key prefixes of one table through one iterator ([`Db::prefix_scans`]):
/// creating a RocksDB iterator (a merge over every table file) costs more than a short
/// scan, and a walk that scans thousands of prefixes spent most of its time creating
/// them. It reads the table as it was when made.
pub struct PrefixScans<'a> {
    iter: rocksdb::DBRawIterator<'a>,
}

impl PrefixScans<'_> {
    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan(&mut self, prefix: &[u8]) -> StorageResult<Vec<Entry>> {
        let mut out = Vec::new();
        self.iter.seek(prefix);
        while let (Some(key), Some(value)) = (self.iter.key(), self.iter.value()) {
            if !key.starts_with(prefix) {
                break;
            }
            out.push((Box::from(key), Box::from(value)));
            self.iter.next();
        }
        self.iter.status()?;
        Ok(out)
    }
}

/// A set of writes applied atomically by [`Db::commit`].
pub struct Batch<'a> {
    db: &'a Db,
    batch: rocksdb::WriteBatch,
}

impl Batch<'_> {
    /// Sets `key` to `value` in `table`.
    pub fn put(&mut self, table: Table, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.batch.put_cf(self.db.cf(table), key, value);
    }

    /// Removes `key` from `table`.
    pub fn delete(&mut self, table: Table, key: impl AsRef<[u8]>) {
        self.batch.delete_cf(self.db.cf(table), key);
    }

    /// Removes every key of `table` from `from` (included) to `to` (excluded), as one
    /// range tombstone: no read, one write however many keys there are.
    pub fn delete_range(&mut self, table: Table, from: impl AsRef<[u8]>, to: impl AsRef<[u8]>) {
        self.batch
            .delete_range_cf(self.db.cf(table), from.as_ref(), to.as_ref());
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

impl Db {
    /// Opens (or creates) the database at `path`, creating missing tables and checking the
    /// schema version.
    pub fn open(path: &Path, options: &DbOptions) -> StorageResult<Arc<Self>> {
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let mut block = BlockBasedOptions::default();
        block.set_block_cache(&cache);
        block.set_bloom_filter(10.0, false);
        // By default index and filter blocks stay with their open table, not in the LRU
        // cache: every read looked them up there under the cache's locks, and an initial
        // sync of 20,000 rooms took 12 % less CPU without (docs/benchmarks.md). The price
        // is memory that grows with the database (`table_readers_bytes`) and that the
        // cache size does not bound; `storage.index_in_cache` bounds it.
        block.set_cache_index_and_filter_blocks(options.index_in_cache);
        block.set_cache_index_and_filter_blocks_with_high_priority(true);

        let mut cf_options = Options::default();
        cf_options.set_block_based_table_factory(&block);
        cf_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Small memtables keep the idle footprint low; they grow nothing until written.
        cf_options.set_write_buffer_size((8 << 20).min(options.write_buffer_bytes));

        let mut db_options = cf_options.clone();
        // Without a shared budget each of the ~40 tables may hold two 8 MiB memtables: a
        // busy room's writes touch a dozen tables, and RSS grew by hundreds of MiB.
        db_options.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager(
            options.write_buffer_bytes,
            false,
        ));
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_keep_log_file_num(3);
        db_options.set_max_log_file_size(4 << 20);
        db_options.set_max_background_jobs(2);
        db_options.set_max_open_files(options.max_open_files);
        // SAFETY: the options handle is valid while `db_options` lives; the shim only
        // appends a listener to them (see health.rs for why).
        unsafe {
            use rocksdb::AsRawPtr;
            ourwhats_rocksdb_options_add_recovery_listener(db_options.as_raw_ptr());
        }

        // Open every table we know plus any the directory already has (a newer build's), so
        // that the schema check below can give a clear answer instead of RocksDB's.
        let mut names: Vec<String> = Table::ALL.iter().map(|t| t.name().to_owned()).collect();
        if let Ok(existing) = DB::list_cf(&db_options, path) {
            for name in existing {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        // Event ids are looked up mostly to learn that an event is new (each PDU received,
        // before its writer and again in it): a bloom filter over the memtable's whole
        // keys answers most of those misses without a search of the memtable (~160 KiB
        // for an 8 MiB memtable, so on this table alone).
        let mut event_ids_options = cf_options.clone();
        event_ids_options.set_memtable_prefix_bloom_ratio(0.02);
        event_ids_options.set_memtable_whole_key_filtering(true);
        let descriptors = names.iter().map(|name| {
            let options = if name == Table::EventidShorteventid.name() {
                event_ids_options.clone()
            } else {
                cf_options.clone()
            };
            ColumnFamilyDescriptor::new(name, options)
        });
        let db = DB::open_cf_descriptors(&db_options, path, descriptors).map_err(|e| {
            let text = e.into_string();
            // RocksDB names the folder's lock file (`…/LOCK`) when another handle holds it.
            if text.contains("/LOCK") {
                StorageError::new(format!(
                    "{text} ({LOCKED}: is another ourwhats process using {}?)",
                    path.display()
                ))
            } else {
                StorageError::new(text)
            }
        })?;

        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        let relaxed = WriteOptions::default();
        let db = Arc::new(Self {
            db,
            cache,
            cache_bytes: options.block_cache_bytes,
            writes: std::sync::atomic::AtomicU64::new(0),
            synced,
            relaxed,
            health: Arc::default(),
            sync_gate: sync_gate::SyncGate::default(),
            probing: std::sync::atomic::AtomicBool::new(false),
        });
        db.check_schema_version()?;
        health::WriteHealth::start_recovery(&db);
        Ok(db)
    }

    /// Whether writes go through (for the health endpoint).
    pub fn write_state(&self) -> health::WriteState {
        self.health.state()
    }

    /// Writes a small marker while writes are thought to go through, so that a background
    /// error RocksDB raised since (a flush that could not open a file) stops them now, for
    /// whoever asks the state next, rather than at the next client's write. The health
    /// endpoint calls it before it reports; one probe runs at a time (callers meanwhile
    /// report the state as it is), and it is not counted as activity (an idle server
    /// polled by a load balancer still gives its memory back).
    pub fn probe_writes(&self) {
        use std::sync::atomic::Ordering;
        if self.health.state() != health::WriteState::Writable
            || self.probing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let mut batch = self.batch();
        batch.put(Table::Meta, HEALTH_PROBE_KEY, b"");
        if let Err(e) = self.db.write_opt(batch.batch, &self.relaxed) {
            let _ = self.health.write_failed(StorageError::from(e));
        }
        self.probing.store(false, Ordering::Release);
    }

    /// Clears a background error that stopped writes, and resumes them (RocksDB's
    /// `DB::Resume`); a no-op when writes were not stopped.
    fn resume(&self) -> StorageResult<()> {
        use rocksdb::AsRawPtr;
        // SAFETY: the handle is valid while `self.db` lives, which outlasts the call;
        // the shim only calls `DB::Resume` on it, which RocksDB makes thread-safe.
        let error = unsafe { ourwhats_rocksdb_resume(self.db.as_raw_ptr()) };
        if error.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null answer is a NUL-terminated string from strdup, freed once.
        let text = unsafe { std::ffi::CStr::from_ptr(error) }
            .to_string_lossy()
            .into_owned();
        unsafe { libc::free(error.cast()) };
        Err(StorageError::new(text))
    }

    /// A write's outcome, recording a failure in the write state.
    fn written(&self, result: Result<(), rocksdb::Error>) -> StorageResult<()> {
        match result {
            Ok(()) => {
                self.writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(self.health.write_failed(StorageError::from(e))),
        }
    }

    /// Memory held by the open tables' readers (their index and filter blocks when those
    /// are not in the block cache), in bytes.
    pub fn table_readers_bytes(&self) -> u64 {
        Table::ALL
            .iter()
            .filter_map(|t| {
                self.db
                    .property_int_value_cf(self.cf(*t), "rocksdb.estimate-table-readers-mem")
                    .ok()
                    .flatten()
            })
            .sum()
    }

    /// Successful writes so far.
    pub fn write_count(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Gives back the memory RocksDB holds for speed: writes the memtables out (they are
    /// also in the WAL, so this changes no durability) and empties the block cache (it
    /// fills again on demand). For a server gone idle after load.
    pub fn release_memory(&self) -> StorageResult<()> {
        self.flush()?;
        let mut cache = self.cache.clone();
        cache.set_capacity(0);
        cache.set_capacity(self.cache_bytes);
        Ok(())
    }

    fn write_schema_version(&self) -> StorageResult<()> {
        let mut batch = self.batch();
        batch.put(
            Table::Meta,
            SCHEMA_VERSION_KEY,
            SCHEMA_VERSION.to_be_bytes(),
        );
        self.commit_blocking(batch)
    }

    fn check_schema_version(&self) -> StorageResult<()> {
        match self.get(Table::Meta, SCHEMA_VERSION_KEY)? {
            None => self.write_schema_version(),
            Some(bytes) => {
                let found = keys::read_u64(&bytes)
                    .ok_or_else(|| StorageError::new("schema version record is corrupt"))?;
                if found > SCHEMA_VERSION {
                    Err(StorageError::new(format!(
                        "the database has schema version {found}, newer than the {SCHEMA_VERSION} this build knows; \
                         run a newer ourwhats or restore a backup"
                    )))
                } else if found < OLDEST_READABLE_SCHEMA {
                    Err(StorageError::new(format!(
                        "the database has schema version {found} and no migration to {SCHEMA_VERSION} exists"
                    )))
                } else if found < SCHEMA_VERSION {
                    tracing::info!(
                        from = found,
                        to = SCHEMA_VERSION,
                        "schema version raised (older records are read as they are or moved at start-up)"
                    );
                    self.write_schema_version()
                } else {
                    Ok(())
                }
            }
        }
    }

    fn cf(&self, table: Table) -> &ColumnFamily {
        self.db
            .cf_handle(table.name())
            .expect("every table's column family is opened in Db::open")
    }

    /// Reads one value.
    pub fn get(&self, table: Table, key: impl AsRef<[u8]>) -> StorageResult<Option<Vec<u8>>> {
        if in_bulk_reads() {
            return Ok(self.db.get_cf_opt(self.cf(table), key, &read_options())?);
        }
        Ok(self.db.get_cf(self.cf(table), key)?)
    }

    /// Reads several values of one table in one call, in the order of `keys`.
    pub fn multi_get<K: AsRef<[u8]>>(
        &self,
        table: Table,
        keys: impl IntoIterator<Item = K>,
    ) -> StorageResult<Vec<Option<Vec<u8>>>> {
        let cf = self.cf(table);
        self.db
            .multi_get_cf_opt(keys.into_iter().map(|k| (cf, k)), &read_options())
            .into_iter()
            .map(|r| r.map_err(StorageError::from))
            .collect()
    }

    /// Whether `key` exists in `table`.
    pub fn contains(&self, table: Table, key: impl AsRef<[u8]>) -> StorageResult<bool> {
        Ok(self
            .db
            .get_pinned_cf_opt(self.cf(table), key, &read_options())?
            .is_some())
    }

    /// A new, empty batch.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            db: self,
            batch: rocksdb::WriteBatch::default(),
        }
    }

    /// Writes `batch` atomically and durably (WAL fsynced) on the calling thread.
    pub fn commit_blocking(&self, batch: Batch<'_>) -> StorageResult<()> {
        self.written(self.db.write_opt(batch.batch, &self.synced))
    }

    /// Writes `batch` atomically and durably without blocking the async runtime;
    /// concurrent commits share fsyncs (see the module docs).
    pub async fn commit(self: &Arc<Self>, batch: Batch<'_>) -> StorageResult<()> {
        let raw = batch.batch;
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || db.written(db.db.write_opt(raw, &db.synced)))
            .await
            .map_err(|e| StorageError::new(format!("write task failed: {e}")))?
    }

    /// Writes `batch` atomically through the WAL without waiting for an fsync: for data
    /// whose loss in a machine crash is harmless.
    pub fn write_relaxed(&self, batch: Batch<'_>) -> StorageResult<()> {
        self.written(self.db.write_opt(batch.batch, &self.relaxed))
    }

    /// Makes every write so far durable (fsyncs the WAL): how a writer that issued several
    /// [`Db::write_relaxed`] batches acknowledges them all with one fsync. Writers that
    /// ask while an fsync is under way share the next one ([`sync_gate`]).
    pub fn sync_wal(&self) -> StorageResult<()> {
        let result = self.sync_gate.sync(|| self.db.flush_wal(true));
        self.written(result)
    }

    /// Every entry of `table` whose key starts with `prefix`, in key order.
    pub fn scan_prefix<'a>(
        &'a self,
        table: Table,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = StorageResult<Entry>> + 'a {
        let mut read = read_options();
        if let Some(end) = keys::prefix_successor(prefix) {
            read.set_iterate_upper_bound(end);
        }
        self.db
            .iterator_cf_opt(
                self.cf(table),
                read,
                IteratorMode::From(prefix, Direction::Forward),
            )
            .map(|item| item.map_err(StorageError::from))
    }

    /// One iterator over `table` for many prefix scans (see [`PrefixScans`]).
    pub fn prefix_scans(&self, table: Table) -> PrefixScans<'_> {
        PrefixScans {
            iter: self.db.raw_iterator_cf_opt(self.cf(table), read_options()),
        }
    }

    /// Entries of `table` with `from <= key < to`, forwards, or backwards from just below
    /// `to` when `reverse`.
    pub fn scan_range<'a>(
        &'a self,
        table: Table,
        from: &[u8],
        to: &[u8],
        reverse: bool,
    ) -> impl Iterator<Item = StorageResult<Entry>> + 'a {
        let mut read = read_options();
        read.set_iterate_lower_bound(from.to_vec());
        read.set_iterate_upper_bound(to.to_vec());
        let mode = if reverse {
            IteratorMode::End
        } else {
            IteratorMode::Start
        };
        self.db
            .iterator_cf_opt(self.cf(table), read, mode)
            .map(|item| item.map_err(StorageError::from))
    }

    /// Compacts the whole of `table`: after a migration emptied it, so that the deletions
    /// it left cost later reads nothing.
    pub fn compact(&self, table: Table) {
        self.db
            .compact_range_cf(self.cf(table), None::<&[u8]>, None::<&[u8]>);
    }

    /// Flushes memtables to disk (used at shutdown so the next start replays little WAL).
    pub fn flush(&self) -> StorageResult<()> {
        for table in Table::ALL {
            self.db.flush_cf(self.cf(*table))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_temp() -> (tempfile::TempDir, Arc<Db>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
        (dir, db)
    }

    #[test]
    fn batch_writes_are_atomic_and_readable() {
        let (_dir, db) = open_temp();
        let mut batch = db.batch();
        batch.put(Table::Meta, b"a", b"1");
        batch.put(Table::Meta, b"b", b"2");
        assert_eq!(batch.len(), 2);
        db.commit_blocking(batch).unwrap();
        assert_eq!(
            db.get(Table::Meta, b"a").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(
            db.multi_get(Table::Meta, [&b"b"[..], &b"zz"[..]]).unwrap(),
            vec![Some(b"2".to_vec()), None]
        );
        let mut batch = db.batch();
        batch.delete(Table::Meta, b"a");
        db.commit_blocking(batch).unwrap();
        assert!(!db.contains(Table::Meta, b"a").unwrap());
    }

    #[test]
    fn prefix_and_range_scans_follow_key_order() {
        let (_dir, db) = open_temp();
        let mut batch = db.batch();
        for (user, n) in [("@a:x", 3u64), ("@a:x", 1), ("@a:x", 256), ("@b:x", 2)] {
            batch.put(
                Table::Meta,
                keys::join(&[user.as_bytes(), &n.to_be_bytes()]),
                b"",
            );
        }
        db.commit_blocking(batch).unwrap();
        let prefix = keys::prefix(b"@a:x");
        let found: Vec<u64> = db
            .scan_prefix(Table::Meta, &prefix)
            .map(|r| keys::read_u64(&r.unwrap().0[prefix.len()..]).unwrap())
            .collect();
        assert_eq!(found, vec![1, 3, 256]);

        let from = keys::join(&[b"@a:x", &2u64.to_be_bytes()]);
        let to = keys::join(&[b"@a:x", &300u64.to_be_bytes()]);
        let back: Vec<u64> = db
            .scan_range(Table::Meta, &from, &to, true)
            .map(|r| keys::read_u64(&r.unwrap().0[prefix.len()..]).unwrap())
            .collect();
        assert_eq!(back, vec![256, 3]);

        // Many prefixes through one iterator, in any order, the same entries.
        let mut scans = db.prefix_scans(Table::Meta);
        for user in ["@b:x", "@a:x", "@c:x", "@a:x"] {
            let prefix = keys::prefix(user.as_bytes());
            let one: Vec<Entry> = db
                .scan_prefix(Table::Meta, &prefix)
                .map(Result::unwrap)
                .collect();
            assert_eq!(scans.scan(&prefix).unwrap(), one, "{user}");
        }
        assert_eq!(scans.scan(&keys::prefix(b"@a:x")).unwrap().len(), 3);
    }

    #[tokio::test]
    async fn writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
            let mut batch = db.batch();
            batch.put(Table::Meta, b"k", b"v");
            db.commit(batch).await.unwrap();
        }
        let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
        assert_eq!(
            db.get(Table::Meta, b"k").unwrap().as_deref(),
            Some(&b"v"[..])
        );
    }

    #[test]
    fn newer_schema_version_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
            let mut batch = db.batch();
            batch.put(
                Table::Meta,
                SCHEMA_VERSION_KEY,
                (SCHEMA_VERSION + 1).to_be_bytes(),
            );
            db.commit_blocking(batch).unwrap();
        }
        let err = Db::open(dir.path(), &DbOptions::default()).err().unwrap();
        assert!(err.message.contains("newer"), "{err}");
    }

    #[test]
    fn bulk_reads_leave_the_block_cache_as_it_is() {
        let (_dir, db) = open_temp();
        let mut batch = db.batch();
        for i in 0u64..2000 {
            batch.put(Table::Meta, i.to_be_bytes(), [7u8; 200]);
        }
        db.commit_blocking(batch).unwrap();
        db.release_memory().unwrap(); // into a table file, the cache emptied
        let empty = db.cache.get_usage();
        assert!(empty < 4096, "{empty}");
        let keys: Vec<[u8; 8]> = (0u64..2000).map(u64::to_be_bytes).collect();
        bulk_reads(|| {
            let values = db.multi_get(Table::Meta, &keys).unwrap();
            assert!(values.iter().all(|v| v.as_deref() == Some(&[7u8; 200][..])));
            assert_eq!(db.get(Table::Meta, keys[5]).unwrap().unwrap().len(), 200);
            assert_eq!(db.scan_prefix(Table::Meta, &[0u8]).count(), 2000);
        });
        assert_eq!(db.cache.get_usage(), empty, "bulk reads filled the cache");
        // The scope ends with the closure: reads after it fill the cache again.
        db.multi_get(Table::Meta, &keys).unwrap();
        assert!(db.cache.get_usage() > empty + 100_000);
    }

    #[test]
    fn index_and_filter_blocks_live_with_the_tables_unless_asked_into_the_cache() {
        let readers = |index_in_cache| {
            let dir = tempfile::tempdir().unwrap();
            let options = DbOptions {
                index_in_cache,
                ..DbOptions::default()
            };
            let db = Db::open(dir.path(), &options).unwrap();
            let mut batch = db.batch();
            for i in 0u64..20_000 {
                batch.put(Table::Meta, i.to_be_bytes(), [1u8; 16]);
            }
            db.commit_blocking(batch).unwrap();
            db.release_memory().unwrap();
            assert_eq!(
                db.get(Table::Meta, 7u64.to_be_bytes())
                    .unwrap()
                    .unwrap()
                    .len(),
                16
            );
            db.table_readers_bytes()
        };
        let with_tables = readers(false);
        let in_cache = readers(true);
        // 20,000 keys: a filter of ~25 KB and an index of ~100 entries.
        assert!(with_tables > 20_000, "{with_tables}");
        assert!(
            in_cache < with_tables / 2,
            "{in_cache} against {with_tables}"
        );
    }

    #[test]
    fn version_1_and_2_databases_open_and_are_marked_version_3() {
        for old in [1u64, 2] {
            let dir = tempfile::tempdir().unwrap();
            {
                let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
                let mut batch = db.batch();
                batch.put(Table::Meta, SCHEMA_VERSION_KEY, old.to_be_bytes());
                db.commit_blocking(batch).unwrap();
            }
            let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
            assert_eq!(
                db.get(Table::Meta, SCHEMA_VERSION_KEY).unwrap().as_deref(),
                Some(&SCHEMA_VERSION.to_be_bytes()[..])
            );
        }
        assert_eq!(SCHEMA_VERSION, 3);
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let (dir, _db) = open_temp();
        let err = Db::open(dir.path(), &DbOptions::default()).err().unwrap();
        assert!(err.message.contains("another ourwhats process"), "{err}");
        assert!(err.message.contains(LOCKED), "{err}");
    }
}
