//! The master's error type and its mapping to gRPC statuses.

use sluice_protocol::{ErrorCode, ProtocolError};

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("no worker can take partitions: {0}")]
    NoWorkers(String),
    #[error("worker {worker}: {source}")]
    Worker {
        worker: String,
        #[source]
        source: ProtocolError,
    },
    #[error("worker {0} was declared lost")]
    WorkerLost(String),
    /// A configured limit refused the request; the message names the config key.
    #[error("{message}")]
    Limit {
        key: &'static str,
        /// Whether the same request may pass later (a quota of live things), or never (a size).
        retryable: bool,
        message: String,
    },
    #[error("{0}")]
    WorkerIdTaken(String),
    #[error("shuffle {0} is already committed")]
    Committed(String),
    #[error("the master is shutting down")]
    ShuttingDown,
    /// Only the leader serves this; `leader` is its address when known.
    #[error("master {id} is not the leader{}", match leader { Some(l) => format!("; the leader is {l}"), None => "; no leader is elected yet".into() })]
    NotLeader { id: u64, leader: Option<String> },
    /// The replicated log could not take the change (lost leadership meanwhile, or storage).
    #[error("the master's replicated log refused the change: {0}")]
    Raft(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl MasterError {
    pub fn code(&self) -> ErrorCode {
        match self {
            MasterError::Config(_)
            | MasterError::InvalidRequest(_)
            | MasterError::WorkerIdTaken(_) => ErrorCode::InvalidRequest,
            // ResourceExhausted: retry later, once shuffles were unregistered.
            MasterError::Limit {
                retryable: true, ..
            } => ErrorCode::Busy,
            MasterError::Limit { .. } => ErrorCode::InvalidRequest,
            MasterError::NotFound(_) => ErrorCode::NotFound,
            MasterError::Committed(_) => ErrorCode::Committed,
            MasterError::NoWorkers(_)
            | MasterError::ShuttingDown
            | MasterError::WorkerLost(_)
            | MasterError::NotLeader { .. }
            | MasterError::Raft(_) => ErrorCode::Unavailable,
            MasterError::Worker { source, .. } => source.code(),
            MasterError::Io(_) | MasterError::Transport(_) => ErrorCode::Internal,
        }
    }
}

/// The gRPC metadata key naming the leader's address in a not-the-leader answer.
pub const LEADER_METADATA: &str = "sluice-leader";

impl From<MasterError> for tonic::Status {
    fn from(error: MasterError) -> Self {
        let mut status = tonic::Status::new(error.code().grpc_code(), error.to_string());
        if let MasterError::NotLeader {
            leader: Some(leader),
            ..
        } = &error
        {
            if let Ok(value) = leader.parse() {
                status.metadata_mut().insert(LEADER_METADATA, value);
            }
        }
        status
    }
}

pub type MasterResult<T> = Result<T, MasterError>;
