//! Id types and their conversions to and from the wire messages.

use std::fmt;
use std::sync::Arc;

use crate::pb;

/// One shuffle of one application.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShuffleKey {
    pub app_id: Arc<str>,
    pub shuffle_id: u32,
}

impl ShuffleKey {
    pub fn new(app_id: impl Into<Arc<str>>, shuffle_id: u32) -> ShuffleKey {
        ShuffleKey {
            app_id: app_id.into(),
            shuffle_id,
        }
    }

    /// Converts a wire key, rejecting an empty or path-unsafe application id (ids become
    /// directory names on workers).
    pub fn from_pb(key: Option<&pb::ShuffleKey>) -> Result<ShuffleKey, String> {
        let key = key.ok_or_else(|| "missing shuffle key".to_string())?;
        validate_app_id(&key.app_id)?;
        Ok(ShuffleKey::new(key.app_id.as_str(), key.shuffle_id))
    }

    pub fn to_pb(&self) -> pb::ShuffleKey {
        pb::ShuffleKey {
            app_id: self.app_id.to_string(),
            shuffle_id: self.shuffle_id,
        }
    }
}

impl fmt::Display for ShuffleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app_id, self.shuffle_id)
    }
}

/// Checks that an application id is usable as a directory name.
pub fn validate_app_id(app_id: &str) -> Result<(), String> {
    let ok = !app_id.is_empty()
        && app_id.len() <= 255
        && app_id != "."
        && app_id != ".."
        && app_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid application id {app_id:?}: use 1 to 255 characters of [A-Za-z0-9._-]"
        ))
    }
}

/// A worker's stable id (a StatefulSet pod name, or one given in its config).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub Arc<str>);

impl WorkerId {
    pub fn new(id: impl Into<Arc<str>>) -> WorkerId {
        WorkerId(id.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl pb::WorkerInfo {
    /// `host:port` of the worker's push server.
    pub fn push_addr(&self) -> String {
        format!("{}:{}", self.host, self.push_port)
    }
    /// `host:port` of the worker's fetch server.
    pub fn fetch_addr(&self) -> String {
        format!("{}:{}", self.host, self.fetch_port)
    }
    /// `host:port` of the worker's HTTP admin port, when it has one.
    pub fn admin_addr(&self) -> Option<String> {
        (self.admin_port != 0).then(|| format!("{}:{}", self.host, self.admin_port))
    }
}

impl pb::BatchStats {
    /// Adds one batch of `bytes` with checksum `crc`.
    pub fn add(&mut self, bytes: u64, crc: u32) {
        self.bytes += bytes;
        self.batches += 1;
        self.checksum = self.checksum.wrapping_add(u64::from(crc));
    }

    /// Adds another set of totals.
    pub fn merge(&mut self, other: &pb::BatchStats) {
        self.bytes += other.bytes;
        self.batches += other.batches;
        self.checksum = self.checksum.wrapping_add(other.checksum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_that_could_escape_a_directory_are_rejected() {
        for bad in ["", ".", "..", "a/b", "../x", "a b", "x\0"] {
            assert!(validate_app_id(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["app-1", "local-1700000000000", "application_1_0001", "a.b"] {
            assert!(validate_app_id(good).is_ok(), "{good:?} rejected");
        }
    }
}
