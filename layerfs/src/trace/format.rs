//! The stored form of a trace (protobuf, then zstd; see `trace.proto`) and
//! decoding one from outside: every count and size bounded before it is
//! used, every path made safe, every range checked, so a hostile trace
//! can cost a prefetch, never a read or the daemon.

use std::collections::HashSet;
use std::io::Read;
use std::ops::Range;

use slayerfs_proto::trace as pb;
use slayerfs_proto::Message;

use super::ranges;
use crate::build::path::LayerPath;

/// The most files a trace may name.
pub const MAX_FILES: usize = 1 << 16;
/// The most ranges one file may have.
pub const MAX_RANGES: usize = 1 << 10;
/// The largest trace, uncompressed.
pub const MAX_PLAIN_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("trace is not a zstd stream or is truncated: {0}")]
    Decompress(std::io::Error),
    #[error("trace is larger than {MAX_PLAIN_BYTES} bytes uncompressed")]
    TooLarge,
    #[error("trace is not a protobuf message: {0}")]
    Decode(#[from] slayerfs_proto::DecodeError),
    #[error("trace version {0} is not one this build reads")]
    Version(u32),
    #[error("trace names more than {MAX_FILES} files")]
    TooManyFiles,
    #[error("file {index} of the trace: {reason}")]
    File { index: usize, reason: String },
}

/// One file of a trace: its path and the bytes read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedFile {
    pub path: LayerPath,
    /// Sorted, disjoint, none empty.
    pub ranges: Vec<Range<u64>>,
}

impl TracedFile {
    pub fn bytes(&self) -> u64 {
        ranges::bytes(&self.ranges)
    }
}

/// Files in the order they were first read; each path once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    pub files: Vec<TracedFile>,
}

impl Trace {
    /// Bytes read, over all files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(TracedFile::bytes).sum()
    }
}

/// The stored form of `trace`.
pub fn encode_trace(trace: &Trace) -> Vec<u8> {
    let msg = pb::Trace {
        version: pb::VERSION,
        files: trace
            .files
            .iter()
            .map(|f| pb::TracedFile {
                path: f.path.to_bytes(),
                ranges: f
                    .ranges
                    .iter()
                    .flat_map(|r| [r.start, r.end - r.start])
                    .collect(),
            })
            .collect(),
    };
    // Compressing bytes in memory cannot fail but for allocation.
    zstd::bulk::compress(&msg.encode_to_vec(), 3).unwrap_or_default()
}

/// A trace from outside, checked.
pub fn decode_trace(blob: &[u8]) -> Result<Trace, TraceError> {
    let decoder = zstd::stream::read::Decoder::new(blob).map_err(TraceError::Decompress)?;
    let mut plain = Vec::new();
    decoder
        .take(MAX_PLAIN_BYTES + 1)
        .read_to_end(&mut plain)
        .map_err(TraceError::Decompress)?;
    if plain.len() as u64 > MAX_PLAIN_BYTES {
        return Err(TraceError::TooLarge);
    }
    let msg = pb::Trace::decode(plain.as_slice())?;
    if msg.version != pb::VERSION {
        return Err(TraceError::Version(msg.version));
    }
    if msg.files.len() > MAX_FILES {
        return Err(TraceError::TooManyFiles);
    }
    let mut seen = HashSet::new();
    let mut files = Vec::with_capacity(msg.files.len());
    for (index, f) in msg.files.into_iter().enumerate() {
        let bad = |reason: String| TraceError::File { index, reason };
        // Stored paths are our own canonical spelling; anything else was
        // not written by us.
        let path = LayerPath::parse(&f.path).map_err(|e| bad(e.to_string()))?;
        if path.is_root() || path.to_bytes() != f.path {
            return Err(bad("the path is not a file's normalized path".into()));
        }
        if !seen.insert(path.clone()) {
            return Err(bad(format!("{path} is named twice")));
        }
        if f.ranges.len() % 2 != 0 || f.ranges.len() / 2 > MAX_RANGES {
            return Err(bad(format!(
                "{} range numbers (pairs, at most {MAX_RANGES} of them)",
                f.ranges.len()
            )));
        }
        let mut ranges: Vec<Range<u64>> = Vec::with_capacity(f.ranges.len() / 2);
        for pair in f.ranges.chunks_exact(2) {
            let (start, len) = (pair[0], pair[1]);
            let end = start
                .checked_add(len)
                .filter(|_| len > 0)
                .ok_or_else(|| bad(format!("range {start}+{len} is empty or overflows")))?;
            if ranges.last().is_some_and(|l| l.end >= start) {
                return Err(bad("ranges are not sorted and disjoint".into()));
            }
            ranges.push(start..end);
        }
        files.push(TracedFile { path, ranges });
    }
    Ok(Trace { files })
}

/// One trace of several: the files of the first in its order, then those
/// only later ones name, in theirs; each file's ranges united. At most
/// `max_files` files.
pub fn merge(traces: &[Trace], max_files: usize) -> Trace {
    let mut out: Vec<TracedFile> = Vec::new();
    let mut at = std::collections::HashMap::new();
    for t in traces {
        for f in &t.files {
            match at.get(&f.path) {
                Some(&i) => {
                    let into: &mut TracedFile = &mut out[i];
                    for r in &f.ranges {
                        ranges::add(&mut into.ranges, r.clone(), MAX_RANGES);
                    }
                }
                None if out.len() < max_files.min(MAX_FILES) => {
                    at.insert(f.path.clone(), out.len());
                    out.push(f.clone());
                }
                None => {}
            }
        }
    }
    Trace { files: out }
}

#[cfg(test)]
// A one-range Vec is what a trace of a single read is.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn file(p: &str, ranges: Vec<Range<u64>>) -> TracedFile {
        TracedFile {
            path: LayerPath::parse(p.as_bytes()).unwrap(),
            ranges,
        }
    }

    fn raw(files: Vec<pb::TracedFile>) -> Vec<u8> {
        let msg = pb::Trace {
            version: pb::VERSION,
            files,
        };
        zstd::bulk::compress(&msg.encode_to_vec(), 1).unwrap()
    }

    #[test]
    fn round_trips_and_merges_in_first_read_order() {
        let a = Trace {
            files: vec![
                file("usr/bin/python3", vec![0..4096, 8192..9000]),
                file("etc/ld.so.cache", vec![0..10]),
            ],
        };
        assert_eq!(decode_trace(&encode_trace(&a)).unwrap(), a);
        let b = Trace {
            files: vec![
                file("lib/x.so", vec![0..1]),
                file("usr/bin/python3", vec![4096..8192]),
            ],
        };
        let m = merge(&[a.clone(), b], 10);
        let paths: Vec<String> = m.files.iter().map(|f| f.path.to_string()).collect();
        assert_eq!(paths, ["usr/bin/python3", "etc/ld.so.cache", "lib/x.so"]);
        assert_eq!(m.files[0].ranges, vec![0..9000]);
        assert_eq!(merge(&[a], 1).files.len(), 1);
    }

    #[test]
    fn a_hostile_trace_is_an_error_that_says_what() {
        let f = |path: &str, ranges: Vec<u64>| pb::TracedFile {
            path: path.as_bytes().to_vec(),
            ranges,
        };
        let cases = [
            (raw(vec![f("../etc/x", vec![0, 1])]), "normalized"),
            (raw(vec![f("", vec![0, 1])]), "normalized"),
            (raw(vec![f("a", vec![0])]), "pairs"),
            (raw(vec![f("a", vec![u64::MAX, 2])]), "overflows"),
            (raw(vec![f("a", vec![5, 0])]), "empty"),
            (raw(vec![f("a", vec![10, 5, 12, 1])]), "sorted"),
            (raw(vec![f("a", vec![0, 1]), f("a", vec![0, 1])]), "twice"),
            (raw(vec![f("a\0b", vec![0, 1])]), "NUL"),
            (b"not zstd".to_vec(), "zstd"),
        ];
        for (blob, says) in cases {
            let e = decode_trace(&blob).unwrap_err().to_string();
            assert!(e.contains(says), "{e:?} does not say {says:?}");
        }
        let other = pb::Trace {
            version: 9,
            files: vec![],
        };
        let blob = zstd::bulk::compress(&other.encode_to_vec(), 1).unwrap();
        assert!(matches!(decode_trace(&blob), Err(TraceError::Version(9))));
        // A bomb: a small blob that inflates past the bound.
        let bomb = zstd::bulk::compress(&vec![0u8; (MAX_PLAIN_BYTES + 10) as usize], 19).unwrap();
        assert!(matches!(decode_trace(&bomb), Err(TraceError::TooLarge)));
    }
}
