//! Names of tar entries, made safe: relative to the layer root, no `.` or
//! `..` components, never climbing above the root. As containerd reads
//! them: an absolute name is taken from the layer root, and `..` at the
//! root stays there.

use std::fmt;

/// A normalized path inside a layer, as raw bytes (names need not be UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LayerPath(Vec<Vec<u8>>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("a name contains a NUL byte")]
    Nul,
    #[error("a name is longer than {MAX_NAME_LEN} bytes")]
    NameTooLong,
}

pub use crate::geometry::MAX_NAME_LEN;

impl LayerPath {
    pub fn root() -> Self {
        LayerPath(Vec::new())
    }

    /// Normalizes a tar entry name lexically, as Go's `filepath.Clean` and
    /// containerd's root-relative resolution do: `./a//b/` and `a/x/../b`
    /// become `a/b`, `/etc/x` and `../../etc/x` become `etc/x`.
    pub fn parse(raw: &[u8]) -> Result<Self, PathError> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        for comp in raw.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => {
                    parts.pop();
                }
                name if name.contains(&0) => return Err(PathError::Nul),
                name if name.len() > MAX_NAME_LEN => return Err(PathError::NameTooLong),
                name => parts.push(name.to_vec()),
            }
        }
        Ok(LayerPath(parts))
    }

    /// A path of components already known to be single, valid names.
    pub(crate) fn from_components(parts: Vec<Vec<u8>>) -> Self {
        LayerPath(parts)
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn components(&self) -> &[Vec<u8>] {
        &self.0
    }

    /// The parent directory and the last name; `None` for the root.
    pub fn split_last(&self) -> Option<(LayerPath, &[u8])> {
        let (last, parent) = self.0.split_last()?;
        Some((LayerPath(parent.to_vec()), last))
    }

    /// The path's bytes, components joined by `/` (`""` for the root):
    /// the exact name, where [`fmt::Display`] is lossy.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.join(&b'/')
    }

    pub fn join(&self, name: &[u8]) -> LayerPath {
        let mut parts = self.0.clone();
        parts.push(name.to_vec());
        LayerPath(parts)
    }
}

impl fmt::Display for LayerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            f.write_str(&String::from_utf8_lossy(c))?;
        }
        Ok(())
    }
}

/// How a raw entry name is shown in messages: lossy UTF-8, bounded length.
pub fn display_raw(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<String, PathError> {
        LayerPath::parse(s.as_bytes()).map(|p| p.to_string())
    }

    #[test]
    fn normalizes_and_stays_inside_the_root() {
        assert_eq!(p("./a//b/").unwrap(), "a/b");
        assert_eq!(p("a/x/../b").unwrap(), "a/b");
        assert_eq!(p("./").unwrap(), "/");
        assert_eq!(p("a/..").unwrap(), "/");
        assert_eq!(p("/etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(p("../x").unwrap(), "x");
        assert_eq!(p("a/../../x").unwrap(), "x");
        assert_eq!(p("./..").unwrap(), "/");
        assert_eq!(LayerPath::parse(b"a/b\0c"), Err(PathError::Nul));
        assert_eq!(LayerPath::parse(&[b'x'; 256]), Err(PathError::NameTooLong));
        assert!(LayerPath::parse(&[b'x'; 255]).is_ok());
        let raw = LayerPath::parse(b"d/\xff\xfe").unwrap();
        assert_eq!(raw.components()[1], b"\xff\xfe");
    }
}
