//! A limit on tar extension headers (PAX records, GNU long names), which
//! the tar parser reads whole into memory: a layer whose few kilobytes
//! decompress to a gigabyte-long PAX header would otherwise need that
//! gigabyte. Like containerd, headers over 1 MiB are refused.
//!
//! [`ExtensionLimit`] passes the decompressed stream through unchanged and
//! follows its 512-byte blocks on the way (headers, data, GNU sparse
//! extension blocks, the sizes PAX records give the next entry), failing
//! the read that would bring in an extension header over the limit. Where
//! it cannot follow (a header it cannot parse) it stops looking: the tar
//! parser refuses such a header itself.

use std::io::{self, Read};

/// The largest extension header accepted.
pub const MAX_EXTENSION_BYTES: u64 = 1 << 20;

const BLOCK: usize = 512;

/// The tar stream `inner`, with extension headers over the limit refused.
pub struct ExtensionLimit<R> {
    inner: R,
    /// Bytes of the current entry's data (with padding) still to pass.
    data_left: u64,
    /// The header block being gathered.
    header: Vec<u8>,
    /// More GNU sparse extension blocks follow.
    sparse_blocks: bool,
    /// A PAX header's records being gathered, and how many bytes are left.
    pax: Option<(Vec<u8>, u64)>,
    /// The size a PAX record gave the next entry.
    next_size: Option<u64>,
    /// The stream could not be followed: pass it on unlooked at.
    lost: bool,
}

impl<R> ExtensionLimit<R> {
    pub fn new(inner: R) -> Self {
        ExtensionLimit {
            inner,
            data_left: 0,
            header: Vec::with_capacity(BLOCK),
            sparse_blocks: false,
            pax: None,
            next_size: None,
            lost: false,
        }
    }

    /// Follows `bytes`, the next bytes of the stream.
    fn follow(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() && !self.lost {
            if self.data_left > 0 {
                let n = (self.data_left.min(bytes.len() as u64)) as usize;
                if let Some((records, left)) = &mut self.pax {
                    let take = (*left).min(n as u64) as usize;
                    records.extend_from_slice(&bytes[..take]);
                    *left -= take as u64;
                    if *left == 0 {
                        self.next_size = pax_size(records);
                        self.pax = None;
                    }
                }
                self.data_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let need = BLOCK - self.header.len();
            let n = need.min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == BLOCK {
                let header = std::mem::replace(&mut self.header, Vec::with_capacity(BLOCK));
                self.header_block(&header)?;
            }
        }
        Ok(())
    }

    fn header_block(&mut self, block: &[u8]) -> io::Result<()> {
        if self.sparse_blocks {
            self.sparse_blocks = block[504] != 0;
            return Ok(());
        }
        if block.iter().all(|b| *b == 0) {
            return Ok(());
        }
        let Some(mut size) = parse_size(&block[124..136]) else {
            self.lost = true;
            return Ok(());
        };
        let kind = block[156];
        let extension = matches!(kind, b'x' | b'g' | b'L' | b'K');
        if extension {
            if size > MAX_EXTENSION_BYTES {
                let what = match kind {
                    b'x' | b'g' => "a PAX extended header",
                    _ => "a GNU long name",
                };
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{what} of {size} bytes, over the {MAX_EXTENSION_BYTES}-byte limit"),
                ));
            }
            if kind == b'x' {
                self.pax = (size > 0).then(|| (Vec::with_capacity(size as usize), size));
            }
        } else {
            if let Some(s) = self.next_size.take() {
                size = s;
            }
            // GNU sparse: extension blocks of the map follow the header.
            self.sparse_blocks = kind == b'S' && block[482] != 0;
        }
        self.data_left = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        Ok(())
    }
}

/// A tar numeric field: octal digits (spaces and NULs around them), or
/// GNU's base-256 with the high bit set.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

/// The `size` a PAX header's records give the next entry, if any.
fn pax_size(records: &[u8]) -> Option<u64> {
    let mut rest = records;
    let mut size = None;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return size;
        }
        let record = &rest[space + 1..len];
        if let Some(value) = record.strip_prefix(b"size=") {
            let value = value.strip_suffix(b"\n").unwrap_or(value);
            size = std::str::from_utf8(value).ok()?.parse().ok();
        }
        rest = &rest[len..];
    }
    size
}

impl<R: Read> Read for ExtensionLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.follow(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pax_tar(record_bytes: usize) -> Vec<u8> {
        let value = "a".repeat(record_bytes);
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_pax_extensions([("user.comment", value.as_bytes())])
            .unwrap();
        h.set_path("f").unwrap();
        h.set_cksum();
        b.append(&h, &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn read_all(tar: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // Small reads: headers straddle them.
        let mut r = ExtensionLimit::new(tar);
        let mut buf = [0u8; 100];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn passes_what_it_accepts_unchanged_and_refuses_huge_extensions() {
        let small = pax_tar(1000);
        assert_eq!(read_all(&small).unwrap(), small);
        let big = pax_tar(2 << 20);
        let err = read_all(&big).unwrap_err().to_string();
        assert!(
            err.contains("PAX extended header") && err.contains("limit"),
            "{err}"
        );
    }

    #[test]
    fn follows_sizes_pax_gives_and_gnu_long_names() {
        // A file whose size comes from a PAX record, then a PAX header over
        // the limit: found only if the first entry's data was skipped right.
        let mut t = Vec::new();
        let mut b = tar::Builder::new(&mut t);
        b.append_pax_extensions([("size", &b"700"[..])]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("sized").unwrap();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &[7u8; 700][..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "x".repeat(300), &b"abc"[..]).unwrap();
        b.finish().unwrap();
        drop(b);
        assert!(read_all(&t).is_ok());
        t.truncate(t.len() - 1024);
        t.extend_from_slice(&pax_tar(2 << 20));
        assert!(
            read_all(&t).is_err(),
            "the second archive's header was missed"
        );
    }

    #[test]
    fn numeric_fields() {
        assert_eq!(parse_size(b"00000001750\0"), Some(0o1750));
        assert_eq!(parse_size(b"     1750 \0\0"), Some(0o1750));
        assert_eq!(parse_size(b"\0\0\0\0\0\0\0\0\0\0\0\0"), Some(0));
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[11] = 5;
        assert_eq!(parse_size(&big), Some(5));
        assert_eq!(parse_size(b"12x4\0\0\0\0\0\0\0\0"), None);
        assert_eq!(pax_size(b"12 size=700\n"), Some(700));
        assert_eq!(pax_size(b"99 size=700\n"), None);
    }
}
