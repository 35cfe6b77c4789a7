//! SlayerFS on a node: the containerd snapshotter and the `slayerfs` command.
//!
//! Owns everything that knows about images and containerd: image references
//! in skopeo's transport syntax ([`image_ref`]), OCI image layouts
//! ([`oci_layout`]), registries ([`registry`], [`transfer`]), converting an
//! image into blocks and layer indexes ([`convert`]), showing a converted
//! image ([`inspect`]) and mounting one ([`mount`], with its upper directory
//! in [`upper_dir`]), snapshot records
//! ([`records`], [`filters`]), the containerd snapshots service with its
//! lazy pull and garbage collection ([`service`]), and `slayerfs pull`
//! through containerd's API ([`pull`]).
//!
//! It does not know how blocks are encoded or how a layer becomes an index:
//! that is `chunkstore` and `layerfs`.

pub mod convert;
pub mod filters;
pub mod image_ref;
pub mod inspect;
pub mod mount;
pub mod oci_layout;
pub mod process;
pub mod progress;
pub mod pull;
pub mod records;
pub mod registry;
pub mod service;
pub mod store_args;
pub mod transfer;
pub mod upper_dir;
