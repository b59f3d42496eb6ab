//! Raft between masters over gRPC, the `MasterRaft` service.
//!
//! openraft's messages travel as serde_json in `RaftMessage.data`. A request is openraft's
//! request as is; the answer is the whole `Result<Response, RaftError>`, so the caller gets the
//! remote node's openraft error unchanged (`RPCError::RemoteError`).
//!
//! - [`Network`] / [`PeerClient`]: the caller's side. A peer is dialled lazily at
//!   `http://{node.addr}`; a peer that cannot be reached is `Unreachable` (openraft backs off),
//!   a call over openraft's hard TTL is a `Timeout`.
//! - [`RaftServer`]: the callee's side, handing each message to the local [`Raft`]. Bytes that
//!   do not decode are answered `InvalidArgument`.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, Raft};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_protocol::auth::{sign, Principal, Verifier};
use sluice_protocol::pb;
use sluice_protocol::pb::master_raft_client::MasterRaftClient;
use sluice_protocol::pb::master_raft_server::{MasterRaft, MasterRaftServer};
use sluice_protocol::rpc::Credentials;
use sluice_protocol::tls::{TlsClient, TlsConnector};
use tonic::transport::Channel;

use super::{NodeId, TypeConfig};

/// The largest Raft message either way. Snapshots travel in openraft's chunks (3 MiB by
/// default, larger once JSON-encoded); the limit leaves room for a larger chunk size.
pub const RAFT_MESSAGE_LIMIT: usize = 256 * 1024 * 1024;

/// How long dialling a peer may take before the call fails as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

/// Makes openraft's clients to the other masters.
#[derive(Debug, Clone)]
pub struct Network {
    id: NodeId,
    /// Signs every message as `master:<id>` when the cluster has a secret.
    credentials: Option<Credentials>,
    /// Dial the other masters with TLS (`tls_connect`).
    tls: Option<TlsClient>,
}

impl Network {
    /// The network of the master whose Raft node id is `id` (named in timeouts).
    pub fn new(id: NodeId) -> Self {
        Network {
            id,
            credentials: None,
            tls: None,
        }
    }

    /// Signs every message with `credentials` (`None`: unsigned).
    pub fn with_credentials(mut self, credentials: Option<Credentials>) -> Self {
        self.credentials = credentials;
        self
    }

    /// Dials the other masters with `tls` when given (`tls_connect`).
    pub fn with_tls(mut self, tls: Option<TlsClient>) -> Self {
        self.tls = tls;
        self
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let client = Channel::from_shared(format!("http://{}", node.addr))
            .map(|endpoint| {
                let endpoint = endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true);
                let channel = match &self.tls {
                    Some(tls) => endpoint.connect_with_connector_lazy(TlsConnector::new(tls)),
                    None => endpoint.connect_lazy(),
                };
                MasterRaftClient::new(channel)
                    .max_decoding_message_size(RAFT_MESSAGE_LIMIT)
                    .max_encoding_message_size(RAFT_MESSAGE_LIMIT)
            })
            .map_err(|e| {
                tracing::warn!(target, addr = %node.addr, error = %e, "invalid raft peer address");
                format!("invalid address {:?}: {e}", node.addr)
            });
        PeerClient {
            id: self.id,
            target,
            node: node.clone(),
            client,
            credentials: self.credentials.clone(),
        }
    }
}

/// openraft's client to one other master.
pub struct PeerClient {
    id: NodeId,
    target: NodeId,
    node: BasicNode,
    /// An address that does not parse fails every call as unreachable.
    client: Result<MasterRaftClient<Channel>, String>,
    credentials: Option<Credentials>,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: RPCTypes,
        request: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(client) => client,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::from(AnyError::error(e)))),
        };
        let data = serde_json::to_vec(request).map_err(|e| NetworkError::new(&e))?;
        let message = pb::RaftMessage { data };
        let message = match &self.credentials {
            Some(credentials) => sign(&credentials.principal, &credentials.keys, message)
                .map_err(|e| NetworkError::new(&e))?,
            None => tonic::Request::new(message),
        };
        let ttl = option.hard_ttl();
        let sent = tokio::time::timeout(ttl, async {
            match rpc {
                RPCTypes::AppendEntries => client.append_entries(message).await,
                RPCTypes::Vote => client.vote(message).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(message).await,
            }
        })
        .await;
        let answer = match sent {
            Ok(Ok(answer)) => answer.into_inner(),
            Ok(Err(status)) => return Err(status_error(status)),
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action: rpc,
                    id: self.id,
                    target: self.target,
                    timeout: ttl,
                }))
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&answer.data).map_err(|e| NetworkError::new(&e))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

/// A transport failure: a peer that is down, restarting or overloaded is unreachable (openraft
/// backs off before the next try); anything else is a network error.
fn status_error<E: std::error::Error>(status: tonic::Status) -> RPCError<NodeId, BasicNode, E> {
    use tonic::Code;
    match status.code() {
        Code::Unavailable
        | Code::Unknown
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted => RPCError::Unreachable(Unreachable::new(&status)),
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.call(RPCTypes::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RPCTypes::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.call(RPCTypes::Vote, &rpc, &option).await
    }
}

/// The `MasterRaft` service: other masters' Raft messages to the local node.
#[derive(Clone)]
pub struct RaftServer {
    raft: Raft<TypeConfig>,
    /// Takes messages only from `master:*` signers when the cluster has a secret.
    verifier: Option<Verifier>,
}

impl RaftServer {
    /// Serves messages to `raft`, checked by `verifier` when given.
    pub fn new(raft: Raft<TypeConfig>, verifier: Option<Verifier>) -> Self {
        RaftServer { raft, verifier }
    }

    /// Refuses a message not signed by a master.
    fn check(&self, request: &tonic::Request<pb::RaftMessage>) -> Result<(), tonic::Status> {
        let Some(verifier) = &self.verifier else {
            return Ok(());
        };
        match verifier.verify(request) {
            Ok(Principal::Master(_)) => Ok(()),
            Ok(other) => Err(tonic::Status::permission_denied(format!(
                "{other} may not send raft messages: only masters do"
            ))),
            Err(e) => Err(tonic::Status::new(e.code().grpc_code(), e.to_string())),
        }
    }

    /// The tonic service, with message limits that fit snapshot chunks.
    pub fn into_service(self) -> MasterRaftServer<Self> {
        MasterRaftServer::new(self)
            .max_decoding_message_size(RAFT_MESSAGE_LIMIT)
            .max_encoding_message_size(RAFT_MESSAGE_LIMIT)
    }
}

type Answer = Result<tonic::Response<pb::RaftMessage>, tonic::Status>;

#[tonic::async_trait]
impl MasterRaft for RaftServer {
    async fn append_entries(&self, request: tonic::Request<pb::RaftMessage>) -> Answer {
        self.check(&request)?;
        let rpc = decode(request)?;
        answer(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: tonic::Request<pb::RaftMessage>) -> Answer {
        self.check(&request)?;
        let rpc = decode(request)?;
        answer(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, request: tonic::Request<pb::RaftMessage>) -> Answer {
        self.check(&request)?;
        let rpc = decode(request)?;
        answer(&self.raft.install_snapshot(rpc).await)
    }
}

fn decode<T: DeserializeOwned>(
    request: tonic::Request<pb::RaftMessage>,
) -> Result<T, tonic::Status> {
    serde_json::from_slice(&request.into_inner().data)
        .map_err(|e| tonic::Status::invalid_argument(format!("raft message does not decode: {e}")))
}

fn answer<T: Serialize>(result: &T) -> Answer {
    serde_json::to_vec(result)
        .map(|data| tonic::Response::new(pb::RaftMessage { data }))
        .map_err(|e| tonic::Status::internal(format!("raft answer does not encode: {e}")))
}
