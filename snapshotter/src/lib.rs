//! SlayerFS on a node: the containerd snapshotter and the `slayerfs` command.
//!
//! Owns everything that knows about images and containerd: image references
//! in skopeo's transport syntax ([`image_ref`]), OCI image layouts
//! ([`oci_layout`]), converting an image into blocks and layer indexes
//! ([`convert`]) and showing a converted image ([`inspect`]). Later: the
//! snapshots gRPC service, snapshot records, lazy pull, mount lifecycle.
//!
//! It does not know how blocks are encoded or how a layer becomes an index:
//! that is `chunkstore` and `layerfs`.

pub mod convert;
pub mod image_ref;
pub mod inspect;
pub mod oci_layout;
pub mod progress;
