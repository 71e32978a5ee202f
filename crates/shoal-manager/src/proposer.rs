//! Proposal batching on the leader (the term's "proposer" worker).
//!
//! openraft 0.9's core appends one client write at a time and waits for its fsync before it takes
//! the next, so writes proposed one by one commit at most one per fsync, however many clients
//! wait (measured with 64 clients: one append per flush, 30 ms per write). The proposer gathers
//! the commands proposed while earlier entries are on their way and submits them as one entry of
//! several commands; the state machine applies each on its own, in order, with its own result
//! (`shoal_raft::Request`). A command is never split or merged with another: what must commit
//! together stays one command.
//!
//! How a write ends is kept exact for the writer: a command still queued when the term ends was
//! never appended (`NotSubmitted`, safe to try again); one whose entry was submitted and then
//! lost track of has an unknown outcome.

use std::collections::VecDeque;

use openraft::error::{ClientWriteError, RaftError};
use prost::Message;
use shoal_api::v1::{Command, CommandResult};
use shoal_raft::{RaftNode, Request};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Commands in one entry at most.
const MAX_COMMANDS: usize = 256;
/// Encoded bytes of the commands in one shared entry at most. Small enough
/// that a new leader's probes of its followers' logs, which carry entries they already have,
/// stay cheap; large enough for hundreds of service updates.
const MAX_BYTES: usize = 32 << 10;
/// Entries of shared commands submitted and not yet answered at most: few enough that commands
/// wait and share entries while openraft appends one entry per fsync.
const MAX_IN_FLIGHT: usize = 4;
/// Encoded bytes from which a command is already a batch and goes at once, in an entry of its
/// own, outside [`MAX_IN_FLIGHT`]: the leader's loops pack up to 256 ops in a command (256 task
/// assignments are over 20 KiB), the status batcher thousands, and they keep several in flight. They
/// gain nothing from sharing an entry, and bounding them with the shared entries halved the
/// scheduler's commands in flight (100,000 tasks: 19.5 s -> 23.4 s with a bound of 32 KiB). A
/// client's command (a service update: a spec) stays well below it.
const ALONE_BYTES: usize = 8 << 10;
/// Commands waiting for the proposer at most; a proposal waits for room beyond that.
const QUEUE: usize = 4096;

/// How a proposed command ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Committed and applied: the store's verdict.
    Applied(CommandResult),
    /// openraft refused the entry before appending it (this node no longer leads).
    NotLeader,
    /// The term ended before the command was submitted: nothing was appended.
    NotSubmitted,
    /// The entry was submitted and then failed: it may or may not apply.
    Failed(String),
}

struct Pending {
    cmd: Command,
    size: usize,
    reply: oneshot::Sender<Outcome>,
}

/// The way to the current term's proposer. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// A proposer handle and the queue its worker ([`run`]) serves.
    pub(crate) fn new() -> (Proposer, Queue) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Proposer { tx }, Queue(rx))
    }

    /// Queues `cmd`; its outcome arrives on the receiver (a receiver whose sender is dropped
    /// means the entry was submitted and then lost track of: an unknown outcome). `None` when the
    /// proposer has stopped: nothing was queued.
    pub(crate) async fn propose(&self, cmd: Command) -> Option<oneshot::Receiver<Outcome>> {
        let (reply, rx) = oneshot::channel();
        let size = cmd.encoded_len();
        self.tx.send(Pending { cmd, size, reply }).await.ok()?;
        Some(rx)
    }

    /// Whether the worker still serves this handle.
    pub(crate) fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// The receiving end of a [`Proposer`], handed to [`run`].
pub(crate) struct Queue(mpsc::Receiver<Pending>);

/// How many of the waiting commands (their encoded sizes, oldest first) go into the next entry:
/// at least one (a command larger than the byte bound goes alone), then more while the entry
/// stays within `max_commands` and `max_bytes`. 0 when nothing waits.
pub(crate) fn cut(sizes: impl IntoIterator<Item = usize>, max_commands: usize, max_bytes: usize) -> usize {
    let mut n = 0;
    let mut bytes = 0usize;
    for size in sizes {
        if n > 0 && (n >= max_commands || bytes.saturating_add(size) > max_bytes) {
            break;
        }
        n += 1;
        bytes = bytes.saturating_add(size);
    }
    n
}

/// Whether a command of `size` encoded bytes is submitted at once in an entry of its own.
fn goes_alone(size: usize) -> bool {
    size >= ALONE_BYTES
}

/// The proposer worker: submits what waits, a batch per entry, at most [`MAX_IN_FLIGHT`] at a
/// time (a command too large to share an entry at once, alone), until `stop`. Then everything
/// still queued is answered `NotSubmitted`; entries in flight are dropped (their callers see an
/// unknown outcome).
pub(crate) async fn run(raft: RaftNode, queue: Queue, stop: CancellationToken) {
    let Queue(mut rx) = queue;
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let mut alone: JoinSet<()> = JoinSet::new();
    loop {
        while in_flight.try_join_next().is_some() {}
        while alone.try_join_next().is_some() {}
        while let Ok(p) = rx.try_recv() {
            waiting.push_back(p);
        }
        while let Some(p) = waiting.pop_front() {
            if !goes_alone(p.size) {
                waiting.push_front(p);
                break;
            }
            alone.spawn(submit(raft.clone(), vec![p]));
        }
        if !waiting.is_empty() && in_flight.len() < MAX_IN_FLIGHT {
            let n = cut(waiting.iter().map(|p| p.size), MAX_COMMANDS, MAX_BYTES);
            let batch: Vec<Pending> = waiting.drain(..n).collect();
            in_flight.spawn(submit(raft.clone(), batch));
            continue;
        }
        // Nothing to submit now: wait for a command, a finished entry, or the end.
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            p = rx.recv() => match p {
                Some(p) => waiting.push_back(p),
                None => break,
            },
        }
    }
    rx.close();
    while let Ok(p) = rx.try_recv() {
        waiting.push_back(p);
    }
    for p in waiting {
        let _ = p.reply.send(Outcome::NotSubmitted);
    }
}

/// Submits one entry of `batch`'s commands and answers each with its own result.
async fn submit(raft: RaftNode, batch: Vec<Pending>) {
    let (commands, replies): (Vec<Command>, Vec<oneshot::Sender<Outcome>>) =
        batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let count = commands.len();
    match raft.client_write(Request(commands)).await {
        Ok(resp) => {
            let results = resp.data.0;
            if results.len() != count {
                tracing::error!(
                    commands = count,
                    results = results.len(),
                    "an entry's results do not match its commands"
                );
            }
            let mut results = results.into_iter();
            for reply in replies {
                let outcome = match results.next() {
                    Some(r) => Outcome::Applied(r),
                    None => Outcome::Failed("the entry was applied but gave no result for this command".into()),
                };
                let _ = reply.send(outcome);
            }
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            for reply in replies {
                let _ = reply.send(Outcome::NotLeader);
            }
        }
        Err(e) => {
            let why = e.to_string();
            for reply in replies {
                let _ = reply.send(Outcome::Failed(why.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_takes_what_fits_oldest_first() {
        assert_eq!(cut([], 4, 100), 0, "nothing waits");
        assert_eq!(cut([10, 10, 10], 4, 100), 3, "all fit");
        assert_eq!(cut([10; 9], 4, 100), 4, "the command bound");
        assert_eq!(cut([40, 40, 40], 4, 100), 2, "the byte bound");
        assert_eq!(cut([40, 60, 1], 4, 100), 2, "exactly the byte bound fits");
        assert_eq!(cut([500, 10], 4, 100), 1, "a command larger than the bound goes alone");
        assert_eq!(cut([10, 500, 10], 4, 100), 1, "and is not joined to what came before it");
        assert_eq!(cut([usize::MAX, usize::MAX], 4, usize::MAX - 1), 1, "sizes never overflow");
    }

    #[test]
    fn a_leader_loops_batch_goes_alone_and_a_clients_update_shares_an_entry() {
        use shoal_api::v1::*;
        let assignment = |_| Op {
            kind: Some(op::Kind::AssignTask(TaskAssignment {
                task_id: crate::util::new_id(),
                version: 3,
                node_id: crate::util::new_id(),
                status: Some(TaskStatus {
                    state: TaskState::Assigned as i32,
                    timestamp_ms: 1_796_000_000_000,
                    message: shoal_scheduler::SCHEDULED_MESSAGE.into(),
                    ..Default::default()
                }),
            })),
        };
        // What the scheduler proposes for 256 placements (the leader loops' command size).
        let scheduler = Command { now_ms: 1_796_000_000_000, ops: (0..256).map(assignment).collect() };
        assert!(goes_alone(scheduler.encoded_len()), "{} bytes share entries", scheduler.encoded_len());
        // A client's update of a service with a few dozen settings.
        let spec = ServiceSpec {
            annotations: Some(Annotations {
                name: "web".into(),
                labels: (0..16).map(|i| (format!("com.example.label-{i}"), format!("value-{i}"))).collect(),
            }),
            task_template: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: "registry.example.com:5000/team/web:2026.12.04".into(),
                    env: (0..32).map(|i| format!("SETTING_{i}=some-value-of-moderate-length-{i}")).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            mode: Some(service_spec::Mode::Replicated(ReplicatedService { replicas: 12 })),
            ..Default::default()
        };
        let update = Command {
            now_ms: 1_796_000_000_000,
            ops: vec![Op {
                kind: Some(op::Kind::Update(Object {
                    kind: Some(object::Kind::Service(Service {
                        meta: Some(Meta { id: crate::util::new_id(), version: 7, ..Default::default() }),
                        spec: Some(spec),
                        ..Default::default()
                    })),
                })),
            }],
        };
        assert!(!goes_alone(update.encoded_len()), "{} bytes go alone", update.encoded_len());
    }
}
