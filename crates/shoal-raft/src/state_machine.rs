//! The state machine adapter: applies committed entries to a `shoal_store::Store` and keeps its
//! snapshots (openraft storage-v2 `RaftStateMachine` + `RaftSnapshotBuilder`).
//!
//! The store lives in memory; what is durable is the latest snapshot file plus the log. At
//! open the snapshot is loaded, and when Raft starts, openraft re-applies the committed entries
//! after it (the log store persists the committed log id), so a restart costs at most one
//! snapshot interval of replay. [`StoreHandle`] is how the rest of the manager reads the store and follows it.
//!
//! Architecture Invariant: this module does not decide anything about objects; `Store::apply`
//! does. The store lock is a std `RwLock` and is never held across an `.await`.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{BasicNode, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, StoredMembership};
use shoal_api::v1::Event;
use shoal_store::Store;
use tokio::sync::{broadcast, watch};

use crate::error::StorageError;
use crate::snapshot::{self, Meta, SnapshotFile};
use crate::types::{Request, Response, TypeConfig};

type RaftResult<T> = Result<T, openraft::StorageError<u64>>;

/// How many apply batches a lagging event receiver may fall behind before it sees `Lagged` (and
/// re-reads the store). Each batch holds the changed objects, so a long buffer is memory: with
/// batches of thousands of status reports, 1024 of them once held over a gigabyte.
const EVENT_BUFFER: usize = 64;

struct Shared {
    store: RwLock<Store>,
    applied: watch::Sender<u64>,
    events: broadcast::Sender<Arc<Change>>,
}

/// What one apply batch did to the store, as [`StoreHandle::events`] tells it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Committed entries were applied; the events of their ops, in order.
    Applied(Vec<Event>),
    /// A snapshot replaced the whole store: re-read everything.
    Replaced,
}

/// A cloneable read handle on the applied store.
#[derive(Clone)]
pub struct StoreHandle {
    shared: Arc<Shared>,
}

impl StoreHandle {
    fn new(store: Store, applied: u64) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        StoreHandle {
            shared: Arc::new(Shared { store: RwLock::new(store), applied: watch::channel(applied).0, events }),
        }
    }

    /// Runs `f` on the store as applied so far. Do not block in `f`: applies wait for it.
    pub fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&self.read_guard())
    }

    /// The index of the last applied log entry (0 before any), updated after each apply batch
    /// and when a snapshot is installed.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.shared.applied.subscribe()
    }

    /// The changes of each apply batch, in order (one message per batch that produced events,
    /// and [`Change::Replaced`] when a snapshot replaced the store).
    ///
    /// A receiver that falls behind by more than the buffer gets `Lagged` and must re-read the
    /// store, as for `Replaced`. When a message arrives the store may already hold later
    /// batches too (their messages follow).
    pub fn events(&self) -> broadcast::Receiver<Arc<Change>> {
        self.shared.events.subscribe()
    }

    fn read_guard(&self) -> RwLockReadGuard<'_, Store> {
        // `Store::apply` never panics, so a poisoned lock still guards a consistent store.
        self.shared.store.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_guard(&self) -> RwLockWriteGuard<'_, Store> {
        self.shared.store.write().unwrap_or_else(|p| p.into_inner())
    }

    fn replace(&self, store: Store, applied: u64) {
        *self.write_guard() = store;
        let _ = self.shared.events.send(Arc::new(Change::Replaced));
        self.shared.applied.send_replace(applied);
    }
}

/// The Raft state machine over shoal-store, with its persisted snapshot.
pub struct StateMachineStore {
    handle: StoreHandle,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    snapshots: Snapshots,
}

impl StateMachineStore {
    /// Opens the state machine of `dir`, loading its snapshot if there is one.
    pub(crate) async fn open(dir: &std::path::Path) -> Result<(Self, StoreHandle), StorageError> {
        let snapshots = Snapshots::new(dir);
        let (store, meta) = snapshots.load().await?;
        let (last_applied, membership) = match &meta {
            Some(m) => (m.last_log_id, m.last_membership.clone()),
            None => (None, StoredMembership::default()),
        };
        let handle = StoreHandle::new(store, last_applied.map_or(0, |l| l.index));
        let sm = StateMachineStore { handle: handle.clone(), last_applied, membership, snapshots };
        Ok((sm, handle))
    }

    /// Applies one entry (each of its commands on its own, all at the entry's index); returns
    /// their results and appends their events to `events`.
    fn apply_one(
        store: &mut Store,
        membership: &mut StoredMembership<u64, BasicNode>,
        entry: openraft::Entry<TypeConfig>,
        events: &mut Vec<Event>,
    ) -> Response {
        match entry.payload {
            EntryPayload::Blank => Response(Vec::new()),
            EntryPayload::Normal(Request(commands)) => Response(
                commands
                    .iter()
                    .map(|cmd| {
                        let (result, evs) = store.apply(entry.log_id.index, cmd);
                        events.extend(evs);
                        result
                    })
                    .collect(),
            ),
            EntryPayload::Membership(m) => {
                *membership = StoredMembership::new(Some(entry.log_id), m);
                Response(Vec::new())
            }
        }
    }

    /// Replaces the store with a snapshot's content (already persisted).
    fn install(&mut self, meta: &Meta, store: Store) {
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.handle.replace(store, meta.last_log_id.map_or(0, |l| l.index));
    }

    /// Writes the current state as the snapshot with `meta` (used by offline recovery).
    pub(crate) async fn persist_as(&mut self, meta: Meta) -> Result<(), StorageError> {
        let image = off_the_core(|| self.handle.read(Store::encode_snapshot));
        let data = snapshot::encode(&meta, &image)?;
        self.snapshots.persist(&meta, data, true).await?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership;
        Ok(())
    }

    pub(crate) fn last_applied(&self) -> Option<LogId<u64>> {
        self.last_applied
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> RaftResult<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>)> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> RaftResult<Vec<Response>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut events = Vec::new();
        let mut last = self.last_applied;
        let (handle, membership) = (&self.handle, &mut self.membership);
        let entries: Vec<_> = entries.into_iter().collect();
        let in_place = !holds_the_thread(&entries);
        let apply = || {
            let mut store = handle.write_guard();
            for entry in entries {
                last = Some(entry.log_id);
                responses.push(Self::apply_one(&mut store, membership, entry, &mut events));
            }
        };
        if in_place {
            apply();
        } else {
            off_the_core(apply);
        }
        if last != self.last_applied {
            self.last_applied = last;
            if !events.is_empty() {
                // No receiver is fine: events are best effort.
                let _ = self.handle.shared.events.send(Arc::new(Change::Applied(events)));
            }
            self.handle.shared.applied.send_replace(last.map_or(0, |l| l.index));
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Encode now, under the read lock, so the image is exactly the state at `last_applied`
        // even though openraft builds the snapshot concurrently with later applies.
        let image = off_the_core(|| self.handle.read(Store::encode_snapshot));
        SnapshotBuilder {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            image,
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> RaftResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<Cursor<Vec<u8>>>) -> RaftResult<()> {
        let sig = Some(meta.signature());
        let to_raft = |verb| crate::error::to_raft(ErrorSubject::Snapshot(sig.clone()), verb);
        let data = snapshot.into_inner();
        let (_, image) = snapshot::decode(&data).map_err(to_raft(ErrorVerb::Read))?;
        let store = Store::decode_snapshot(image)
            .map_err(|source| StorageError::DecodeStore { path: self.snapshots.file.path(), source })
            .map_err(to_raft(ErrorVerb::Read))?;
        // Persist with openraft's meta as the header (the sender's header says the same).
        let data = snapshot::encode(meta, image).map_err(to_raft(ErrorVerb::Write))?;
        self.snapshots.persist(meta, data, true).await.map_err(to_raft(ErrorVerb::Write))?;
        self.install(meta, store);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> RaftResult<Option<Snapshot<TypeConfig>>> {
        self.snapshots.current().await.map_err(crate::error::to_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}

/// Builds a snapshot of the state captured by `get_snapshot_builder`.
pub struct SnapshotBuilder {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    image: Vec<u8>,
    snapshots: Snapshots,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> RaftResult<Snapshot<TypeConfig>> {
        let snapshot_id = match &self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, unique_suffix()),
            None => format!("0-0-{}", unique_suffix()),
        };
        let meta = Meta { last_log_id: self.last_applied, last_membership: self.membership.clone(), snapshot_id };
        let to_raft = crate::error::to_raft(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write);
        let image = std::mem::take(&mut self.image);
        let data = snapshot::encode(&meta, &image).map_err(to_raft)?;
        let to_raft = crate::error::to_raft(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write);
        self.snapshots.persist(&meta, data.clone(), false).await.map_err(to_raft)?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

/// Nanoseconds since the epoch: makes snapshot ids unique across rebuilds at the same index.
fn unique_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// The persisted snapshot of a data directory; writes are serialized and never go backwards.
#[derive(Clone)]
struct Snapshots {
    file: SnapshotFile,
    /// Meta of the snapshot on disk. The lock also serializes writers (builder and install).
    current: Arc<tokio::sync::Mutex<Option<Meta>>>,
}

impl Snapshots {
    fn new(dir: &std::path::Path) -> Self {
        Snapshots { file: SnapshotFile::new(dir), current: Arc::new(tokio::sync::Mutex::new(None)) }
    }

    /// Loads the snapshot on disk into a store (an empty store if there is none).
    async fn load(&self) -> Result<(Store, Option<Meta>), StorageError> {
        let mut current = self.current.lock().await;
        let file = self.file.clone();
        let loaded = blocking(move || {
            file.remove_leftovers()?;
            let Some(data) = file.read()? else {
                return Ok((Store::new(), None));
            };
            let (meta, image) = snapshot::decode(&data)?;
            let store = Store::decode_snapshot(image)
                .map_err(|source| StorageError::DecodeStore { path: file.path(), source })?;
            Ok((store, Some(meta)))
        })
        .await?;
        current.clone_from(&loaded.1);
        Ok(loaded)
    }

    /// Makes `data` the snapshot on disk, unless a newer one is already there (`force` writes
    /// anyway: an installed or recovered snapshot replaces the state, whatever came before).
    async fn persist(&self, meta: &Meta, data: Vec<u8>, force: bool) -> Result<(), StorageError> {
        let mut current = self.current.lock().await;
        if !force {
            if let Some(cur) = current.as_ref() {
                if cur.last_log_id >= meta.last_log_id {
                    tracing::debug!(built = ?meta.last_log_id, on_disk = ?cur.last_log_id, "newer snapshot already on disk");
                    return Ok(());
                }
            }
        }
        let file = self.file.clone();
        blocking(move || file.write(&data)).await?;
        *current = Some(meta.clone());
        Ok(())
    }

    async fn current(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self.current.lock().await;
        if current.is_none() {
            return Ok(None);
        }
        let file = self.file.clone();
        let Some(data) = blocking(move || file.read()).await? else {
            return Err(StorageError::Corrupt { what: "snapshot file disappeared".into(), source: None });
        };
        let (meta, _) = snapshot::decode(&data)?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// Runs blocking file work off the async worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(res) => res,
        Err(join) => Err(StorageError::Task(join)),
    }
}

/// Ops up to which an apply batch runs in place on Raft's worker (tens of microseconds); a
/// larger one moves the worker's other tasks away first ([`off_the_core`]). That move hands the
/// worker to another thread, which costs more than applying a few ops: with one client it was a
/// third of the Raft thread's time, for batches of one command.
const INLINE_APPLY_OPS: usize = 64;

/// Whether applying `entries` takes long enough to move the worker's other tasks away first.
fn holds_the_thread(entries: &[openraft::Entry<TypeConfig>]) -> bool {
    let ops: usize = entries
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::Normal(Request(commands)) => commands.iter().map(|c| c.ops.len().max(1)).sum(),
            EntryPayload::Blank | EntryPayload::Membership(_) => 1,
        })
        .sum();
    ops > INLINE_APPLY_OPS
}

/// Runs `f`, which holds the thread for a while (a large apply batch, a snapshot of a big
/// store), so that openraft's core keeps answering AppendEntries and votes meanwhile: on a
/// multi-threaded runtime (Raft's own) the other tasks of this worker move to another one first.
/// Elsewhere (a test's single-threaded runtime) it simply runs.
fn off_the_core<R>(f: impl FnOnce() -> R) -> R {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}
