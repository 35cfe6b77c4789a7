//! The daemon's metrics and health, for operators: what its snapshots,
//! pulls, collections, caches and block store did, with the FUSE metrics
//! of `layerfs`, in one Prometheus registry; served over HTTP by
//! [`server`]. Events are counted where they happen ([`daemon`]); levels
//! (cache bytes, snapshots, process figures) are read at each scrape.
//! Labels stay few and bounded: never a file, block or snapshot name.

pub mod daemon;
pub mod levels;
pub mod server;
pub mod store;

use std::sync::Arc;

use prometheus_client::registry::Registry;

pub use levels::Levels;

/// Every metric of this process, ready to encode.
pub fn registry(levels: Levels) -> Registry {
    let mut registry = Registry::default();
    slayerfs_layerfs::metrics::fuse().register(&mut registry);
    daemon::events().register(&mut registry);
    store::metrics().register(&mut registry);
    registry.register_collector(Box::new(Arc::new(levels)));
    registry
}
