//! Layer import against a real local block store: content and metadata come
//! back exactly, bad input is refused with a message naming the entry.

use std::io::Write;
use std::sync::Arc;

use slayerfs_chunkstore::{BlockStore, LocalStore, WriterOptions};
use slayerfs_layerfs::build::{convert_layer, BuildError, ConvertedLayer, Expected};
use slayerfs_layerfs::index::{decode_index, validate};
use slayerfs_layerfs::store::layers::LayerDb;
use slayerfs_layerfs::test_support::{read_file, read_range};
use slayerfs_proto::index::{Inode, InodeKind, LayerIndex};

const OPTS: WriterOptions = WriterOptions {
    workers: 2,
    zstd_level: 3,
    part_size: slayerfs_chunkstore::PartSize::DEFAULT,
};

/// A tar entry written with a raw header, so that names a well-behaved
/// builder would refuse (`..`, absolute) can be produced.
fn raw_entry(out: &mut Vec<u8>, name: &[u8], ty: tar::EntryType, data: &[u8], link: &[u8]) {
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(ty);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A one-entry tar whose name comes from a PAX `path` record, which may hold
/// any byte (a plain header cannot carry NUL or names over 100 bytes).
fn with_pax_path(path: &[u8]) -> Vec<u8> {
    let mut record = Vec::new();
    let body = path.len() + " path=\n".len();
    let mut len = body + body.to_string().len();
    if len.to_string().len() != body.to_string().len() {
        len += 1;
    }
    record.extend_from_slice(format!("{len} path=").as_bytes());
    record.extend_from_slice(path);
    record.push(b'\n');
    let mut t = Vec::new();
    raw_entry(
        &mut t,
        b"PaxHeaders/x",
        tar::EntryType::XHeader,
        &record,
        b"",
    );
    raw_entry(&mut t, b"placeholder", tar::EntryType::Regular, b"", b"");
    finish_tar(t)
}

fn finish_tar(mut out: Vec<u8>) -> Vec<u8> {
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn convert(
    bytes: Vec<u8>,
) -> (
    tempfile::TempDir,
    Arc<dyn BlockStore>,
    Result<ConvertedLayer, BuildError>,
) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
    let res = convert_layer(
        std::io::Cursor::new(bytes),
        store.clone(),
        OPTS,
        "sha256:test",
        Expected::default(),
    )
    .await;
    (dir, store, res)
}

fn lookup<'a>(index: &'a LayerIndex, path: &str) -> Option<&'a Inode> {
    let mut ino = 1u64;
    for name in path.split('/').filter(|c| !c.is_empty()) {
        let dir = &index.inodes[(ino - 1) as usize];
        let d = dir.children.iter().find(|d| d.name == name.as_bytes())?;
        if d.whiteout {
            return None;
        }
        ino = d.ino;
    }
    Some(&index.inodes[(ino - 1) as usize])
}

async fn content(index: &LayerIndex, store: &Arc<dyn BlockStore>, path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    read_file(index, lookup(index, path).unwrap(), store, &mut out)
        .await
        .unwrap();
    out
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_pack_align_and_hole_as_specified() {
    const MIB: usize = 1 << 20;
    let mut tar = Vec::new();
    let small_a = pattern(1000, 1);
    let small_b = pattern(3 * MIB, 2);
    // 4 MiB of data, 8 MiB of zeros (two aligned holes), 1 MiB of data.
    let mut big = pattern(4 * MIB, 3);
    big.extend(std::iter::repeat_n(0u8, 8 * MIB));
    big.extend(pattern(MIB, 4));
    raw_entry(&mut tar, b"a", tar::EntryType::Regular, &small_a, b"");
    raw_entry(&mut tar, b"big", tar::EntryType::Regular, &big, b"");
    raw_entry(&mut tar, b"b", tar::EntryType::Regular, &small_b, b"");
    raw_entry(&mut tar, b"link", tar::EntryType::Link, b"", b"a");
    raw_entry(&mut tar, b"empty", tar::EntryType::Regular, b"", b"");
    let (_dir, store, res) = convert(gzip(&finish_tar(tar))).await;
    let conv = res.unwrap();
    let index = &conv.index;
    assert_eq!(content(index, &store, "a").await, small_a);
    assert_eq!(content(index, &store, "b").await, small_b);
    assert_eq!(content(index, &store, "big").await, big);
    assert_eq!(content(index, &store, "link").await, small_a);
    assert_eq!(content(index, &store, "empty").await, b"");
    let big_inode = lookup(index, "big").unwrap();
    assert_eq!(big_inode.slices.len(), 2, "the two zero blocks are holes");
    assert!(big_inode
        .slices
        .iter()
        .all(|s| s.offset_in_block == 0 && s.offset_in_chunk % (4 << 20) == 0));
    // a (1000 B) and b (3 MiB) share one pack; big has two blocks.
    let (a, b) = (lookup(index, "a").unwrap(), lookup(index, "b").unwrap());
    assert_eq!(a.slices[0].block, b.slices[0].block);
    assert_eq!(index.blocks.len(), 3);
    assert_eq!(conv.blocks.written, 3);
    // Hardlinks share the inode.
    assert!(std::ptr::eq(lookup(index, "link").unwrap(), a));

    // The blob, decoded as a node would, equals the index; sled agrees too.
    let decoded = decode_index(&conv.blob).unwrap();
    assert_eq!(&decoded, index);
    let dbdir = tempfile::tempdir().unwrap();
    let db = LayerDb::open(dbdir.path()).unwrap();
    let layer = db.load_index(&conv.digest, index).unwrap();
    assert_eq!(&db.export_index(&layer).unwrap(), &**index);
    let again = db.load_index(&conv.digest, index).unwrap();
    assert_eq!(again.id, layer.id, "loading twice is a no-op");
    let rec = db
        .inode(layer.id, slayerfs_layerfs::Ino(lookup_ino(index, "a")))
        .unwrap()
        .unwrap();
    assert_eq!(rec.1, 2);

    // Ranges read from sled slices through the block cache, across block
    // and hole boundaries, equal the source.
    let cache = slayerfs_chunkstore::BlockCache::new(
        store.clone(),
        &slayerfs_chunkstore::CacheOptions {
            own_blocks: None,
            memory_bytes: 16 << 20,
            disk: None,
            pinned_bytes: u64::MAX,
        },
    )
    .unwrap();
    let big_ino = slayerfs_layerfs::Ino(lookup_ino(index, "big"));
    let size = big.len() as u64;
    for (off, len) in [
        (0u64, 10u32),
        ((4 << 20) - 3, 7),
        ((4 << 20) - 100, 9 << 20),
        ((12 << 20) - 1, 2),
        (size - 5, 100),
        (size, 10),
        (7 << 20, 1 << 20),
    ] {
        let got = read_range(
            size,
            off,
            len,
            |chunk| Ok(db.chunk_slices(layer.id, big_ino, chunk)?),
            &cache,
            None,
        )
        .await
        .unwrap();
        let end = (off + u64::from(len)).min(size) as usize;
        assert_eq!(got, big[(off as usize).min(end)..end], "range {off}+{len}");
    }

    // Converting the same layer again writes nothing new.
    let again = convert_layer(
        std::io::Cursor::new(gzip(&finish_tar(Vec::new()))),
        store.clone(),
        OPTS,
        "x",
        Expected::default(),
    )
    .await
    .unwrap();
    assert_eq!(again.blocks.written, 0);
}

fn lookup_ino(index: &LayerIndex, name: &str) -> u64 {
    index.inodes[0]
        .children
        .iter()
        .find(|d| d.name == name.as_bytes())
        .unwrap()
        .ino
}

#[tokio::test]
async fn whiteouts_and_opaque_dirs_are_records_not_files() {
    let mut tar = Vec::new();
    raw_entry(&mut tar, b"etc/", tar::EntryType::Directory, b"", b"");
    raw_entry(
        &mut tar,
        b"etc/.wh.passwd",
        tar::EntryType::Regular,
        b"",
        b"",
    );
    raw_entry(
        &mut tar,
        b"var/.wh..wh..opq",
        tar::EntryType::Regular,
        b"",
        b"",
    );
    raw_entry(
        &mut tar,
        b".wh..wh.plnk",
        tar::EntryType::Directory,
        b"",
        b"",
    );
    let (_dir, _store, res) = convert(finish_tar(tar)).await;
    let index = res.unwrap().index;
    validate(&index).unwrap();
    let etc = lookup(&index, "etc").unwrap();
    assert_eq!(etc.children.len(), 1);
    assert!(etc.children[0].whiteout && etc.children[0].name == b"passwd");
    let var = lookup(&index, "var").unwrap();
    assert!(var.opaque && var.implicit && var.children.is_empty());
    assert_eq!(
        index.inodes[0].children.len(),
        2,
        "aufs metadata is dropped"
    );
    assert_eq!(var.kind, InodeKind::Directory as i32);
}

/// Names containerd takes from the layer root (absolute ones, `..` above
/// the root, a link target climbing out) land inside it; an entry naming
/// the root itself is ignored, as containerd ignores it.
#[tokio::test]
async fn names_outside_the_root_are_taken_from_the_root_like_containerd() {
    let mut tar = Vec::new();
    raw_entry(
        &mut tar,
        b"/etc/passwd",
        tar::EntryType::Regular,
        b"abs",
        b"",
    );
    raw_entry(&mut tar, b"a/../../x", tar::EntryType::Regular, b"up", b"");
    raw_entry(&mut tar, b"l", tar::EntryType::Link, b"", b"../x");
    raw_entry(&mut tar, b"./", tar::EntryType::Regular, b"ignored", b"");
    let (_dir, store, res) = convert(finish_tar(tar)).await;
    let index = res.unwrap().index;
    validate(&index).unwrap();
    assert_eq!(content(&index, &store, "etc/passwd").await, b"abs");
    assert_eq!(content(&index, &store, "x").await, b"up");
    assert_eq!(lookup_ino(&index, "l"), lookup_ino(&index, "x"));
    let root = &index.inodes[0];
    assert_eq!(root.children.len(), 3, "etc, l and x only");
    assert!(root.implicit && root.mode & 0o7777 == 0o755);
}

/// Each kind of bad input fails with one message naming the entry.
#[tokio::test]
async fn bad_layers_are_refused_with_the_entry_named() {
    let mut ok = Vec::new();
    raw_entry(
        &mut ok,
        b"f",
        tar::EntryType::Regular,
        &pattern(100_000, 9),
        b"",
    );
    let ok = finish_tar(ok);

    let mut corrupt = ok.clone();
    corrupt[148] ^= 0x55; // header checksum field
    let gz = gzip(&ok);
    let truncated_gz = gz[..gz.len() / 2].to_vec();
    let mut gz_bad_crc = gz.clone();
    let n = gz_bad_crc.len();
    gz_bad_crc[n - 6] ^= 1;

    let one = |name: &[u8], ty, link: &[u8]| {
        let mut t = Vec::new();
        raw_entry(&mut t, name, ty, b"", link);
        finish_tar(t)
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated gzip", truncated_gz, "tar+gzip"),
        ("bad gzip crc", gz_bad_crc, "tar+gzip"),
        ("corrupt header", corrupt, "entry #1"),
        (
            "missing link",
            one(b"l", tar::EntryType::Link, b"nothere"),
            "`l`: hardlink target `nothere` does not exist",
        ),
        (
            "root whiteout",
            one(b".wh..", tar::EntryType::Regular, b""),
            "whiteout of the layer root",
        ),
        (
            "nested root whiteout",
            one(b"./.wh..", tar::EntryType::Regular, b""),
            "whiteout of the layer root",
        ),
        (
            "empty whiteout",
            one(b"d/.wh.", tar::EntryType::Regular, b""),
            "names no entry",
        ),
        (
            "nul in a name",
            with_pax_path(b"a\0b"),
            "a name contains a NUL byte",
        ),
        (
            "name too long",
            with_pax_path(&[b'n'; 300]),
            "longer than 255 bytes",
        ),
        (
            "empty symlink target",
            one(b"s", tar::EntryType::Symlink, b""),
            "symlink without a target",
        ),
        (
            "whiteout of an entry of the same layer",
            {
                let mut t = Vec::new();
                raw_entry(&mut t, b"x/", tar::EntryType::Directory, b"", b"");
                raw_entry(&mut t, b".wh.x", tar::EntryType::Regular, b"", b"");
                finish_tar(t)
            },
            "entry #2 `.wh.x`: whiteout of `x`, which this layer already has",
        ),
        (
            "entry under a whiteout",
            {
                let mut t = Vec::new();
                raw_entry(&mut t, b".wh.x", tar::EntryType::Regular, b"", b"");
                raw_entry(&mut t, b"x/f", tar::EntryType::Regular, b"f", b"");
                finish_tar(t)
            },
            "entry #2 `x/f`: `x` is not a directory",
        ),
        (
            "symlink loop",
            {
                let mut t = Vec::new();
                raw_entry(&mut t, b"a", tar::EntryType::Symlink, b"", b"b");
                raw_entry(&mut t, b"b", tar::EntryType::Symlink, b"", b"a");
                raw_entry(&mut t, b"a/f", tar::EntryType::Regular, b"f", b"");
                finish_tar(t)
            },
            "follows more than 255 symlinks",
        ),
        (
            "xz",
            vec![0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2],
            "unsupported compression (xz)",
        ),
    ];
    for (what, bytes, expect) in cases {
        let (dir, _store, res) = convert(bytes).await;
        let err = res.expect_err(what).to_string();
        assert!(err.contains(expect), "{what}: `{err}` lacks `{expect}`");
        // Nothing was published: no index in the store.
        assert!(
            !dir.path().join("indexes").exists(),
            "{what}: an index was stored"
        );
    }
}

#[tokio::test]
async fn digests_are_checked_before_the_index_is_stored() {
    let mut t = Vec::new();
    raw_entry(&mut t, b"f", tar::EntryType::Regular, b"hi", b"");
    let bytes = gzip(&finish_tar(t));
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
    let wrong = Expected {
        blob: Some([7; 32]),
        diff: None,
    };
    let err = convert_layer(
        std::io::Cursor::new(bytes.clone()),
        store.clone(),
        OPTS,
        "d",
        wrong,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("the layer blob is sha256:"),
        "{err}"
    );
    assert!(!dir.path().join("indexes").exists());
    let right = convert_layer(
        std::io::Cursor::new(bytes),
        store.clone(),
        OPTS,
        "d",
        Expected::default(),
    )
    .await
    .unwrap();
    let exact = Expected {
        blob: Some(right.blob_sha256),
        diff: Some(right.diff_sha256),
    };
    assert_ne!(right.blob_sha256, right.diff_sha256);
    let mut t = Vec::new();
    raw_entry(&mut t, b"f", tar::EntryType::Regular, b"hi", b"");
    convert_layer(
        std::io::Cursor::new(gzip(&finish_tar(t))),
        store,
        OPTS,
        "d",
        exact,
    )
    .await
    .unwrap();
}

#[test]
fn fuzzed_indexes_are_errors_not_panics() {
    let mut t = Vec::new();
    raw_entry(&mut t, b"d/f", tar::EntryType::Regular, b"hello", b"");
    raw_entry(&mut t, b"d/.wh.x", tar::EntryType::Regular, b"", b"");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_dir, _store, res) = rt.block_on(convert(finish_tar(t)));
    let conv = res.unwrap();
    let plain = zstd::decode_all(conv.blob.as_slice()).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rejected = 0;
    for round in 0..3000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut m = plain.clone();
        let flips = 1 + (round % 4);
        for k in 0..flips {
            let pos = ((seed >> (k * 8)) as usize) % m.len();
            m[pos] ^= (seed >> 32) as u8 | 1;
        }
        if round % 7 == 0 {
            m.truncate(((seed >> 40) as usize) % m.len());
        }
        let blob = zstd::encode_all(m.as_slice(), 1).unwrap();
        if decode_index(&blob).is_err() {
            rejected += 1;
        }
    }
    assert!(
        rejected > 1000,
        "most mutations must be caught, {rejected} were"
    );
    assert!(decode_index(b"garbage").is_err());
    assert!(decode_index(&conv.blob[..conv.blob.len() - 3]).is_err());

    // A socket (upper layers only) is not a layer's.
    let mut index = decode_index(&conv.blob).unwrap().into_inner();
    let file = index
        .inodes
        .iter()
        .position(|i| i.kind == slayerfs_proto::index::InodeKind::Regular as i32)
        .unwrap();
    index.inodes[file].kind = slayerfs_proto::index::InodeKind::Socket as i32;
    index.inodes[file].size = 0;
    index.inodes[file].slices.clear();
    let blob =
        zstd::encode_all(slayerfs_proto::Message::encode_to_vec(&index).as_slice(), 1).unwrap();
    let err = decode_index(&blob).unwrap_err().to_string();
    assert!(err.contains("socket"), "{err}");

    // One name twice in a directory (the store could keep only one).
    let mut index = decode_index(&conv.blob).unwrap().into_inner();
    let dir = index
        .inodes
        .iter()
        .position(|i| i.children.len() >= 2)
        .unwrap();
    let first = index.inodes[dir].children[0].name.clone();
    index.inodes[dir].children[1].name = first;
    let blob =
        zstd::encode_all(slayerfs_proto::Message::encode_to_vec(&index).as_slice(), 1).unwrap();
    let err = decode_index(&blob).unwrap_err().to_string();
    assert!(err.contains("appears twice"), "{err}");
}

/// An old-style entry (type NUL) whose name ends in `/` is a directory, as
/// containerd's tar reader takes it; without the `/` it is a file.
#[tokio::test]
async fn old_style_entries_ending_in_a_slash_are_directories() {
    let mut tar = Vec::new();
    for (name, data) in [(&b"old-dir/"[..], &b""[..]), (b"old-file", b"data")] {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkflag[0] = 0;
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    let (_dir, store, res) = convert(finish_tar(tar)).await;
    let index = res.unwrap().index;
    validate(&index).unwrap();
    assert_eq!(
        lookup(&index, "old-dir").unwrap().kind,
        InodeKind::Directory as i32
    );
    assert_eq!(content(&index, &store, "old-file").await, b"data");
}
