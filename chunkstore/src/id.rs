//! Typed sha256 digests: a block id is not an index digest.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// A digest that could not be parsed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{input}` is not a sha256 digest (expected 64 lowercase hex digits{prefix})")]
pub struct ParseDigestError {
    input: String,
    prefix: &'static str,
}

fn parse_hex32(s: &str, prefix: &'static str) -> Result<[u8; 32], ParseDigestError> {
    let err = || ParseDigestError {
        input: s.chars().take(80).collect(),
        prefix,
    };
    let hex_part = if prefix.is_empty() {
        s
    } else {
        s.strip_prefix("sha256:").ok_or_else(err)?
    };
    if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(err());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| err())?;
    Ok(out)
}

/// Id of a block: sha256 of its plain (uncompressed) bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId([u8; 32]);

impl BlockId {
    /// The id of these plain bytes.
    pub fn of(plain: &[u8]) -> Self {
        BlockId(Sha256::digest(plain).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        BlockId(bytes)
    }

    /// From a 32-byte slice, as stored in an index; `None` for another length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(BlockId(bytes.try_into().ok()?))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({})", &self.to_hex()[..12])
    }
}

impl FromStr for BlockId {
    type Err = ParseDigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s, "").map(BlockId)
    }
}

/// Digest of a layer index blob: sha256 of its stored (compressed) bytes,
/// which is also its OCI descriptor digest. Displays as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexDigest([u8; 32]);

impl IndexDigest {
    pub fn of(blob: &[u8]) -> Self {
        IndexDigest(Sha256::digest(blob).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        IndexDigest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for IndexDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl fmt::Debug for IndexDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IndexDigest({})", &self.to_hex()[..12])
    }
}

impl FromStr for IndexDigest {
    type Err = ParseDigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s, " after `sha256:`").map(IndexDigest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = BlockId::of(b"hello");
        assert_eq!(
            id.to_string(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(id.to_string().parse::<BlockId>().unwrap(), id);
        let d = IndexDigest::of(b"hello");
        assert_eq!(d.to_string().parse::<IndexDigest>().unwrap(), d);
        for bad in [
            "",
            "sha256:",
            "zz",
            &"A".repeat(64),
            &format!("sha512:{}", "a".repeat(64)),
        ] {
            assert!(bad.parse::<IndexDigest>().is_err(), "{bad}");
            assert!(bad.parse::<BlockId>().is_err(), "{bad}");
        }
        assert!(BlockId::from_slice(&[0; 31]).is_none());
    }
}
