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

/// A sha256 newtype: construction, bytes, hex, Debug and parsing. The two
/// kinds differ only in what they hash and in their text form.
macro_rules! sha256_type {
    ($(#[$doc:meta])* $name:ident, display_prefix: $prefix:literal, parse_hint: $hint:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// The digest of these bytes.
            pub fn of(bytes: &[u8]) -> Self {
                $name(Sha256::digest(bytes).into())
            }

            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                $name(bytes)
            }

            /// From a 32-byte slice, as stored in an index; `None` for another length.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                Some($name(bytes.try_into().ok()?))
            }

            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.to_hex()[..12])
            }
        }

        impl FromStr for $name {
            type Err = ParseDigestError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex32(s, $hint).map($name)
            }
        }
    };
}

sha256_type!(
    /// Id of a block: sha256 of its plain (uncompressed) bytes. Displays as
    /// bare hex, the form used in object keys.
    BlockId,
    display_prefix: "",
    parse_hint: ""
);

sha256_type!(
    /// Digest of a layer index blob: sha256 of its stored (compressed) bytes,
    /// which is also its OCI descriptor digest. Displays as `sha256:<hex>`.
    IndexDigest,
    display_prefix: "sha256:",
    parse_hint: " after `sha256:`"
);

sha256_type!(
    /// An image's chain id: the containerd chain id of its top layer
    /// (`sha256:<hex>`), which names its whole stack of layers. Traces of
    /// an image's starts are kept under it.
    ChainDigest,
    display_prefix: "sha256:",
    parse_hint: " after `sha256:`"
);

sha256_type!(
    /// Digest of a stored trace: sha256 of its stored bytes, so two nodes
    /// writing traces at once never write the same key with different
    /// bytes. Displays as `sha256:<hex>`.
    TraceDigest,
    display_prefix: "sha256:",
    parse_hint: " after `sha256:`"
);

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
