//! Images, as both sides see them: references in skopeo's transport syntax
//! ([`reference`](mod@reference)), OCI image layouts ([`layout`]), registries
//! ([`registry`]) and moving images between the two ([`transfer`]), the
//! converted image's media types and annotations ([`converted`]), and chain
//! ids. The daemon and the CLI both build on this module, never on each
//! other.

pub mod converted;
pub mod layout;
pub mod reference;
pub mod registry;
pub mod transfer;

use sha2::{Digest, Sha256};

use layout::LayoutError;
use registry::RegistryError;

/// What is wrong with an image, or with getting it.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Io(String),
}

/// The chain ids of layers with these diff ids, bottom first.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        let expect = hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()));
        assert_eq!(chains[1], format!("sha256:{expect}"));
    }
}
