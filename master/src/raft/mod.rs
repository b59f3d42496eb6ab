//! The master's replicated state, on openraft.
//!
//! - [`TypeConfig`]: the Raft types. Node ids are `u64`, a node is its gRPC address
//!   ([`openraft::BasicNode`]), a log entry's payload is a [`Command`] (a protobuf
//!   `MasterCommand`) and applying one answers a [`Reply`].
//! - [`Machine`]: what the state machine store applies commands to. The master's
//!   [`crate::state::State`] implements it; applying is pure (commands in, state out, no I/O).
//! - `log_store`: the log, vote and committed/purged ids in a redb file under `data_dir`, every
//!   change durable before it is acknowledged.
//! - `state_machine`: applies entries to the [`Machine`] and keeps the latest snapshot as one
//!   file (written, synced, renamed).
//! - `network`: the masters' Raft RPCs over gRPC (`MasterRaft`), both ends.
//! - `node`: a master's id, address and first membership, and starting its node.

mod log_store;
mod network;
pub mod node;
mod state_machine;

pub use log_store::{LogStore, LOG_FILE};
pub use network::{Network, PeerClient, RaftServer, RAFT_MESSAGE_LIMIT};
pub use state_machine::{SnapshotBuilder, StateMachineStore, SNAPSHOT_FILE};

use std::io::Cursor;

use openraft::BasicNode;
use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sluice_protocol::pb;

/// A master's Raft node id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The master's Raft types.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = NodeId,
        Node = BasicNode,
);

/// What the replicated state is: commands applied in log order, and a snapshot that restores
/// the same state.
pub trait Machine: Send + Sync + 'static {
    /// Applies one committed command. Never fails: a command that no longer fits the state
    /// (a shuffle removed meanwhile) changes nothing and says why in [`pb::MasterReply::error`].
    fn apply(&mut self, command: &pb::MasterCommand) -> pb::MasterReply;
    /// The replicated state, encoded (a protobuf `MasterSnapshot`).
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the replicated state by a snapshot's.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}

/// A log entry's payload: one [`pb::MasterCommand`]. Serialized as its protobuf encoding, so
/// the log and snapshots stay readable across versions that add fields.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Command(pub pb::MasterCommand);

/// What applying a [`Command`] answered.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply(pub pb::MasterReply);

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use pb::master_command::Command as C;
        let name = match &self.0.command {
            Some(C::ShufflePlaced(_)) => "ShufflePlaced",
            Some(C::EpochsPlaced(_)) => "EpochsPlaced",
            Some(C::MapEnded(_)) => "MapEnded",
            Some(C::ShuffleCommitted(_)) => "ShuffleCommitted",
            Some(C::ShuffleRemoved(_)) => "ShuffleRemoved",
            Some(C::AppRemoved(_)) => "AppRemoved",
            Some(C::AppRegistered(_)) => "AppRegistered",
            Some(C::WorkerMoved(_)) => "WorkerMoved",
            Some(C::CopiesMoved(_)) => "CopiesMoved",
            None => "Empty",
        };
        f.write_str(name)
    }
}

fn serialize_message<M: Message, S: Serializer>(m: &M, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(&m.encode_to_vec())
}

fn deserialize_message<'de, M: Message + Default, D: Deserializer<'de>>(
    d: D,
) -> Result<M, D::Error> {
    let bytes: serde_bytes_shim::Bytes = Deserialize::deserialize(d)?;
    M::decode(bytes.0.as_slice()).map_err(serde::de::Error::custom)
}

impl Serialize for Command {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_message(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_message(d).map(Command)
    }
}

impl Serialize for Reply {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_message(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Reply {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_message(d).map(Reply)
    }
}

/// Reads bytes whether the format wrote them as bytes or (self-describing text formats such
/// as JSON) as a sequence of numbers.
mod serde_bytes_shim {
    use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

    pub struct Bytes(pub Vec<u8>);

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                    Ok(Bytes(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
                    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(Bytes(out))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}
