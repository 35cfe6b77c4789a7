//! Image references in skopeo's transport syntax.

use std::fmt;
use std::path::PathBuf;

/// Where an image is read from or written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `oci:DIR[:TAG]`: an OCI image layout directory.
    OciLayout { dir: PathBuf, tag: Option<String> },
    /// `docker://REF`: a registry.
    Registry(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefError {
    #[error("`{0}` has no transport; use oci:DIR[:TAG] (or docker://REF)")]
    NoTransport(String),
    #[error("transport `{0}:` is not supported; use oci:DIR[:TAG] (or docker://REF)")]
    UnknownTransport(String),
    #[error("`{0}`: the directory is empty")]
    EmptyDir(String),
    #[error("`{0}`: tag `{1}` is not a valid reference name")]
    BadTag(String, String),
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<Self, RefError> {
        if let Some(rest) = s.strip_prefix("docker://") {
            return Ok(ImageRef::Registry(rest.to_string()));
        }
        let Some((transport, rest)) = s.split_once(':') else {
            return Err(RefError::NoTransport(s.to_string()));
        };
        if transport != "oci" {
            return Err(RefError::UnknownTransport(transport.to_string()));
        }
        // As skopeo does: the path ends at the first `:`.
        let (dir, tag) = match rest.split_once(':') {
            Some((d, t)) => (d, Some(t)),
            None => (rest, None),
        };
        if dir.is_empty() {
            return Err(RefError::EmptyDir(s.to_string()));
        }
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 255
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-:/@+".contains(&b));
            if !ok {
                return Err(RefError::BadTag(s.to_string(), t.to_string()));
            }
        }
        Ok(ImageRef::OciLayout {
            dir: PathBuf::from(dir),
            tag: tag.map(str::to_string),
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::OciLayout { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
            ImageRef::OciLayout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            ImageRef::Registry(r) => write!(f, "docker://{r}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_skopeo_syntax() {
        assert_eq!(
            ImageRef::parse("oci:/tmp/img:v1").unwrap(),
            ImageRef::OciLayout {
                dir: "/tmp/img".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci:rel").unwrap(),
            ImageRef::OciLayout {
                dir: "rel".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageRef::parse("docker://a/b:c").unwrap(),
            ImageRef::Registry("a/b:c".into())
        );
        assert!(matches!(
            ImageRef::parse("/tmp/img"),
            Err(RefError::NoTransport(_))
        ));
        assert!(matches!(
            ImageRef::parse("dir:/x"),
            Err(RefError::UnknownTransport(_))
        ));
        assert!(matches!(
            ImageRef::parse("oci::t"),
            Err(RefError::EmptyDir(_))
        ));
        assert!(matches!(
            ImageRef::parse("oci:/x:bad tag"),
            Err(RefError::BadTag(..))
        ));
        assert_eq!(ImageRef::parse("oci:/x:t").unwrap().to_string(), "oci:/x:t");
    }
}
