//! Building layers: a layer tar stream (plain, gzip or zstd) read once into
//! blocks and a tree ([`import`], with names made safe by [`path`],
//! extension headers bounded by [`extensions`], the
//! tree's rules in [`tree`], file data packed into blocks, hashed on the
//! way by [`hash_tee`]), assembled into an index ([`assemble`]), and one
//! layer end to end into the store ([`layer`]). Serving layers is the rest
//! of the crate's.

pub mod assemble;
pub mod extensions;
pub mod hash_tee;
pub mod import;
pub mod layer;
mod packer;
pub mod path;
pub mod prefetch_list;
pub mod tree;

pub use layer::{convert_layer, convert_layer_with, BuildError, ConvertedLayer, Expected};
pub use prefetch_list::PrefetchList;
