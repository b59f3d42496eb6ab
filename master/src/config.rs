//! Master configuration. Every key is documented where it is declared; unknown keys are errors.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterConfig {
    /// Address the gRPC server binds to.
    pub listen: String,
    /// A worker silent for this long is lost: it gets no new partitions.
    #[serde(with = "duration")]
    pub worker_timeout: Duration,
    /// An application with no heartbeat for this long is expired and its data deleted.
    #[serde(with = "duration")]
    pub app_timeout: Duration,
    /// Limit for one call into a worker (reserve, destroy).
    #[serde(with = "duration")]
    pub worker_rpc_timeout: Duration,
    /// Limit for a worker to commit a shuffle's files.
    #[serde(with = "duration")]
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

/// Durations as human-readable strings (`"30s"`, `"500ms"`).
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}
