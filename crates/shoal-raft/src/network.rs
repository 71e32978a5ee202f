//! The client side of the Raft transport: openraft's `RaftNetworkFactory` over the tonic `Raft`
//! service, and the peer health it observes.
//!
//! Each RPC carries the openraft request in `codec`'s binary form in a `RaftMessage` (a
//! snapshot chunk as a JSON header followed by its raw bytes); the reply carries
//! `Result<response, RaftError>` in the same form. Channels are created by a [`ChannelFactory`] (so TLS is
//! the caller's choice), cached per target and rebuilt when the target's address changes.
//!
//! Errors are mapped so openraft reacts correctly: a peer that cannot be reached (connection
//! refused, no Raft running there, Raft stopped there) is `Unreachable` and openraft backs off;
//! an expired deadline is `Timeout`; other transport failures are `Network` (retried at once);
//! an API error of the remote Raft is `RemoteError`; an AppendEntries batch over the byte budget
//! is `PayloadTooLarge` so openraft sends fewer entries.
//!
//! Architecture Invariant: nothing here decides Raft behaviour; it moves bytes and classifies
//! failures.

use std::collections::HashMap;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_api::v1::raft_client::RaftClient;
use shoal_api::v1::RaftMessage;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::types::TypeConfig;

/// Largest gRPC message accepted or sent on the Raft service (both directions).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Encoded size above which an AppendEntries batch of several entries is split. Keeps each RPC
/// well within openraft's AppendEntries deadline (the heartbeat interval). The log reader already
/// hands replication no more than [`crate::log_store::REPLICATION_READ_BYTES`] of entries, so
/// this is a guard rather than the usual way a batch is cut.
pub(crate) const APPEND_BUDGET_BYTES: usize = 256 << 10;

/// Deadline used when openraft passes none (it always does in 0.9; this is a guard).
const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(1);

/// Makes a (lazily connecting) channel to a peer from its advertised address (`host:port`).
pub type ChannelFactory = Arc<dyn Fn(&str) -> Result<Channel, String> + Send + Sync>;

/// Plain-text HTTP/2 channels (`http://{addr}`): 300 ms connect timeout, TCP_NODELAY, HTTP/2
/// keepalive so a silently dead peer is noticed, connected lazily on first use.
pub fn plain_channels() -> ChannelFactory {
    Arc::new(|addr: &str| {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("invalid raft peer address {addr:?}: {e}"))?;
        Ok(endpoint
            .connect_timeout(Duration::from_millis(300))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true)
            .connect_lazy())
    })
}

/// The endpoint settings Raft channels use (timeouts, keepalive), for factories that add their
/// own transport (TLS) with `connect_with_connector_lazy`.
pub fn raft_endpoint(addr: &str) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("invalid raft peer address {addr:?}: {e}"))?;
    Ok(endpoint
        .connect_timeout(Duration::from_millis(300))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true))
}

/// When each peer's Raft last answered an RPC (a reply from a stopped Raft does not count).
/// Cloning shares the map.
#[derive(Clone, Default)]
pub struct PeerHealth {
    last_ok: Arc<Mutex<HashMap<u64, Instant>>>,
}

impl PeerHealth {
    /// Whether `id` answered a Raft RPC within the last `within`.
    ///
    /// Only a node that sends Raft RPCs (the leader, or a candidate) learns about its peers;
    /// on a follower this is mostly false.
    pub fn reachable(&self, id: u64, within: Duration) -> bool {
        self.last_ok(id).is_some_and(|t| t.elapsed() <= within)
    }

    /// The instant of the last successful RPC to `id`, if any.
    pub fn last_ok(&self, id: u64) -> Option<Instant> {
        self.lock().get(&id).copied()
    }

    fn record_ok(&self, id: u64) {
        self.lock().insert(id, Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.last_ok.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct CachedChannel {
    addr: String,
    channel: Result<Channel, String>,
}

/// openraft's network factory for shoal: one gRPC channel per peer. Cloning shares the cache.
#[derive(Clone)]
pub struct Network {
    factory: ChannelFactory,
    channels: Arc<Mutex<HashMap<u64, CachedChannel>>>,
    health: PeerHealth,
}

impl Network {
    /// A network whose channels come from `factory`.
    pub fn new(factory: ChannelFactory) -> Self {
        Network { factory, channels: Arc::default(), health: PeerHealth::default() }
    }

    /// The health map this network updates on every successful RPC.
    pub fn health(&self) -> PeerHealth {
        self.health.clone()
    }

    fn channel(&self, target: u64, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(&target) {
            if c.addr == addr {
                return c.channel.clone();
            }
        }
        let channel = (self.factory)(addr);
        channels.insert(target, CachedChannel { addr: addr.to_string(), channel: channel.clone() });
        channel
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        let client = self.channel(target, &node.addr).map(|ch| {
            RaftClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        });
        PeerClient { target, node: node.clone(), client, health: self.health.clone() }
    }
}

/// The connection to one peer, as handed to openraft.
pub struct PeerClient {
    target: u64,
    node: BasicNode,
    client: Result<RaftClient<Channel>, String>,
    health: PeerHealth,
}

/// Why an RPC did not produce a reply from the peer's Raft.
enum Failure {
    Unreachable(AnyError),
    Timeout(Duration),
    Network(AnyError),
}

impl PeerClient {
    /// Sends one encoded RPC and decodes the peer's `Result<Resp, RaftError<E>>`.
    async fn call<Resp, E>(
        &mut self,
        kind: RPCTypes,
        data: Vec<u8>,
        from: u64,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let ttl = if option.hard_ttl().is_zero() { DEFAULT_RPC_TIMEOUT } else { option.hard_ttl() };
        let reply = self.send(kind, data, ttl).await.map_err(|f| self.rpc_error(f, kind, from))?;
        let res: Result<Resp, RaftError<u64, E>> = crate::codec::from_bytes(&reply).map_err(|e| {
            RPCError::Network(NetworkError::new(&AnyError::new(&e).add_context(|| "decoding raft reply")))
        })?;
        match res {
            Ok(resp) => {
                self.health.record_ok(self.target);
                Ok(resp)
            }
            // A stopped or broken Raft behaves like an absent peer: back off, then retry.
            Err(RaftError::Fatal(fatal)) => Err(RPCError::Unreachable(Unreachable::new(&fatal))),
            Err(api) => {
                self.health.record_ok(self.target);
                Err(RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), api)))
            }
        }
    }

    async fn send(&mut self, kind: RPCTypes, data: Vec<u8>, ttl: Duration) -> Result<Vec<u8>, Failure> {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => return Err(Failure::Unreachable(AnyError::error(e))),
        };
        let mut request = tonic::Request::new(RaftMessage { data });
        request.set_timeout(ttl);
        let fut = async {
            match kind {
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let res = match tokio::time::timeout(ttl, fut).await {
            Ok(res) => res,
            Err(_) => return Err(Failure::Timeout(ttl)),
        };
        match res {
            Ok(reply) => Ok(reply.into_inner().data),
            Err(status) => Err(classify(status, ttl)),
        }
    }

    fn rpc_error<E: Error>(&self, f: Failure, action: RPCTypes, from: u64) -> RPCError<u64, BasicNode, E> {
        match f {
            Failure::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            Failure::Network(e) => RPCError::Network(NetworkError::new(&e)),
            Failure::Timeout(timeout) => RPCError::Timeout(Timeout { action, id: from, target: self.target, timeout }),
        }
    }
}

fn classify(status: tonic::Status, ttl: Duration) -> Failure {
    use tonic::Code;
    let err = || AnyError::error(format!("{}: {}", status.code(), status.message()));
    match status.code() {
        Code::Unavailable => Failure::Unreachable(err()),
        Code::DeadlineExceeded | Code::Cancelled => Failure::Timeout(ttl),
        // tonic reports some connection failures as Unknown with a transport error message.
        Code::Unknown if status.message().contains("transport error") => Failure::Unreachable(err()),
        _ => Failure::Network(err()),
    }
}

fn encode(req: &impl Serialize) -> Result<Vec<u8>, NetworkError> {
    crate::codec::to_bytes(req).map_err(|e| NetworkError::new(&e))
}

/// The node id of the sender of a request: the candidate or leader named in its vote.
fn sender(vote: &openraft::Vote<u64>, fallback: u64) -> u64 {
    vote.leader_id().voted_for().unwrap_or(fallback)
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let from = sender(&rpc.vote, self.target);
        let data = encode(&rpc).map_err(RPCError::Network)?;
        let n = rpc.entries.len() as u64;
        if n > 1 && data.len() > APPEND_BUDGET_BYTES {
            let hint = (n * APPEND_BUDGET_BYTES as u64 / data.len() as u64).clamp(1, n - 1);
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(hint)));
        }
        self.call(RPCTypes::AppendEntries, data, from, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        let from = sender(&rpc.vote, self.target);
        let data = crate::codec::encode_chunk(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.call(RPCTypes::InstallSnapshot, data, from, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let from = sender(&rpc.vote, self.target);
        self.call(RPCTypes::Vote, encode(&rpc).map_err(RPCError::Network)?, from, &option).await
    }

    /// Back off from an unreachable peer briefly at first (a restarting manager is back within
    /// a heartbeat or two), then at openraft's default pace.
    fn backoff(&self) -> Backoff {
        let mut next = Duration::from_millis(50);
        Backoff::new(std::iter::from_fn(move || {
            let cur = next;
            next = (next * 2).min(Duration::from_millis(500));
            Some(cur)
        }))
    }
}
