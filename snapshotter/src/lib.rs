//! SlayerFS on a node: the containerd snapshotter and the `slayerfs` command.
//!
//! Owns everything that knows about images and containerd, in three parts
//! that depend one way:
//! - [`image`]: references, OCI layouts, registries and transfers, the
//!   converted image's media types and annotations, chain ids — what both
//!   sides use;
//! - [`daemon`]: the containerd snapshots service with its snapshot records
//!   and filters, lazy pull, garbage collection and mounts;
//! - [`cli`]: `slayerfs convert`, `inspect`, `mount` and `pull`.
//!
//! Beside them, [`fusemount`] serves a rootfs at a mount point for both,
//! [`store_args`] holds the store flags both binaries take, and [`process`]
//! their logging and runtime setup. The daemon uses nothing of the CLI.
//!
//! It does not know how blocks are encoded or how a layer becomes an index:
//! that is `chunkstore` and `layerfs`.

pub mod cli;
pub mod daemon;
pub mod fusemount;
pub mod image;
pub mod metrics;
pub mod process;
pub mod store_args;
