//! The limits on what requests can make the master hold (`master/src/config.rs`): each refusal
//! names its config key.

use sluice_protocol::ShuffleKey;

use super::{Shape, State};
use crate::config::MasterConfig;
use crate::error::{MasterError, MasterResult};

impl State {
    /// Checks a new shuffle against the per-shuffle, per-application and cluster limits.
    pub(super) fn admit(
        &self,
        key: &ShuffleKey,
        shape: Shape,
        config: &MasterConfig,
    ) -> MasterResult<()> {
        let too_large = |key_name: &'static str, what: &str, asked: u32, limit: u32| {
            Err(MasterError::Limit {
                key: key_name,
                retryable: false,
                message: format!("{what} {asked} is above {key_name} ({limit})"),
            })
        };
        if shape.num_maps > config.max_maps_per_shuffle {
            return too_large(
                "max_maps_per_shuffle",
                "num_maps",
                shape.num_maps,
                config.max_maps_per_shuffle,
            );
        }
        if shape.num_partitions > config.max_partitions_per_shuffle {
            return too_large(
                "max_partitions_per_shuffle",
                "num_partitions",
                shape.num_partitions,
                config.max_partitions_per_shuffle,
            );
        }
        let live = self
            .shuffles
            .iter()
            .map(|(k, e)| (k, e.shape.num_partitions))
            .chain(
                self.registering
                    .iter()
                    .map(|(k, r)| (k, r.shape.num_partitions)),
            );
        let (mut app_shuffles, mut app_partitions, mut shuffles, mut partitions) =
            (0u64, 0u64, 0u64, 0u64);
        for (k, num_partitions) in live {
            if k.app_id == key.app_id {
                app_shuffles += 1;
                app_partitions += u64::from(num_partitions);
            }
            shuffles += 1;
            partitions += u64::from(num_partitions);
        }
        let new = u64::from(shape.num_partitions);
        let app = &key.app_id;
        let quotas = [
            (
                "max_live_shuffles_per_app",
                app_shuffles + 1,
                u64::from(config.max_live_shuffles_per_app),
                format!("application {app} has {app_shuffles} registered shuffles"),
            ),
            (
                "max_live_partitions_per_app",
                app_partitions + new,
                config.max_live_partitions_per_app,
                format!("application {app} has {app_partitions} partitions registered, and shuffle {key} asks for {new} more"),
            ),
            (
                "max_live_shuffles",
                shuffles + 1,
                u64::from(config.max_live_shuffles),
                format!("the cluster has {shuffles} registered shuffles"),
            ),
            (
                "max_live_partitions",
                partitions + new,
                config.max_live_partitions,
                format!("the cluster has {partitions} partitions registered, and shuffle {key} asks for {new} more"),
            ),
        ];
        for (key_name, wanted, limit, situation) in quotas {
            if wanted > limit {
                return Err(MasterError::Limit {
                    key: key_name,
                    retryable: true,
                    message: format!(
                        "{situation}: that is above {key_name} ({limit}); unregister shuffles or retry later"
                    ),
                });
            }
        }
        Ok(())
    }
}
