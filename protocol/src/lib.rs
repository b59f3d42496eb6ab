//! The Sluice wire protocol, shared by every other crate.
//!
//! - [`pb`]: messages and the `Master` gRPC service generated from `proto/sluice.proto`
//!   (control plane). Generated code lives here only.
//! - [`frame`]: the data-plane frame codec. A frame is a fixed 28-byte head, a protobuf header and
//!   a raw body. [`frame::check`] validates a head cheaply before [`frame::parse`] splits a frame
//!   out of the read buffer without copying the body.
//! - [`fetch`]: the batched reads of the fetch port (`OpenStreams`, `FetchChunks`): limits, and
//!   [`fetch::split_chunks`], which cuts a `ChunksData` body back into its chunks.
//! - [`connection`]: async frame reader and writer over any byte stream.
//! - [`rpc`]: a multiplexed request/response client over one connection (request ids), used for
//!   pushes, fetches and the master's calls into workers.
//! - [`batch`]: the batch format shared by writers, workers' files and readers: a 32-byte head
//!   (partition, map, attempt, batch id, lengths, codec, CRC32) and the (LZ4-compressed)
//!   payload.
//! - [`auth`]: cluster secrets ([`auth::Keyring`]), principals, and the per-connection session
//!   whose [`auth::Sealer`] and [`auth::Opener`] tag and check frames flagged
//!   [`frame::FLAG_AUTH`].
//! - [`error`]: [`ErrorCode`], the small closed set of codes every error maps to, and
//!   [`ProtocolError`].
//! - [`duration`]: serde helpers for human-readable durations in configuration files.
//! - [`ids`]: id types ([`ShuffleKey`], [`WorkerId`]) and conversions.
//! - [`tls`]: TLS under every port (rustls, `ring`): [`tls::TlsServer`] (certificate reloaded
//!   when its files change), [`tls::TlsClient`], an accept stream and a tonic connector;
//!   [`transport`]: [`transport::Stream`], plain TCP or TLS, split into halves for the frame
//!   reader and writer.
//! - [`master_channel`]: [`MasterChannel`], calls to whichever of several masters leads
//!   (redirects, failover, retries within a bound), over one lazily connected channel each.
//!
//! Data flows: a client encodes records into batches ([`batch::encode`]), groups batches per
//! worker into a push frame ([`frame::MessageType::PushMergedData`]) and sends it with
//! [`rpc::RpcClient::call`]. The worker's connection loop reads frames with
//! [`connection::FrameReader`] and answers on the same connection. Readers fetch chunks of whole
//! batches and decode them with [`batch::BatchIter`].

pub mod auth;
pub mod batch;
pub mod config_check;
pub mod connection;
pub mod duration;
pub mod error;
pub mod fetch;
pub mod frame;
pub mod ids;
pub mod master_channel;
pub mod rpc;
pub mod tls;
pub mod transport;

/// Generated protobuf messages and gRPC stubs.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("sluice.v1");
}

pub use error::{ErrorCode, ProtocolError, ProtocolResult};
pub use ids::{ShuffleKey, WorkerId};
pub use master_channel::{MasterCallError, MasterChannel, MasterOptions};
