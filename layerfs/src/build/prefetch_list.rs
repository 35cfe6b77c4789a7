//! A prefetch list: the files a container reads first, in the order it
//! reads them, one path per line (as `slayerfs convert --prefetch-list`
//! takes it, written by hand or from a recorded start; a stored trace
//! becomes one through [`crate::trace::list_or_trace`]). Conversion packs
//! the small ones together into blocks of their own and records the list
//! in each layer's index, so a node can fetch them before they are asked
//! for. The list is input from outside: bounded, and a line that is not a
//! path is an error naming the line.

use std::collections::HashMap;

use super::path::{LayerPath, PathError};

/// The largest list file read.
pub const MAX_LIST_BYTES: usize = 64 << 20;
/// The most paths a list may name.
pub const MAX_PATHS: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("the prefetch list is larger than {MAX_LIST_BYTES} bytes")]
    TooLarge,
    #[error("the prefetch list names more than {MAX_PATHS} paths")]
    TooMany,
    #[error("line {line} of the prefetch list: {reason}")]
    Line { line: usize, reason: String },
}

/// Paths in access order; each path once, at its first place.
#[derive(Debug, Clone, Default)]
pub struct PrefetchList {
    order: HashMap<LayerPath, u32>,
}

impl PrefetchList {
    /// Reads a list: one path per line, relative to the image root or
    /// absolute (`/usr/bin/python3` and `usr/bin/python3` are one path);
    /// blank lines and lines starting with `#` are skipped.
    pub fn parse(text: &[u8]) -> Result<Self, ListError> {
        if text.len() > MAX_LIST_BYTES {
            return Err(ListError::TooLarge);
        }
        let mut order = HashMap::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) || line.starts_with(b"#") {
                continue;
            }
            let bad = |reason: String| ListError::Line {
                line: i + 1,
                reason,
            };
            let path = LayerPath::parse(line).map_err(|e: PathError| bad(e.to_string()))?;
            if path.is_root() {
                return Err(bad("names the root, not a file".into()));
            }
            if order.len() >= MAX_PATHS {
                return Err(ListError::TooMany);
            }
            let next = order.len() as u32;
            order.entry(path).or_insert(next);
        }
        Ok(PrefetchList { order })
    }

    /// `paths` in this order, each at its first place.
    pub fn from_paths(paths: impl IntoIterator<Item = LayerPath>) -> Self {
        let mut order = HashMap::new();
        for p in paths {
            let next = order.len() as u32;
            order.entry(p).or_insert(next);
        }
        PrefetchList { order }
    }

    /// Where `path` is in the list, if it is.
    pub fn position(&self, path: &LayerPath) -> Option<u32> {
        self.order.get(path).copied()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_in_order_and_bad_lines_are_named() {
        let list = PrefetchList::parse(
            b"# python's start\n/usr/bin/python3\n\nusr/lib/x.so\r\n./usr/bin/python3\n a b\n",
        )
        .unwrap();
        assert_eq!(list.len(), 3);
        let p = |s: &str| LayerPath::parse(s.as_bytes()).unwrap();
        assert_eq!(list.position(&p("usr/bin/python3")), Some(0));
        assert_eq!(list.position(&p("/usr/lib/x.so")), Some(1));
        assert_eq!(list.position(&p(" a b")), Some(2));
        assert_eq!(list.position(&p("etc")), None);
        let err = PrefetchList::parse(b"ok\nbad\0name\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = PrefetchList::parse(b"/\n").unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
        let long = vec![b'a'; 300];
        assert!(PrefetchList::parse(&long).is_err());
        assert!(matches!(
            PrefetchList::parse(&vec![b'a'; MAX_LIST_BYTES + 1]),
            Err(ListError::TooLarge)
        ));
    }
}
