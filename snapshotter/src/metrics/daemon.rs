//! Counters of what the daemon did: layers pulled (and how), lazy pulls
//! that fell back to unpacking (and why), garbage collections.

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Label = [(&'static str, &'static str); 1];

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

impl Pulled {
    const ALL: [Pulled; 3] = [Pulled::Lazy, Pulled::Present, Pulled::Unpacked];

    fn label(self) -> &'static str {
        match self {
            Pulled::Lazy => "lazy",
            Pulled::Present => "present",
            Pulled::Unpacked => "unpacked",
        }
    }
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

impl Fallback {
    const ALL: [Fallback; 3] = [
        Fallback::IndexUnavailable,
        Fallback::IndexInvalid,
        Fallback::Local,
    ];

    fn label(self) -> &'static str {
        match self {
            Fallback::IndexUnavailable => "index_unavailable",
            Fallback::IndexInvalid => "index_invalid",
            Fallback::Local => "local",
        }
    }
}

/// Every label value exists from the start, at 0: a query of a rate or a
/// ratio then has series to work on before the first event.
static EVENTS: LazyLock<Events> = LazyLock::new(|| {
    let e = Events {
        layers_pulled: Family::default(),
        lazy_fallbacks: Family::default(),
        gc_runs: Counter::default(),
        gc_freed_bytes: Counter::default(),
    };
    for p in Pulled::ALL {
        drop(e.layers_pulled.get_or_create(&[("how", p.label())]));
    }
    for f in Fallback::ALL {
        drop(e.lazy_fallbacks.get_or_create(&[("reason", f.label())]));
    }
    e
});

pub fn events() -> &'static Events {
    &EVENTS
}

impl Events {
    pub fn pulled(&self, how: Pulled) {
        self.layers_pulled
            .get_or_create(&[("how", how.label())])
            .inc();
    }

    pub fn fell_back(&self, why: Fallback) {
        self.lazy_fallbacks
            .get_or_create(&[("reason", why.label())])
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
