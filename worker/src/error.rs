//! The worker's error type.

use sluice_protocol::{ErrorCode, ProtocolError};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0} is already committed")]
    Committed(String),
    #[error("over the memory budget ({used} of {budget} bytes in use)")]
    Busy { used: u64, budget: u64 },
    #[error("disk failure on {location}: {reason}")]
    Disk { location: String, reason: String },
    #[error("{location} has reached its size cap of {cap} bytes")]
    PartitionFull { location: String, cap: u64 },
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A connection limit refused a connection; retry later.
    #[error("{0}")]
    TooManyConnections(String),
    #[error("cannot reach the master: {0}")]
    Master(String),
    /// The worker is decommissioning: it takes no pushes, so writers move elsewhere at once.
    #[error("worker {0} is leaving: push elsewhere")]
    Leaving(String),
}

impl WorkerError {
    pub fn code(&self) -> ErrorCode {
        match self {
            WorkerError::Config(_) | WorkerError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            WorkerError::Io { .. } => ErrorCode::Internal,
            WorkerError::Protocol(e) => e.code(),
            WorkerError::NotFound(_) => ErrorCode::NotFound,
            WorkerError::Committed(_) => ErrorCode::Committed,
            WorkerError::Busy { .. } | WorkerError::TooManyConnections(_) => ErrorCode::Busy,
            WorkerError::Disk { .. } | WorkerError::PartitionFull { .. } => ErrorCode::DiskFull,
            WorkerError::Master(_) | WorkerError::Leaving(_) => ErrorCode::Unavailable,
            WorkerError::PermissionDenied(_) => ErrorCode::PermissionDenied,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> WorkerError {
        WorkerError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type WorkerResult<T> = Result<T, WorkerError>;
