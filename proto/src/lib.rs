//! Protobuf definitions of SlayerFS.
//!
//! Owns the wire formats: the versioned layer index (`index`) that
//! `slayerfs convert` publishes and nodes fetch, the traces of what starts
//! read first (`trace`), and the records kept in sled (`store`). It owns no
//! behaviour: encoding, compression and validation of these messages live
//! with the crates that use them (`layerfs`).

// The generated code refers to sibling packages by relative paths, so the
// package hierarchy is mirrored here and re-exported below.
#[allow(clippy::all)]
mod generated {
    pub mod slayerfs {
        pub mod index {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/slayerfs.index.v1.rs"));
            }
        }
        pub mod store {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/slayerfs.store.v1.rs"));
            }
        }
        pub mod trace {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/slayerfs.trace.v1.rs"));
            }
        }
    }
}

/// The layer index format, version 1.
pub mod index {
    pub use crate::generated::slayerfs::index::v1::*;

    /// The only index version this build reads and writes.
    pub const VERSION: u32 = 1;
    /// OCI media type of a converted layer (a zstd-compressed `LayerIndex`).
    /// It starts with `application/vnd.oci.image.layer.` because containerd
    /// hands a layer's annotations to the snapshotter (the lazy pull) only
    /// for descriptors it recognises as layers by that prefix; no `+zstd`
    /// suffix, so a containerd that does try to unpack it reports an
    /// unsupported media type instead of a broken tar.
    pub const MEDIA_TYPE: &str = "application/vnd.oci.image.layer.slayerfs.index.v1";
}

/// What a start of an image read first, version 1.
pub mod trace {
    pub use crate::generated::slayerfs::trace::v1::*;

    /// The only trace version this build reads and writes.
    pub const VERSION: u32 = 1;
}

/// Records kept in the sled database.
pub mod store {
    pub use crate::generated::slayerfs::store::v1::*;
}

pub use prost::{DecodeError, Message};
