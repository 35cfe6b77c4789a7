//! SlayerFS layers.
//!
//! Owns the inode/slice model of a layer, built and served:
//! - building: a layer tar stream becomes blocks plus an index
//!   ([`build`]); the index format, with the checks that make an index from
//!   outside a [`index::ValidIndex`] ([`index`]);
//! - keeping: the sled schema of imported layers, merged views of layer
//!   chains and upper layers, in one place ([`store`]);
//! - serving: slices at the bottom ([`slice`](mod@slice)), reading a file's bytes
//!   through them ([`read`]), the filesystem over a merged view and an
//!   upper ([`rootfs`]), and the FUSE protocol on top of it ([`fuse`]);
//! - learning: what a start reads first, recorded, stored and turned back
//!   into blocks to fetch ([`trace`]).
//!
//! It does not know about containerd, registries or OCI manifests: a layer
//! arrives as a byte stream and leaves as an index and blocks. Block encoding
//! and storage belong to `chunkstore`.

pub mod build;
pub mod fuse;
#[cfg(any(test, feature = "test-support"))]
pub mod fuzzing;
pub mod geometry;
pub mod index;
pub mod metrics;
pub mod read;
pub mod rootfs;
pub mod slice;
pub mod store;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod trace;

pub use geometry::{Ino, BLOCK_SIZE, CHUNK_SIZE};
