//! A stored trace as a build-time prefetch list: its files, in the order
//! they were first read (`slayerfs convert --prefetch-list` takes either).

use super::format::{decode_trace, TraceError};
use crate::build::prefetch_list::{ListError, PrefetchList};

#[derive(Debug, thiserror::Error)]
pub enum ListOrTraceError {
    #[error(transparent)]
    List(#[from] ListError),
    #[error("the prefetch list is a trace, and {0}")]
    Trace(#[from] TraceError),
}

/// How every zstd frame starts; no text line does.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A list as [`PrefetchList::parse`] reads it, or a stored trace (a zstd
/// stream).
pub fn list_or_trace(bytes: &[u8]) -> Result<PrefetchList, ListOrTraceError> {
    if !bytes.starts_with(&ZSTD_MAGIC) {
        return Ok(PrefetchList::parse(bytes)?);
    }
    let trace = decode_trace(bytes)?;
    Ok(PrefetchList::from_paths(
        trace.files.into_iter().map(|f| f.path),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::path::LayerPath;
    use crate::trace::{encode_trace, Trace, TracedFile};

    #[test]
    fn a_stored_trace_is_a_list_of_its_files_in_order() {
        let p = |s: &str| LayerPath::parse(s.as_bytes()).unwrap();
        let file = |s: &str| TracedFile {
            path: p(s),
            ranges: vec![0..10, 20..30],
        };
        let blob = encode_trace(&Trace {
            files: vec![file("usr/bin/python3"), file("etc/ld.so.cache")],
        });
        let list = list_or_trace(&blob).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list.position(&p("usr/bin/python3")), Some(0));
        assert_eq!(list.position(&p("etc/ld.so.cache")), Some(1));
        // Text is still text; a broken trace is named as one.
        let text = list_or_trace(b"/a\n").unwrap();
        assert_eq!(text.position(&p("a")), Some(0));
        let err = list_or_trace(&blob[..blob.len() / 2]).unwrap_err();
        assert!(err.to_string().contains("is a trace"), "{err}");
    }
}
