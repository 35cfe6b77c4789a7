//! SlayerFS layers.
//!
//! Owns the inode/slice model of a layer: importing an OCI layer tar stream
//! into blocks plus a layer tree ([`import`]), the versioned index codec with
//! its validation ([`index`]), the sled store that the read path works from
//! ([`db`]), the overlay merge of a layer chain ([`merge`]), reading a
//! file's bytes back through its slices ([`read`]), the writable upper layer
//! ([`upper`]), the filesystem over a merged view and an upper
//! ([`rootfs`]), and the FUSE protocol on top of it ([`fuse`]).
//!
//! It does not know about containerd, registries or OCI manifests: a layer
//! arrives as a byte stream and leaves as an index and blocks. Block encoding
//! and storage belong to `chunkstore`.

pub mod convert;
pub mod db;
pub mod fuse;
pub mod geometry;
pub mod import;
pub mod index;
pub mod merge;
mod packer;
pub mod path;
mod pipe;
pub mod read;
pub mod rootfs;
pub mod tree;
pub mod upper;

pub use geometry::{Ino, BLOCK_SIZE, CHUNK_SIZE};
