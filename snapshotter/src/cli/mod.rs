//! The `slayerfs` command's own work: converting images ([`convert`]),
//! showing a converted one ([`inspect`]), mounting one ([`mount`], with its
//! upper directory in [`upper_dir`]), pulling through containerd's API
//! ([`pull`]), and progress on a terminal ([`progress`]). Nothing of the
//! daemon uses this module.

pub mod convert;
pub mod inspect;
pub mod inspect_prefetch;
pub mod mount;
pub mod progress;
pub mod pull;
pub mod upper_dir;
