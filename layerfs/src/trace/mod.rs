//! Traces: what a start of an image read first, file by file and range by
//! range, in the order the files were first read. A mount records one
//! ([`Recorder`], by merged inode number), a trace names its inodes by path
//! ([`name_reads`]) so that it means the same on any node, is stored
//! ([`format`]), merged with other starts' and, on another node, turned
//! back into the blocks, or parts of blocks, to fetch before a container
//! asks for them ([`blocks_to_fetch`]), or read as a build-time prefetch list
//! ([`list_or_trace`]). Where traces are kept and when prefetching runs
//! is the snapshotter's business.

pub mod format;
mod list;
mod plan;
mod ranges;
mod recorder;
mod resolve;

pub use format::{decode_trace, encode_trace, merge, Trace, TraceError, TracedFile};
pub use list::{list_or_trace, ListOrTraceError};
pub use plan::{blocks_to_fetch, PartFetch, Planned};
pub use recorder::{Recorder, RecorderLimits};
pub use resolve::name_reads;
