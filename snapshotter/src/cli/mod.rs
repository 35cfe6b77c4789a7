//! The `slayerfs` command's own work: converting images ([`convert`]),
//! showing a converted one ([`inspect_report`], with [`inspect`] and
//! [`inspect_prefetch`]), mounting one ([`mount`], with its upper directory
//! in [`upper_dir`]), pulling through containerd's API ([`pull`]), the
//! closing summaries ([`summary`]) and progress on a terminal
//! ([`progress`]). Nothing of the daemon uses this module.

pub mod convert;
pub mod inspect;
pub mod inspect_prefetch;
pub mod inspect_report;
pub mod mount;
pub mod progress;
pub mod pull;
pub mod summary;
pub mod upper_dir;
