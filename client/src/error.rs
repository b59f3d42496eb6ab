//! The client's error type.

use sluice_protocol::{ErrorCode, MasterCallError, ProtocolError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A master call failed: `addr` is the master that answered, or every master tried when
    /// none served the call in time.
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
    /// The shuffle was sealed while this attempt was pushing (its later batches were refused and
    /// dropped), yet the master names this attempt the map's winner: the map's output is
    /// incomplete. For Spark: the map task fails.
    #[error("shuffle {shuffle}: map {map_id} attempt {attempt} is the winning attempt, but the shuffle was sealed while it was pushing and part of its output was dropped")]
    IncompleteOutput {
        shuffle: String,
        map_id: u32,
        attempt: u32,
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
            ClientError::DataLost { .. } | ClientError::IncompleteOutput { .. } => {
                ErrorCode::DataLost
            }
            ClientError::Timeout(_) => ErrorCode::Timeout,
        }
    }

    /// Whether the master answered that it does not know the shuffle (it was never registered
    /// there, or was deleted): a placement cached for it is stale, and registering the shuffle
    /// again makes a new one.
    pub fn is_unknown_shuffle(&self) -> bool {
        matches!(self, ClientError::Master { status, .. } if status.code() == tonic::Code::NotFound)
    }

    /// Whether the data this error concerns is gone (as opposed to a caller or transient error).
    pub fn is_data_loss(&self) -> bool {
        matches!(
            self,
            ClientError::DataLost { .. } | ClientError::IncompleteOutput { .. }
        )
    }
}

impl From<MasterCallError> for ClientError {
    fn from(error: MasterCallError) -> Self {
        ClientError::Master {
            addr: error.addr,
            status: error.status,
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_master_saying_not_found_makes_a_shuffle_unknown() {
        let master = |status| ClientError::Master {
            addr: "m1:1".into(),
            status,
        };
        assert!(
            master(tonic::Status::not_found("shuffle a/0 is not registered")).is_unknown_shuffle()
        );
        assert!(!master(tonic::Status::unavailable("no leader")).is_unknown_shuffle());
        let worker = ClientError::Push {
            worker: "w:1".into(),
            source: ProtocolError::Remote {
                peer: "w:1".into(),
                code: ErrorCode::NotFound,
                message: "location not reserved".into(),
            },
        };
        assert!(!worker.is_unknown_shuffle());
    }
}
