//! Importing an OCI layer: a tar stream (plain, gzip or zstd, recognised by
//! its first bytes) becomes blocks plus a [`LayerTree`].
//!
//! The stream is read once, front to back; file data goes straight into
//! blocks, so memory does not grow with the layer. The sha256 of the blob and
//! of the uncompressed tar are computed on the way for the caller to check
//! against the manifest's digest and the config's diff id.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};

use slayerfs_chunkstore::BlockWriter;

use super::extensions::ExtensionLimit;
use super::hash_tee::{spawn_hashed, StreamHash};
use super::packer::{PackError, Packer};
use super::path::{display_raw, LayerPath, PathError};
use super::prefetch_list::PrefetchList;
use super::tree::{Attrs, LayerTree, NodeKind, TreeError};
use crate::geometry::Ino;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "tar",
            Compression::Gzip => "tar+gzip",
            Compression::Zstd => "tar+zstd",
        })
    }
}

/// Counts of one import.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportStats {
    /// Tar entries read (whiteouts and links included).
    pub entries: u64,
    /// Bytes of the blob as stored (compressed).
    pub blob_bytes: u64,
    /// Bytes of the uncompressed tar stream.
    pub tar_bytes: u64,
    /// Bytes of regular file content.
    pub file_bytes: u64,
}

/// A layer read to its end.
#[derive(Debug)]
pub struct ImportedLayer {
    pub tree: LayerTree,
    /// Files of the prefetch list this layer has, in the list's order.
    pub read_first: Vec<Ino>,
    pub stats: ImportStats,
    pub compression: Compression,
    /// sha256 of the blob bytes (the manifest's layer digest).
    pub blob_sha256: [u8; 32],
    /// sha256 of the uncompressed tar (the config's diff id).
    pub diff_sha256: [u8; 32],
}

/// Where in the stream an import failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Stream,
    Entry { number: u64, name: String },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Stream => f.write_str("layer stream"),
            Location::Entry { number, name } => write!(f, "entry #{number} `{name}`"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportErrorKind {
    #[error("unsupported compression ({0})")]
    UnsupportedCompression(&'static str),
    #[error("cannot decompress ({compression}): {source}")]
    Decompress {
        compression: Compression,
        source: io::Error,
    },
    #[error("corrupt or truncated tar: {0}")]
    Tar(io::Error),
    #[error("cannot read the layer: {0}")]
    Read(io::Error),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("unsupported tar entry type {0:?}")]
    UnsupportedType(tar::EntryType),
    #[error("{0}")]
    BadHeader(String),
    #[error(transparent)]
    Pack(PackError),
}

/// An import that failed, with the entry it failed at.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {kind}")]
pub struct ImportError {
    pub location: Location,
    /// Boxed: errors are rare, results are many.
    pub kind: Box<ImportErrorKind>,
}

/// Marks an error of the decompressor, so it is not blamed on the tar.
#[derive(Debug)]
struct DecompressFailure(io::Error);

impl fmt::Display for DecompressFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DecompressFailure {}

fn find_decompress_failure(e: &io::Error) -> Option<&DecompressFailure> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|e| e as _);
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<DecompressFailure>() {
            return Some(d);
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(d) = inner.downcast_ref::<DecompressFailure>() {
                    return Some(d);
                }
            }
        }
        cur = err.source();
    }
    None
}

/// A decompressor whose errors are marked as such, so they are not blamed
/// on the tar.
struct Tagged<D>(D);

impl<D: Read> Read for Tagged<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), DecompressFailure(e)))
    }
}

fn sniff(head: &[u8]) -> Result<Compression, ImportErrorKind> {
    Ok(match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        [b'B', b'Z', b'h', ..] => return Err(ImportErrorKind::UnsupportedCompression("bzip2")),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => {
            return Err(ImportErrorKind::UnsupportedCompression("xz"))
        }
        _ => Compression::None,
    })
}

fn stream_err(kind: ImportErrorKind) -> ImportError {
    ImportError {
        location: Location::Stream,
        kind: Box::new(kind),
    }
}

/// Reads a whole layer blob, writing file data through `writer` (which the
/// caller finishes), and returns the layer tree. Runs on a blocking thread.
pub fn import_layer<R: Read + Send + 'static>(
    blob: R,
    writer: &mut BlockWriter,
    list: &PrefetchList,
) -> Result<ImportedLayer, ImportError> {
    let read_err = |e| stream_err(ImportErrorKind::Read(e));
    // The blob is read and hashed on threads of its own; the tar parser
    // (this thread) only parses and copies.
    let (blob_stream, blob_hash) = spawn_hashed(blob, "layer-read").map_err(read_err)?;
    let mut buffered = BufReader::with_capacity(64 << 10, blob_stream);
    let head = buffered.fill_buf().map_err(read_err)?;
    let compression = sniff(head).map_err(stream_err)?;
    let decompress_err = |e| {
        stream_err(ImportErrorKind::Decompress {
            compression,
            source: e,
        })
    };
    let (stream, diff_hash): (Box<dyn Read>, Option<StreamHash>) = match compression {
        Compression::None => (Box::new(buffered), None),
        Compression::Gzip => {
            let decoder = Tagged(flate2::bufread::MultiGzDecoder::new(buffered));
            let (r, h) = spawn_hashed(decoder, "layer-gunzip").map_err(read_err)?;
            (Box::new(r), Some(h))
        }
        Compression::Zstd => {
            let decoder = Tagged(zstd::Decoder::with_buffer(buffered).map_err(decompress_err)?);
            let (r, h) = spawn_hashed(decoder, "layer-unzstd").map_err(read_err)?;
            (Box::new(r), Some(h))
        }
    };
    let mut archive = tar::Archive::new(ExtensionLimit::new(stream));
    let mut tree = LayerTree::new();
    let mut stats = ImportStats::default();
    let mut packer = Packer::new(writer);
    let mut read_first = Vec::new();
    let classify = |e: io::Error| match find_decompress_failure(&e) {
        Some(d) => ImportErrorKind::Decompress {
            compression,
            source: io::Error::new(d.0.kind(), d.0.to_string()),
        },
        None => ImportErrorKind::Tar(e),
    };

    let entries = archive.entries().map_err(|e| stream_err(classify(e)))?;
    for (i, entry) in entries.enumerate() {
        let number = i as u64 + 1;
        let mut entry = entry.map_err(|e| ImportError {
            location: Location::Entry {
                number,
                name: "<unreadable header>".into(),
            },
            kind: Box::new(classify(e)),
        })?;
        let raw_name = entry.path_bytes().into_owned();
        let at = |kind: ImportErrorKind| ImportError {
            location: Location::Entry {
                number,
                name: display_raw(&raw_name),
            },
            kind: Box::new(kind),
        };
        let mut sink = Sink {
            tree: &mut tree,
            packer: &mut packer,
            list,
            read_first: &mut read_first,
        };
        let added = apply_entry(&mut sink, &mut entry, &raw_name).map_err(|k| match k {
            ImportErrorKind::Pack(PackError::Read(e)) => at(classify(e)),
            other => at(other),
        })?;
        stats.entries += 1;
        stats.file_bytes += added;
    }
    packer
        .finish()
        .map_err(|e| stream_err(ImportErrorKind::Pack(e)))?;

    // Read to the very end: the gzip trailer (CRC) and any padding are
    // checked and hashed too.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| stream_err(classify(e)))?;
    drop(rest);
    let diff = diff_hash
        .map(|h| h.finish().map_err(decompress_err))
        .transpose()?;
    let (blob_sha256, blob_bytes) = blob_hash.finish().map_err(read_err)?;
    let (diff_sha256, tar_bytes) = diff.unwrap_or((blob_sha256, blob_bytes));
    stats.blob_bytes = blob_bytes;
    stats.tar_bytes = tar_bytes;
    read_first.sort_unstable();
    Ok(ImportedLayer {
        read_first: read_first.into_iter().map(|(_, ino)| ino).collect(),
        tree,
        stats,
        compression,
        blob_sha256,
        diff_sha256,
    })
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";

/// Where one entry goes: the tree, file data to the packer, and files on
/// the prefetch list (their place in it, and their inode) noted.
struct Sink<'a, 'w> {
    tree: &'a mut LayerTree,
    packer: &'a mut Packer<'w>,
    list: &'a PrefetchList,
    read_first: &'a mut Vec<(u32, Ino)>,
}

/// Applies one tar entry; returns the file bytes it added.
fn apply_entry<R: Read>(
    sink: &mut Sink<'_, '_>,
    entry: &mut tar::Entry<'_, R>,
    raw_name: &[u8],
) -> Result<u64, ImportErrorKind> {
    let tree = &mut *sink.tree;
    let ty = entry.header().entry_type();
    if ty == tar::EntryType::XGlobalHeader {
        return Ok(0);
    }
    let path = LayerPath::parse(raw_name)?;

    if let Some((dir, name)) = path.split_last() {
        if name == OPAQUE_MARKER {
            tree.opaque(&dir)?;
            return Ok(0);
        }
        if name.starts_with(WHITEOUT_META_PREFIX) {
            // Other aufs metadata (`.wh..wh.plnk`, …) has no meaning in OCI.
            return Ok(0);
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            tree.whiteout(&dir, hidden)?;
            return Ok(0);
        }
    } else if raw_name.ends_with(b"/.wh..") || raw_name == b".wh.." {
        return Err(TreeError::WhiteoutOfRoot.into());
    }

    let attrs = read_attrs(entry)?;
    let header = entry.header();
    let device = |h: &tar::Header| -> Result<(u32, u32), ImportErrorKind> {
        let major = h
            .device_major()
            .map_err(|e| ImportErrorKind::BadHeader(e.to_string()))?;
        let minor = h
            .device_minor()
            .map_err(|e| ImportErrorKind::BadHeader(e.to_string()))?;
        Ok((major.unwrap_or(0), minor.unwrap_or(0)))
    };
    // An old-style regular entry (type NUL) whose name ends in `/` is a
    // directory, as Go's tar reader (containerd's) takes it.
    let old_style_dir = header.as_old().linkflag[0] == 0 && raw_name.ends_with(b"/");
    let kind = match ty {
        tar::EntryType::Regular if old_style_dir => NodeKind::Directory,
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            NodeKind::Regular
        }
        tar::EntryType::Directory => NodeKind::Directory,
        tar::EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| ImportErrorKind::BadHeader("symlink without a target".into()))?;
            if target.contains(&0) {
                return Err(ImportErrorKind::BadHeader(
                    "symlink target contains a NUL byte".into(),
                ));
            }
            NodeKind::Symlink(target.into_owned())
        }
        tar::EntryType::Char => {
            let (major, minor) = device(header)?;
            if (major, minor) == (0, 0) {
                // What containerd makes of it is overlayfs's whiteout: every
                // container's rootfs hides the name and what lies below.
                tree.whiteout_device(&path)?;
                return Ok(0);
            }
            NodeKind::CharDevice { major, minor }
        }
        tar::EntryType::Block => {
            let (major, minor) = device(header)?;
            NodeKind::BlockDevice { major, minor }
        }
        tar::EntryType::Fifo => NodeKind::Fifo,
        tar::EntryType::Link => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| ImportErrorKind::BadHeader("hardlink without a target".into()))?;
            let target = LayerPath::parse(&target)?;
            tree.hardlink(&path, &target, attrs)?;
            return Ok(0);
        }
        other => return Err(ImportErrorKind::UnsupportedType(other)),
    };
    let is_file = kind == NodeKind::Regular;
    if path.is_root() {
        // containerd ignores an entry that names the root itself.
        return Ok(0);
    }
    let attrs = attrs.kept_for(&kind);
    let ino = tree.insert(&path, kind, attrs)?;
    if !is_file {
        return Ok(0);
    }
    let size = entry.size();
    let place = sink.list.position(&path);
    let slices = sink
        .packer
        .add_file(entry, size, place.is_some())
        .map_err(ImportErrorKind::Pack)?;
    tree.set_content(ino, size, slices);
    if let Some(place) = place {
        sink.read_first.push((place, ino));
    }
    Ok(size)
}

/// Metadata of an entry: header fields, overridden by PAX records where
/// those are more precise (mtime with nanoseconds, large uid/gid), and
/// `SCHILY.xattr.*` extended attributes.
fn read_attrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Attrs, ImportErrorKind> {
    let bad =
        |what: &str, e: io::Error| ImportErrorKind::BadHeader(format!("bad {what} field: {e}"));
    let header = entry.header();
    let mode = header.mode().map_err(|e| bad("mode", e))? & 0o7777;
    let mut uid = header.uid().map_err(|e| bad("uid", e))?;
    let mut gid = header.gid().map_err(|e| bad("gid", e))?;
    let mut mtime_sec =
        i64::try_from(header.mtime().map_err(|e| bad("mtime", e))?).unwrap_or(i64::MAX);
    let mut mtime_nsec = 0;
    let mut xattrs = std::collections::BTreeMap::new();
    if let Some(pax) = entry.pax_extensions().map_err(|e| bad("PAX", e))? {
        for ext in pax {
            let ext = ext.map_err(|e| bad("PAX", e))?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                if name.is_empty() || name.contains('\0') {
                    return Err(ImportErrorKind::BadHeader(format!(
                        "bad xattr name `{name}`"
                    )));
                }
                xattrs.insert(name.as_bytes().to_vec(), value.to_vec());
                continue;
            }
            let text = std::str::from_utf8(value).unwrap_or("");
            match key {
                "mtime" => {
                    (mtime_sec, mtime_nsec) = parse_pax_time(text).ok_or_else(|| {
                        ImportErrorKind::BadHeader(format!("bad PAX mtime `{text}`"))
                    })?
                }
                "uid" => {
                    uid = text
                        .parse()
                        .map_err(|_| ImportErrorKind::BadHeader(format!("bad PAX uid `{text}`")))?
                }
                "gid" => {
                    gid = text
                        .parse()
                        .map_err(|_| ImportErrorKind::BadHeader(format!("bad PAX gid `{text}`")))?
                }
                _ => {}
            }
        }
    }
    let id32 = |what: &str, v: u64| {
        u32::try_from(v)
            .map_err(|_| ImportErrorKind::BadHeader(format!("{what} {v} does not fit in 32 bits")))
    };
    let (mtime_sec, mtime_nsec) = bound_time(mtime_sec, mtime_nsec);
    Ok(Attrs {
        mode,
        uid: id32("uid", uid)?,
        gid: id32("gid", gid)?,
        mtime_sec,
        mtime_nsec,
        xattrs,
    })
}

/// A time as containerd sets it: one before the epoch or past what a
/// 64-bit nanosecond count holds (year 2262) becomes the epoch.
fn bound_time(sec: i64, nsec: u32) -> (i64, u32) {
    const MAX_SEC: i64 = i64::MAX / 1_000_000_000;
    const MAX_NSEC: u32 = (i64::MAX % 1_000_000_000) as u32;
    if !(0..=MAX_SEC).contains(&sec) || (sec == MAX_SEC && nsec > MAX_NSEC) {
        (0, 0)
    } else {
        (sec, nsec)
    }
}

/// Parses a PAX time (`-?SECONDS[.FRACTION]`) into seconds and nanoseconds,
/// nanoseconds always counted forward from the second.
pub fn parse_pax_time(text: &str) -> Option<(i64, u32)> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Some((secs, nanos));
    }
    if nanos == 0 {
        Some((-secs, 0))
    } else {
        Some((-secs - 1, 1_000_000_000 - nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time("1700000000.123456789123"),
            Some((1_700_000_000, 123_456_789))
        );
        assert_eq!(parse_pax_time("1.5"), Some((1, 500_000_000)));
        assert_eq!(parse_pax_time("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time("-3"), Some((-3, 0)));
        assert_eq!(parse_pax_time("x"), None);
        assert_eq!(parse_pax_time(".5"), None);
    }

    #[test]
    fn times_are_bounded_like_containerd() {
        assert_eq!(bound_time(1_700_000_000, 5), (1_700_000_000, 5));
        assert_eq!(bound_time(0, 0), (0, 0));
        assert_eq!(bound_time(-1, 500_000_000), (0, 0));
        assert_eq!(
            bound_time(9_223_372_036, 854_775_807),
            (9_223_372_036, 854_775_807)
        );
        assert_eq!(bound_time(9_223_372_036, 854_775_808), (0, 0));
        assert_eq!(bound_time(i64::MAX, 0), (0, 0));
    }
}
