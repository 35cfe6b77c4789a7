//! What the daemon hands the metrics to read at each scrape: its block
//! cache, and its snapshots counted by kind.

use std::sync::Arc;

use slayerfs_proto::store::SnapshotKind;

use super::SlayerSnapshotter;
use crate::metrics::Levels;

impl SlayerSnapshotter {
    pub fn metric_levels(self: &Arc<Self>) -> Levels {
        let this = self.clone();
        Levels {
            cache: self.cache.clone(),
            snapshots: Box::new(move || {
                let Ok(all) = this.records.all() else {
                    return Vec::new();
                };
                let mut counts = [("active", 0), ("committed", 0), ("view", 0)];
                for s in all {
                    let i = match s.kind {
                        SnapshotKind::Active => 0,
                        SnapshotKind::Committed => 1,
                        SnapshotKind::View => 2,
                        _ => continue,
                    };
                    counts[i].1 += 1;
                }
                counts.to_vec()
            }),
        }
    }
}
