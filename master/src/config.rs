//! Master configuration. Every key is documented where it is declared; unknown keys are errors.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterConfig {
    /// Address the gRPC server binds to.
    pub listen: String,
    /// A worker silent for this long is lost: it gets no new partitions.
    #[serde(with = "sluice_protocol::duration")]
    pub worker_timeout: Duration,
    /// An application with no heartbeat for this long is expired and its data deleted.
    #[serde(with = "sluice_protocol::duration")]
    pub app_timeout: Duration,
    /// Limit for one call into a worker (reserve, destroy).
    #[serde(with = "sluice_protocol::duration")]
    pub worker_rpc_timeout: Duration,
    /// Limit for a worker to commit a shuffle's files.
    #[serde(with = "sluice_protocol::duration")]
    pub commit_timeout: Duration,
    /// Largest number of partitions a shuffle may have.
    pub max_partitions: u32,
    /// Largest number of maps a shuffle may have.
    pub max_maps: u32,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            listen: "0.0.0.0:9097".into(),
            worker_timeout: Duration::from_secs(30),
            app_timeout: Duration::from_secs(300),
            worker_rpc_timeout: Duration::from_secs(30),
            commit_timeout: Duration::from_secs(600),
            max_partitions: 1_000_000,
            max_maps: 10_000_000,
        }
    }
}

impl MasterConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("worker_timeout", self.worker_timeout),
            ("app_timeout", self.app_timeout),
            ("worker_rpc_timeout", self.worker_rpc_timeout),
            ("commit_timeout", self.commit_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("{key}: must be above 0"));
            }
        }
        Ok(())
    }
}
