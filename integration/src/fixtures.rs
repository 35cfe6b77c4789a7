//! Test images with every awkward case an OCI layer can hold, written as
//! real OCI image layouts.
//!
//! Layers are described declaratively ([`FEntry`]), written to tar with the
//! `tar` crate (PAX records for xattrs and sub-second mtimes), compressed as
//! each layer asks, and stored with a config whose diff ids are right. The
//! description is the source of truth tests compare against.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FKind {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
    /// A hardlink to the entry at this path (same layer).
    Hardlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    /// `.wh.NAME` for the path's last component.
    Whiteout,
    /// `.wh..wh..opq` inside the directory at the path.
    Opaque,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FEntry {
    pub path: Vec<u8>,
    pub kind: FKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, u32),
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl FEntry {
    pub fn new(path: impl AsRef<[u8]>, kind: FKind) -> Self {
        let mode = match kind {
            FKind::Dir => 0o755,
            FKind::Symlink(_) => 0o777,
            _ => 0o644,
        };
        FEntry {
            path: path.as_ref().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: (1_700_000_000, 0),
            xattrs: Vec::new(),
        }
    }

    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, sec: i64, nsec: u32) -> Self {
        self.mtime = (sec, nsec);
        self
    }

    pub fn xattr(mut self, name: &str, value: &[u8]) -> Self {
        self.xattrs.push((name.to_string(), value.to_vec()));
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone)]
pub struct FLayer {
    pub entries: Vec<FEntry>,
    pub compression: Compression,
}

/// Deterministic pseudo-random bytes (incompressible enough to be honest).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Three layers with: whiteouts, an opaque directory, hardlinks, absolute and
/// relative symlinks, xattrs (text and binary), char and block devices, a
/// fifo, setuid/setgid/sticky bits, long and non-ASCII names, a name that is
/// not UTF-8, sub-second mtimes, large uid/gid, a file crossing several 4 MiB
/// boundaries, a file with aligned zero blocks, an empty file, and entries
/// that replace a file by a directory and the reverse.
pub fn awkward_layers() -> Vec<FLayer> {
    use FKind::*;
    let long_name = format!("long-{}", "n".repeat(180));
    let deep_path = format!("deep/{}/{}/file.txt", "a".repeat(90), "b".repeat(90));
    let mut zero_run = noise(3 * MIB, 7);
    zero_run.extend(std::iter::repeat_n(0u8, 9 * MIB));
    zero_run.extend(noise(4 * MIB + 17, 8));
    let l1 = vec![
        FEntry::new("etc", Dir),
        FEntry::new(
            "etc/passwd",
            File(b"root:x:0:0:root:/root:/bin/sh\n".to_vec()),
        ),
        FEntry::new("etc/hosts", File(b"127.0.0.1 localhost\n".to_vec()))
            .owner(1000, 1000)
            .mtime(1_700_000_123, 456_789_000),
        FEntry::new(
            "etc/localtime",
            Symlink(b"/usr/share/zoneinfo/UTC".to_vec()),
        ),
        FEntry::new("usr", Dir),
        FEntry::new("usr/bin", Dir).mode(0o755),
        FEntry::new("usr/bin/suid", File(b"#!/bin/sh\necho suid\n".to_vec())).mode(0o4755),
        FEntry::new("usr/bin/sgid", File(b"sgid".to_vec())).mode(0o2711),
        // Link headers carry their target's metadata, as tar writers do
        // (containerd applies a link header's metadata to the inode).
        FEntry::new("usr/bin/suid-link", Hardlink(b"usr/bin/suid".to_vec())).mode(0o4755),
        FEntry::new("usr/bin/rel", Symlink(b"../../etc/passwd".to_vec())),
        FEntry::new("tmp", Dir).mode(0o1777),
        FEntry::new("dev", Dir),
        FEntry::new("dev/null", Char(1, 3)).mode(0o666),
        FEntry::new("dev/sda", Block(8, 0)).mode(0o660).owner(0, 6),
        FEntry::new("dev/pipe", Fifo).mode(0o600),
        FEntry::new("data", Dir).xattr("user.dir", b"yes"),
        FEntry::new("data/big", File(noise(13 * MIB + 5, 1))).owner(4_000_000_000, 4_000_000_001),
        FEntry::new("data/zero-run", File(zero_run)),
        FEntry::new("data/empty", File(Vec::new())),
        FEntry::new("data/xattrs", File(b"x".to_vec()))
            .xattr("user.text", b"hello")
            .xattr("user.binary", &[0, 1, 2, 255])
            .xattr(
                "security.capability",
                &[
                    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
        FEntry::new("opq", Dir),
        FEntry::new("opq/old-a", File(b"a".to_vec())),
        FEntry::new("opq/old-b", File(b"b".to_vec())),
        FEntry::new("was-dir", Dir),
        FEntry::new("was-dir/child", File(b"child".to_vec())),
        FEntry::new("was-file", File(b"file".to_vec())),
        FEntry::new("unicode", Dir),
        FEntry::new(
            "unicode/héllo wörld ☃.txt",
            File("snow ☃\n".as_bytes().to_vec()),
        ),
        FEntry::new(b"unicode/raw-\xff\xfe", File(b"not utf-8 name".to_vec())),
        FEntry::new(format!("unicode/{long_name}"), File(b"long".to_vec())),
        FEntry::new(&deep_path, File(b"deep".to_vec())),
        FEntry::new("old-mtime", File(b"1969".to_vec())).mtime(-1, 500_000_000),
    ];
    let l2 = vec![
        FEntry::new("etc/hosts", Whiteout),
        FEntry::new("opq", Opaque),
        FEntry::new("opq/new-c", File(b"c".to_vec())),
        FEntry::new("was-dir", File(b"now a file".to_vec())),
        FEntry::new("was-file", Dir).mode(0o750),
        FEntry::new("was-file/inside", File(b"inside".to_vec())),
        FEntry::new("data/added", File(noise(5 * MIB, 2))),
        FEntry::new("usr/bin/suid", Whiteout),
    ];
    let l3 = vec![
        FEntry::new("deep", Whiteout),
        FEntry::new(
            "etc/passwd",
            File(b"root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n".to_vec()),
        ),
        FEntry::new("links", Dir),
        FEntry::new("links/target", File(noise(100_000, 3))).mode(0o600),
        FEntry::new("links/second", Hardlink(b"links/target".to_vec())).mode(0o600),
        FEntry::new("links/third", Hardlink(b"links/target".to_vec())).mode(0o600),
    ];
    vec![
        FLayer {
            entries: l1,
            compression: Compression::Gzip,
        },
        FLayer {
            entries: l2,
            compression: Compression::None,
        },
        FLayer {
            entries: l3,
            compression: Compression::Zstd,
        },
    ]
}

/// Layers where the order of entries, or metadata GNU tar and containerd
/// treat differently, decides what the rootfs shows: a hardlink whose header
/// differs from its target's, a directory described twice, a file replaced
/// within a layer (its other name keeps the old inode), `.wh.X` then `X/`
/// (not opaque: the lower `X` shows through, as containerd's overlayfs
/// unpack leaves it), entries under a symlink of the same layer (relative,
/// absolute) and of a lower layer, an opaque marker between entries, a parent
/// only implied over a lower directory with its own mode, owner and xattrs,
/// xattrs in namespaces containerd drops, mtimes before 1970, past 2262 and
/// with nanoseconds, 0/0 character devices (overlayfs's whiteouts). The third layer is raw: an absolute name, one climbing
/// above the root, and a root entry with its own mode.
pub fn unpack_order_layers() -> Vec<(Vec<u8>, Compression)> {
    use FKind::*;
    let capability = [
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let l1 = vec![
        FEntry::new("real", Dir),
        FEntry::new("real/old", File(b"old".to_vec())),
        FEntry::new("x", Dir),
        FEntry::new("x/lower-child", File(b"lower".to_vec())),
        FEntry::new("lowlink", Symlink(b"real".to_vec())),
        FEntry::new("base", Dir)
            .mode(0o700)
            .owner(5, 6)
            .xattr("user.base", b"1"),
        FEntry::new("base/keep", File(b"keep".to_vec())),
        FEntry::new("o", Dir),
        FEntry::new("o/old", File(b"hidden".to_vec())),
        FEntry::new("gone-by-device", File(b"hidden by a 0/0 device".to_vec())),
    ];
    let l2 = vec![
        FEntry::new("h", Dir),
        FEntry::new("h/target", File(b"target".to_vec()))
            .owner(1, 1)
            .mtime(1_600_000_000, 0)
            .xattr("user.t", b"1")
            .xattr("user.both", b"target"),
        FEntry::new("h/link", Hardlink(b"h/target".to_vec()))
            .mode(0o600)
            .owner(2, 3)
            .mtime(1_650_000_000, 5)
            .xattr("user.l", b"2")
            .xattr("user.both", b"link"),
        FEntry::new("twice", Dir)
            .mode(0o700)
            .mtime(1_500_000_000, 0)
            .xattr("user.one", b"1"),
        FEntry::new("twice/f", File(b"f".to_vec())),
        FEntry::new("twice", Dir)
            .mode(0o750)
            .mtime(1_550_000_000, 0)
            .xattr("user.two", b"2"),
        FEntry::new("rep", File(b"one".to_vec())),
        FEntry::new("rep-link", Hardlink(b"rep".to_vec())),
        FEntry::new("rep", File(b"two".to_vec())).mode(0o600),
        FEntry::new("x", Whiteout),
        FEntry::new("x", Dir).mode(0o711),
        FEntry::new("x/new", File(b"new".to_vec())),
        FEntry::new("sl", Symlink(b"real".to_vec())),
        FEntry::new("sl/via-link", File(b"via".to_vec())),
        FEntry::new("abs", Symlink(b"/made/by/link".to_vec())),
        FEntry::new("abs/f", File(b"abs".to_vec())),
        FEntry::new("lowlink/f", File(b"under a lower symlink".to_vec())),
        FEntry::new("o/a", File(b"a".to_vec())),
        FEntry::new("o", Opaque),
        FEntry::new("o/b", File(b"after the marker".to_vec())),
        FEntry::new("base/sub/f", File(b"implied parent".to_vec())),
        FEntry::new("xs", File(b"xattrs".to_vec()))
            .xattr("user.u", b"1")
            .xattr("trusted.t", b"1")
            .xattr("security.capability", &capability),
        FEntry::new("sym-x", Symlink(b"xs".to_vec())).xattr("user.s", b"1"),
        FEntry::new("fifo-x", Fifo).xattr("user.f", b"1"),
        FEntry::new("neg", File(b"1969".to_vec())).mtime(-5, 0),
        FEntry::new("future", File(b"2286".to_vec())).mtime(10_000_000_000, 1),
        FEntry::new("frac", File(b"ns".to_vec())).mtime(1_700_000_000, 123_456_789),
        FEntry::new("gone-by-device", Char(0, 0)),
        FEntry::new("own-device-over-file", File(b"replaced".to_vec())),
        FEntry::new("own-device-over-file", Char(0, 0)),
    ];
    let raw = raw_tar(&[
        (b"./", tar::EntryType::Directory, b"", b""),
        (b"/abs-entry", tar::EntryType::Regular, b"absolute", b""),
        (b"../../climb", tar::EntryType::Regular, b"climbed", b""),
        (
            b"real/../up-and-back",
            tar::EntryType::Regular,
            b"lexical",
            b"",
        ),
    ]);
    vec![
        layer_blob(&FLayer {
            entries: l1,
            compression: Compression::Gzip,
        }),
        layer_blob(&FLayer {
            entries: l2,
            compression: Compression::None,
        }),
        (raw, Compression::None),
    ]
}

/// One PAX record, `<len> <key>=<value>\n`, `<len>` counting the whole
/// record.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + body.to_string().len();
    if len.to_string().len() != body.to_string().len() {
        len += 1;
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

fn tar_path(e: &FEntry) -> Vec<u8> {
    let (dir, name) = match e.path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&e.path[..=i], &e.path[i + 1..]),
        None => (&b""[..], &e.path[..]),
    };
    match e.kind {
        FKind::Whiteout => [dir, b".wh.", name].concat(),
        FKind::Opaque => [&e.path[..], b"/.wh..wh..opq"].concat(),
        FKind::Dir => [&e.path[..], b"/"].concat(),
        _ => e.path.clone(),
    }
}

/// The uncompressed tar of a layer.
pub fn layer_tar(layer: &FLayer) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in &layer.entries {
        let mut pax = Vec::new();
        for (k, v) in &e.xattrs {
            pax.extend(pax_record(&format!("SCHILY.xattr.{k}"), v));
        }
        if e.mtime.1 != 0 || e.mtime.0 < 0 {
            let (s, n) = e.mtime;
            let text = if s < 0 && n > 0 {
                format!("-{}.{:09}", -(s + 1), 1_000_000_000 - n)
            } else {
                format!("{s}.{n:09}")
            };
            pax.extend(pax_record("mtime", text.as_bytes()));
        }
        if e.uid > 0o7777777 || e.gid > 0o7777777 {
            pax.extend(pax_record("uid", e.uid.to_string().as_bytes()));
            pax.extend(pax_record("gid", e.gid.to_string().as_bytes()));
        }
        if !pax.is_empty() {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_size(pax.len() as u64);
            h.set_mode(0o644);
            h.set_path("PaxHeaders/entry").expect("pax header name");
            h.set_cksum();
            b.append(&h, pax.as_slice()).expect("pax header");
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode);
        h.set_uid(u64::from(e.uid.min(0o7777777)));
        h.set_gid(u64::from(e.gid.min(0o7777777)));
        h.set_mtime(e.mtime.0.max(0) as u64);
        let path = std::ffi::OsStr::from_bytes(&tar_path(e)).to_owned();
        let empty: &[u8] = &[];
        match &e.kind {
            FKind::File(data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, &path, data.as_slice()).expect("file");
            }
            FKind::Dir
            | FKind::Whiteout
            | FKind::Opaque
            | FKind::Fifo
            | FKind::Char(..)
            | FKind::Block(..) => {
                let ty = match e.kind {
                    FKind::Dir => tar::EntryType::Directory,
                    FKind::Fifo => tar::EntryType::Fifo,
                    FKind::Char(..) => tar::EntryType::Char,
                    FKind::Block(..) => tar::EntryType::Block,
                    _ => tar::EntryType::Regular,
                };
                h.set_entry_type(ty);
                if let FKind::Char(ma, mi) | FKind::Block(ma, mi) = e.kind {
                    h.set_device_major(ma).expect("major");
                    h.set_device_minor(mi).expect("minor");
                }
                h.set_size(0);
                b.append_data(&mut h, &path, empty).expect("entry");
            }
            FKind::Symlink(target) | FKind::Hardlink(target) => {
                let ty = if matches!(e.kind, FKind::Symlink(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                h.set_entry_type(ty);
                h.set_size(0);
                let target = std::ffi::OsStr::from_bytes(target).to_owned();
                b.append_link(&mut h, &path, &target).expect("link");
            }
        }
    }
    b.into_inner().expect("tar")
}

pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).expect("gzip");
            e.finish().expect("gzip")
        }
        Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd"),
    }
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What [`write_image`] wrote.
#[derive(Debug, Clone)]
pub struct WrittenImage {
    pub manifest_digest: String,
    pub layer_digests: Vec<String>,
    pub diff_ids: Vec<String>,
}

fn put_blob(dir: &Path, bytes: &[u8]) -> anyhow::Result<String> {
    let digest = sha256_digest(bytes);
    let path = dir.join("blobs/sha256").join(&digest[7..]);
    std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
    std::fs::write(path, bytes)?;
    Ok(digest)
}

fn media_type(c: Compression) -> &'static str {
    match c {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// A layer blob already in a layout's `blobs/sha256`.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
    pub compression: Compression,
}

/// Writes an OCI image layout at `dir` with the layers given as finished
/// blobs, tagged `tag` (added to an existing layout).
pub fn write_image_blobs(
    dir: &Path,
    tag: &str,
    layers: &[(Vec<u8>, Compression)],
) -> anyhow::Result<WrittenImage> {
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    let mut blobs = Vec::new();
    for (blob, c) in layers {
        // Broken blobs (for failure tests) get the blob's own digest as diff id.
        let tar = match c {
            Compression::None => Some(blob.clone()),
            Compression::Gzip => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::MultiGzDecoder::new(blob.as_slice()),
                    &mut out,
                )
                .ok()
                .map(|_| out)
            }
            Compression::Zstd => zstd::decode_all(blob.as_slice()).ok(),
        };
        let tar = tar.unwrap_or_else(|| blob.clone());
        blobs.push(LayerBlob {
            digest: put_blob(dir, blob)?,
            size: blob.len() as u64,
            diff_id: sha256_digest(&tar),
            compression: *c,
        });
    }
    write_manifest(dir, tag, &blobs)
}

/// Writes config, manifest and the `index.json` entry for layers whose blobs
/// are in place.
pub fn write_manifest(dir: &Path, tag: &str, layers: &[LayerBlob]) -> anyhow::Result<WrittenImage> {
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": media_type(l.compression), "digest": l.digest, "size": l.size}))
        .collect();
    let layer_digests: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = put_blob(dir, &config_bytes)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
        "layers": layer_descs,
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = put_blob(dir, &manifest_bytes)?;
    let index_path = dir.join("index.json");
    let mut manifests: Vec<serde_json::Value> = match std::fs::read(&index_path) {
        Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)?["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
    manifests.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest_bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }));
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    std::fs::write(index_path, serde_json::to_vec(&index)?)?;
    Ok(WrittenImage {
        manifest_digest,
        layer_digests,
        diff_ids,
    })
}

/// A layer's blob, compressed as the layer asks, with its compression.
pub fn layer_blob(layer: &FLayer) -> (Vec<u8>, Compression) {
    (
        compress(&layer_tar(layer), layer.compression),
        layer.compression,
    )
}

/// Writes `layers` as an OCI image layout at `dir`, tagged `tag`.
pub fn write_image(dir: &Path, tag: &str, layers: &[FLayer]) -> anyhow::Result<WrittenImage> {
    let blobs: Vec<(Vec<u8>, Compression)> = layers.iter().map(layer_blob).collect();
    write_image_blobs(dir, tag, &blobs)
}

/// One raw tar entry: name, type, data, link target.
pub type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

/// A tar written header by header, so that names a well-behaved builder
/// refuses (`..`, absolute paths) can be produced.
pub fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, ty, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        if let Some(gnu) = h.as_gnu_mut() {
            gnu.name[..name.len()].copy_from_slice(name);
            gnu.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(*ty);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}
