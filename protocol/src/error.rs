//! Error codes shared by the control plane (gRPC status codes) and the data plane (frame error
//! codes), and the protocol crate's error type.

use crate::frame::FrameError;

/// The closed set of error codes. Every crate's error maps to one of these; they travel in
/// `ErrorHeader.code` on the data plane and become gRPC status codes on the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// A bug or an unexpected local failure.
    Internal = 1,
    /// The request is malformed or names something impossible.
    InvalidRequest = 2,
    /// The shuffle, partition location or worker is unknown.
    NotFound = 3,
    /// The worker is over its memory budget: push elsewhere or later.
    Busy = 4,
    /// A disk is full or failed.
    DiskFull = 5,
    /// The location was already committed (the stage ended); pushes to it are refused.
    Committed = 6,
    /// Data failed a checksum, or committed data is missing: the shuffle output is lost.
    DataLost = 7,
    /// The peer is unreachable or the connection broke.
    Unavailable = 8,
    /// The operation took longer than allowed.
    Timeout = 9,
    /// Missing, bad or stale credentials: no session, a bad frame tag, an unknown key, an unknown
    /// application, a replayed request. Not retryable: the same credentials fail again.
    Unauthenticated = 10,
    /// Authenticated, but the principal may not do this (e.g. an application touching another
    /// application's shuffle, or a non-master sending control frames). Not retryable.
    PermissionDenied = 11,
}

impl ErrorCode {
    /// Decodes a code received from a peer; unknown codes become [`ErrorCode::Internal`].
    pub fn from_u32(code: u32) -> ErrorCode {
        match code {
            2 => ErrorCode::InvalidRequest,
            3 => ErrorCode::NotFound,
            4 => ErrorCode::Busy,
            5 => ErrorCode::DiskFull,
            6 => ErrorCode::Committed,
            7 => ErrorCode::DataLost,
            8 => ErrorCode::Unavailable,
            9 => ErrorCode::Timeout,
            10 => ErrorCode::Unauthenticated,
            11 => ErrorCode::PermissionDenied,
            _ => ErrorCode::Internal,
        }
    }

    /// Whether retrying the same operation later (or elsewhere) may succeed. This is the one
    /// place that decides retryability.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Busy | ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::DiskFull
        )
    }

    /// The gRPC status code for this error.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::Internal => tonic::Code::Internal,
            ErrorCode::InvalidRequest => tonic::Code::InvalidArgument,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::Busy | ErrorCode::DiskFull => tonic::Code::ResourceExhausted,
            ErrorCode::Committed => tonic::Code::FailedPrecondition,
            ErrorCode::DataLost => tonic::Code::DataLoss,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Timeout => tonic::Code::DeadlineExceeded,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
        }
    }

    /// The error code for a gRPC status received from the master.
    pub fn from_grpc(code: tonic::Code) -> ErrorCode {
        match code {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorCode::InvalidRequest,
            tonic::Code::NotFound => ErrorCode::NotFound,
            tonic::Code::ResourceExhausted => ErrorCode::Busy,
            tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => ErrorCode::Committed,
            tonic::Code::DataLoss => ErrorCode::DataLost,
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Aborted => {
                ErrorCode::Unavailable
            }
            tonic::Code::DeadlineExceeded => ErrorCode::Timeout,
            tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
            tonic::Code::PermissionDenied => ErrorCode::PermissionDenied,
            _ => ErrorCode::Internal,
        }
    }
}

/// Errors of the wire protocol: framing, transport and errors reported by the peer.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed frame: {0}")]
    Frame(#[from] FrameError),
    #[error("malformed {what} header: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("connection to {peer} failed: {source}")]
    Io {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection to {peer} closed")]
    Closed { peer: String },
    #[error("request to {peer} timed out after {millis} ms")]
    Timeout { peer: String, millis: u64 },
    #[error("{peer} answered {code:?}: {message}")]
    Remote {
        peer: String,
        code: ErrorCode,
        message: String,
    },
    #[error("authenticating the connection to {peer} failed: {source}")]
    Auth {
        peer: String,
        #[source]
        source: crate::auth::AuthError,
    },
    /// The TLS handshake was refused (an untrusted or misnamed certificate, no common protocol):
    /// the same connection fails again.
    #[error("connection to {peer} refused at TLS: {source}")]
    Tls {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{peer} answered with an unexpected {kind:?} frame")]
    UnexpectedResponse {
        peer: String,
        kind: crate::frame::MessageType,
    },
}

impl ProtocolError {
    /// The code this error maps to.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::Frame(_) | ProtocolError::Decode { .. } => ErrorCode::InvalidRequest,
            ProtocolError::Io { .. } | ProtocolError::Closed { .. } => ErrorCode::Unavailable,
            ProtocolError::Timeout { .. } => ErrorCode::Timeout,
            ProtocolError::Remote { code, .. } => *code,
            ProtocolError::UnexpectedResponse { .. } => ErrorCode::Internal,
            ProtocolError::Auth { source, .. } => source.code(),
            ProtocolError::Tls { .. } => ErrorCode::Unauthenticated,
        }
    }
}

pub type ProtocolResult<T> = Result<T, ProtocolError>;

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; 11] = [
        ErrorCode::Internal,
        ErrorCode::InvalidRequest,
        ErrorCode::NotFound,
        ErrorCode::Busy,
        ErrorCode::DiskFull,
        ErrorCode::Committed,
        ErrorCode::DataLost,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
    ];

    #[test]
    fn every_code_survives_the_wire() {
        for code in ALL {
            assert_eq!(ErrorCode::from_u32(code as u32), code);
        }
        assert_eq!(ErrorCode::from_u32(0), ErrorCode::Internal);
        assert_eq!(ErrorCode::from_u32(12), ErrorCode::Internal);
    }

    #[test]
    fn auth_codes_map_to_their_grpc_codes_both_ways_and_are_not_retryable() {
        for (code, grpc) in [
            (ErrorCode::Unauthenticated, tonic::Code::Unauthenticated),
            (ErrorCode::PermissionDenied, tonic::Code::PermissionDenied),
        ] {
            assert_eq!(code.grpc_code(), grpc);
            assert_eq!(ErrorCode::from_grpc(grpc), code);
            assert!(!code.is_retryable());
        }
    }
}
