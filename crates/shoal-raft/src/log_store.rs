//! The Raft log and vote on sled (openraft storage-v2 `RaftLogStorage`).
//!
//! One sled database under `<data dir>/log` with two trees: `logs` (entries in the binary form
//! of [`crate::codec`], keyed by the big-endian log index so key order is log order) and `meta` (vote, committed log id, last
//! purged log id, JSON).
//!
//! Durability: an append is acknowledged to openraft (its callback) and a vote returns only after
//! sled has flushed and fsynced, so an acknowledged write survives `kill -9`; appends share
//! fsyncs (group commit, [`flush_loop`]). The committed log
//! id is written without a flush of its own: it becomes durable with the next append or vote, or
//! sled's periodic flush; losing its latest value only delays re-applying entries at restart.
//!
//! Architecture Invariant: sled is touched only by this module; nothing here interprets commands.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, StorageIOError, Vote};

use crate::error::StorageError;
use crate::types::TypeConfig;

type RaftResult<T> = Result<T, openraft::StorageError<u64>>;

const TREE_LOGS: &str = "logs";
const TREE_META: &str = "meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged_log_id";

/// sled keeps hot pages in memory; the log is read mostly at its tail, so a small cache is enough
/// (the default of 1 GiB would dominate a manager's footprint).
const CACHE_BYTES: u64 = 32 << 20;

/// Stored bytes of entries at most that one read for replication returns (at least one entry):
/// an AppendEntries request carries them with little more, so it stays within the transport's
/// budget ([`crate::network::APPEND_BUDGET_BYTES`]) and is not encoded, refused as too large and
/// read again with fewer entries (which, with entries of many commands, repeated a dozen times
/// while a new leader caught a follower up).
pub(crate) const REPLICATION_READ_BYTES: usize = crate::network::APPEND_BUDGET_BYTES * 3 / 4;

/// How long `open` waits for another instance in this process to release the database lock
/// (a Raft instance that is shutting down still holds it for a moment).
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The Raft log and vote of one manager, on sled. Cloning shares the database.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    logs: sled::Tree,
    meta: sled::Tree,
    /// Appends waiting for the next fsync (see [`flush_loop`]).
    flushes: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
    /// Owns the flush thread: it ends, and is joined, when the last clone of the store goes.
    _flusher: Arc<Flusher>,
}

/// The flush thread's handle; dropping it (with the last [`LogStore`], whose queue sender goes
/// first) lets the thread drain its queue and end, and waits for it.
struct Flusher(Option<std::thread::JoinHandle<()>>);

impl Drop for Flusher {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            // The thread ends once every sender is gone; a store dropped on the flush thread
            // itself cannot happen (it holds only the database).
            let _ = t.join();
        }
    }
}

/// Group commit: acknowledges appends once an fsync that began after they were written has
/// finished, one fsync for every append that queued up meanwhile. Acknowledgements keep the
/// order of the appends. openraft 0.9's core waits for each append's acknowledgement before it
/// goes on (its `AppendInputEntries` command), so on a manager one fsync carries one append
/// (measured under 64 clients: 1.0 appends per flush); what is shared is the cost per append,
/// not the fsync. Runs on its own thread and flushes synchronously: sled's
/// `flush_async` hands each flush to sled's thread pool, which wakes all of its idle threads
/// for every job (measured: a third of a manager's context switches under one client).
fn flush_loop(db: sled::Db, queue: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = queue.recv() {
        let mut waiting = vec![first];
        waiting.extend(queue.try_iter());
        let res = db.flush().map(|_| ()).map_err(|e| e.to_string());
        for callback in waiting {
            callback.log_io_completed(res.clone().map_err(std::io::Error::other));
        }
        if let Err(e) = res {
            tracing::error!(error = %e, "flushing the raft log failed: appends are not acknowledged");
        }
    }
}

impl LogStore {
    /// Opens (or creates) the log database in `dir` (a directory sled owns).
    pub(crate) async fn open(dir: &Path) -> Result<Self, StorageError> {
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            let res = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES).open();
            match res {
                Ok(db) => break db,
                Err(e) if is_lock_error(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(source) => return Err(StorageError::OpenLog { path: dir.to_path_buf(), source }),
            }
        };
        let logs = db.open_tree(TREE_LOGS).map_err(StorageError::log("opening the logs tree"))?;
        let meta = db.open_tree(TREE_META).map_err(StorageError::log("opening the meta tree"))?;
        let (flushes, queue) = std::sync::mpsc::channel();
        let flush_db = db.clone();
        let flusher = std::thread::Builder::new()
            .name("raft log flush".to_string())
            .spawn(move || flush_loop(flush_db, queue))
            .map_err(|source| StorageError::OpenLog { path: dir.to_path_buf(), source: source.into() })?;
        Ok(LogStore { db, logs, meta, flushes, _flusher: Arc::new(Flusher(Some(flusher))) })
    }

    /// Flushes and fsyncs everything written so far.
    pub(crate) async fn flush(&self) -> Result<(), StorageError> {
        self.db.flush_async().await.map_err(StorageError::log("flushing"))?;
        Ok(())
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let Some(raw) = self.meta.get(key).map_err(StorageError::log("reading metadata"))? else {
            return Ok(None);
        };
        let v = serde_json::from_slice(&raw)
            .map_err(|e| StorageError::corrupt(format!("metadata {}", String::from_utf8_lossy(key)), e))?;
        Ok(Some(v))
    }

    fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let raw = serde_json::to_vec(value)
            .map_err(|e| StorageError::corrupt(format!("metadata {}", String::from_utf8_lossy(key)), e))?;
        self.meta.insert(key, raw).map_err(StorageError::log("writing metadata"))?;
        Ok(())
    }

    pub(crate) fn last_purged(&self) -> Result<Option<LogId<u64>>, StorageError> {
        self.read_meta(KEY_PURGED)
    }

    pub(crate) fn vote(&self) -> Result<Option<Vote<u64>>, StorageError> {
        self.read_meta(KEY_VOTE)
    }

    pub(crate) fn committed(&self) -> Result<Option<LogId<u64>>, StorageError> {
        self.read_meta(KEY_COMMITTED)
    }

    pub(crate) async fn write_vote(&self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote)?;
        self.flush().await
    }

    pub(crate) fn write_committed(&self, committed: &Option<LogId<u64>>) -> Result<(), StorageError> {
        self.write_meta(KEY_COMMITTED, committed)
    }

    fn last_entry_id(&self) -> Result<Option<LogId<u64>>, StorageError> {
        let Some((_, raw)) = self.logs.last().map_err(StorageError::log("reading the last entry"))? else {
            return Ok(None);
        };
        Ok(Some(decode_entry(&raw)?.log_id))
    }

    pub(crate) fn log_state(&self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last_log_id = match self.last_entry_id()? {
            Some(last) if Some(&last) > last_purged_log_id.as_ref() => Some(last),
            _ => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    /// Entries with an index in `range`, in order.
    pub(crate) fn entries<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(key(*i)),
            Bound::Excluded(i) => Bound::Excluded(key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(key(*i)),
            Bound::Excluded(i) => Bound::Excluded(key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        if is_empty_range(&start, &end) {
            return Ok(Vec::new());
        }
        self.logs
            .range::<[u8; 8], _>((start, end))
            .map(|item| {
                let (_, raw) = item.map_err(StorageError::log("reading entries"))?;
                decode_entry(&raw)
            })
            .collect()
    }

    /// Entries from `start` on (before `end`), in order, as many as fit in `budget` stored bytes;
    /// at least the first one, however large.
    pub(crate) fn entries_within(
        &self,
        start: u64,
        end: u64,
        budget: usize,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in self.logs.range(key(start)..key(end)) {
            let (_, raw) = item.map_err(StorageError::log("reading entries"))?;
            bytes = bytes.saturating_add(raw.len());
            if !out.is_empty() && bytes > budget {
                break;
            }
            out.push(decode_entry(&raw)?);
        }
        Ok(out)
    }

    pub(crate) fn append_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let raw = crate::codec::to_bytes(&entry)
                .map_err(|e| StorageError::corrupt(format!("entry {} cannot be encoded", entry.log_id), e))?;
            batch.insert(&key(entry.log_id.index), raw);
        }
        self.logs.apply_batch(batch).map_err(StorageError::log("appending entries"))
    }

    /// Removes the entries in `range` (an index range).
    fn remove_range(&self, range: (Bound<u64>, Bound<u64>), action: &'static str) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        let start = range.0.map(key);
        let end = range.1.map(key);
        if is_empty_range(&start, &end) {
            return Ok(());
        }
        for item in self.logs.range::<[u8; 8], _>((start, end)) {
            let (k, _) = item.map_err(StorageError::log(action))?;
            batch.remove(k);
        }
        self.logs.apply_batch(batch).map_err(StorageError::log(action))
    }

    /// Deletes entries from `index` on (inclusive) and flushes.
    pub(crate) async fn truncate_from(&self, index: u64) -> Result<(), StorageError> {
        self.remove_range((Bound::Included(index), Bound::Unbounded), "truncating the log")?;
        self.flush().await
    }

    /// Records `upto` as purged and deletes entries up to it (inclusive).
    pub(crate) fn purge_upto(&self, upto: &LogId<u64>) -> Result<(), StorageError> {
        // The marker first: a crash in between leaves extra entries, never a hole.
        self.write_meta(KEY_PURGED, upto)?;
        self.remove_range((Bound::Unbounded, Bound::Included(upto.index)), "purging the log")
    }
}

fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn is_empty_range(start: &Bound<[u8; 8]>, end: &Bound<[u8; 8]>) -> bool {
    // sled panics on a range whose start is after its end.
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s), Bound::Excluded(e))
        | (Bound::Excluded(s), Bound::Included(e))
        | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        _ => false,
    }
}

fn decode_entry(raw: &[u8]) -> Result<Entry<TypeConfig>, StorageError> {
    crate::codec::from_bytes(raw).map_err(|e| StorageError::corrupt("log entry", e))
}

fn to_raft_logs(verb: ErrorVerb) -> impl FnOnce(StorageError) -> openraft::StorageError<u64> {
    crate::error::to_raft(ErrorSubject::Logs, verb)
}

fn to_raft_vote(verb: ErrorVerb) -> impl FnOnce(StorageError) -> openraft::StorageError<u64> {
    crate::error::to_raft(ErrorSubject::Vote, verb)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> RaftResult<Vec<Entry<TypeConfig>>> {
        self.entries(range).map_err(to_raft_logs(ErrorVerb::Read))
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> RaftResult<Vec<Entry<TypeConfig>>> {
        self.entries_within(start, end, REPLICATION_READ_BYTES).map_err(to_raft_logs(ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> RaftResult<LogState<TypeConfig>> {
        self.log_state().map_err(to_raft_logs(ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> RaftResult<()> {
        self.write_vote(vote).await.map_err(to_raft_vote(ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> RaftResult<Option<Vote<u64>>> {
        self.vote().map_err(to_raft_vote(ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> RaftResult<()> {
        self.write_committed(&committed).map_err(to_raft_logs(ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> RaftResult<Option<LogId<u64>>> {
        self.committed().map_err(to_raft_logs(ErrorVerb::Read))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> RaftResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_entries(entries).map_err(to_raft_logs(ErrorVerb::Write))?;
        // Entries are readable now; they are acknowledged once on disk, by the flush loop.
        if let Err(e) = self.flushes.send(callback) {
            // The loop only ends with the store: flush here rather than lose the acknowledgement.
            let callback = e.0;
            match self.db.flush_async().await {
                Ok(_) => callback.log_io_completed(Ok(())),
                Err(e) => {
                    callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                    return Err(StorageIOError::write_logs(&e).into());
                }
            }
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> RaftResult<()> {
        self.truncate_from(log_id.index).await.map_err(to_raft_logs(ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> RaftResult<()> {
        self.purge_upto(&log_id).map_err(to_raft_logs(ErrorVerb::Delete))
    }
}
