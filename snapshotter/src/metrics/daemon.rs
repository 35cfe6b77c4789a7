//! Counters of what the daemon did: layers pulled (and how), lazy pulls
//! that fell back to unpacking (and why), garbage collections.

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Label = [(&'static str, &'static str); 1];

#[derive(Default)]
pub struct Events {
    layers_pulled: Family<Label, Counter>,
    lazy_fallbacks: Family<Label, Counter>,
    gc_runs: Counter,
    gc_freed_bytes: Counter,
}

/// How a layer came to be here.
#[derive(Clone, Copy, Debug)]
pub enum Pulled {
    /// From its index, its data left in the store.
    Lazy,
    /// Asked for lazily but there already (another image, an earlier pull).
    Present,
    /// Unpacked by containerd through our mounts and committed.
    Unpacked,
}

/// Why a lazy pull fell back to an ordinary Prepare.
#[derive(Clone, Copy, Debug)]
pub enum Fallback {
    /// The index could not be fetched (store and registry).
    IndexUnavailable,
    /// The index was fetched but did not decode or validate.
    IndexInvalid,
    /// Recording the layer failed here.
    Local,
}

static EVENTS: LazyLock<Events> = LazyLock::new(Events::default);

pub fn events() -> &'static Events {
    &EVENTS
}

impl Events {
    pub fn pulled(&self, how: Pulled) {
        let how = match how {
            Pulled::Lazy => "lazy",
            Pulled::Present => "present",
            Pulled::Unpacked => "unpacked",
        };
        self.layers_pulled.get_or_create(&[("how", how)]).inc();
    }

    pub fn fell_back(&self, why: Fallback) {
        let reason = match why {
            Fallback::IndexUnavailable => "index_unavailable",
            Fallback::IndexInvalid => "index_invalid",
            Fallback::Local => "local",
        };
        self.lazy_fallbacks
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub fn collected(&self, freed_bytes: u64) {
        self.gc_runs.inc();
        self.gc_freed_bytes.inc_by(freed_bytes);
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "slayerfs_layers_pulled",
            "Layers that came to be here: lazily from their index, present already, or unpacked through our mounts",
            self.layers_pulled.clone(),
        );
        registry.register(
            "slayerfs_lazy_pull_fallbacks",
            "Lazy pulls that fell back to an ordinary Prepare (the layer is then unpacked), by reason",
            self.lazy_fallbacks.clone(),
        );
        registry.register(
            "slayerfs_gc_runs",
            "Garbage collections run",
            self.gc_runs.clone(),
        );
        registry.register(
            "slayerfs_gc_freed_bytes",
            "Disk space freed by garbage collection",
            self.gc_freed_bytes.clone(),
        );
    }
}
