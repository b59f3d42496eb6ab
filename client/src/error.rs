//! The client's error type.

use sluice_protocol::{ErrorCode, ProtocolError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("master {addr}: {status}")]
    Master { addr: String, status: tonic::Status },
    #[error("push to {worker} failed: {source}")]
    Push {
        worker: String,
        #[source]
        source: ProtocolError,
    },
    #[error("fetch from {worker} failed: {source}")]
    Fetch {
        worker: String,
        #[source]
        source: ProtocolError,
    },
    /// Shuffle output is missing, corrupt or short. For Spark: a fetch failure, so the map stage
    /// runs again.
    #[error("data lost in shuffle {shuffle} partition {partition}: {reason}")]
    DataLost {
        shuffle: String,
        partition: u32,
        reason: String,
    },
    #[error("timed out: {0}")]
    Timeout(String),
}

impl ClientError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::InvalidArgument(_) => ErrorCode::InvalidRequest,
            ClientError::Master { status, .. } => ErrorCode::from_grpc(status.code()),
            ClientError::Push { source, .. } | ClientError::Fetch { source, .. } => source.code(),
            ClientError::DataLost { .. } => ErrorCode::DataLost,
            ClientError::Timeout(_) => ErrorCode::Timeout,
        }
    }

    /// Whether the data this error concerns is gone (as opposed to a caller or transient error).
    pub fn is_data_loss(&self) -> bool {
        matches!(self, ClientError::DataLost { .. })
    }
}

pub type ClientResult<T> = Result<T, ClientError>;
