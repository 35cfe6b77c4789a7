//! `slayerfs convert` end to end on an OCI layout of awkward layers, into a
//! local block store: every entry comes back exactly, conversions are
//! idempotent and deduplicated, and bad input publishes nothing.

mod common;

use std::sync::Arc;

use common::*;
use slayerfs_chunkstore::{BlockStore, IndexDigest, LocalStore};
use slayerfs_integration::fixtures::{
    awkward_layers, noise, raw_tar, write_image, write_image_blobs, Compression, FEntry, FKind,
    FLayer,
};
use slayerfs_layerfs::store::layers::LayerDb;
use slayerfs_snapshotter::image::converted::ConvertedImage;
use slayerfs_snapshotter::image::converted::{ANNOTATION_INDEX, ANNOTATION_SOURCE_DIGEST};
use slayerfs_snapshotter::image::reference::ImageRef;

fn oci(dir: &std::path::Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_image_round_trips_through_blocks_and_indexes() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, store_dir) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("store"),
    );
    let layers = awkward_layers();
    let written = write_image(&src, "v1", &layers).unwrap();

    let out = assert_ok(&slayerfs(
        &[
            "convert",
            &oci(&src, "v1"),
            &oci(&dst, "conv"),
            "--store",
            store_dir.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(out.contains("layers    3"), "{out}");
    let (written_blocks, present) = blocks_line(&out);
    assert!(written_blocks > 0 && present == 0, "{out}");

    let img = ConvertedImage::open(&ImageRef::parse(&oci(&dst, "conv")).unwrap()).unwrap();
    let src_img = ConvertedImage::open(&ImageRef::parse(&oci(&src, "v1")).unwrap()).unwrap();
    assert_eq!(
        img.manifest.config(),
        src_img.manifest.config(),
        "the config is the original, unchanged"
    );
    let store: Arc<dyn BlockStore> = Arc::new(LocalStore::open(&store_dir).unwrap());
    let dbdir = tmp.path().join("db");
    let db = LayerDb::open(&dbdir).unwrap();
    for (i, (desc, layer)) in img.manifest.layers().iter().zip(&layers).enumerate() {
        let ann = desc.annotations().clone().unwrap();
        assert_eq!(ann[ANNOTATION_INDEX], desc.digest().to_string());
        assert_eq!(ann[ANNOTATION_SOURCE_DIGEST], written.layer_digests[i]);
        assert_eq!(
            desc.media_type().to_string(),
            "application/vnd.oci.image.layer.slayerfs.index.v1"
        );
        let index = img.layer_index(desc).unwrap();
        assert_eq!(index.source_digest, written.layer_digests[i]);
        assert_layer_matches(&index, layer, &store).await;
        // The store holds the same index blob, for nodes that only know the digest.
        let digest: IndexDigest = desc.digest().to_string().parse().unwrap();
        let from_store = slayerfs_chunkstore::fetch_index(store.as_ref(), &digest)
            .await
            .unwrap();
        assert_eq!(
            slayerfs_layerfs::index::decode_index(&from_store).unwrap(),
            index
        );
        // Loaded into sled, the tree is the index.
        let loaded = db.load_index(&digest, &index).unwrap();
        assert_eq!(
            db.export_index(&loaded).unwrap(),
            *index,
            "layer {i}: sled differs from the index"
        );
    }

    // `inspect --tree` shows every layer's entries, whiteouts included.
    let tree = assert_ok(&slayerfs(&["inspect", &oci(&dst, "conv"), "--tree"], &[]));
    assert!(tree.contains("/usr/bin/suid-link"), "{tree}");
    assert!(
        tree.contains("whiteout") && tree.contains("/etc/hosts"),
        "{tree}"
    );
    assert!(
        tree.contains("crw-rw-rw-") && tree.contains("1,3"),
        "{tree}"
    );
    assert!(tree.contains("-> /usr/share/zoneinfo/UTC"), "{tree}");
    assert!(tree.contains("[opaque]"), "{tree}");
    assert!(tree.contains("parts of 128 KiB, digests for"), "{tree}");

    // The same as JSON, for scripts: every layer, its index, its entries.
    let doc: serde_json::Value = serde_json::from_str(&assert_ok(&slayerfs(
        &["inspect", &oci(&dst, "conv"), "--tree", "--json"],
        &[],
    )))
    .expect("inspect --json prints one JSON document");
    let layers = doc["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), awkward_layers().len(), "{doc}");
    assert!(doc["manifest"].as_str().unwrap().starts_with("sha256:"));
    assert!(doc["chain_id"].as_str().unwrap().starts_with("sha256:"));
    let entries: Vec<&serde_json::Value> = layers
        .iter()
        .flat_map(|l| l["entries"].as_array().expect("entries with --tree"))
        .collect();
    let find = |path: &str, what: &str| {
        entries
            .iter()
            .find(|e| e["path"] == path && e.get(what).is_some())
            .unwrap_or_else(|| panic!("no {path} with {what} in {doc}"))
    };
    assert_eq!(find("/etc/hosts", "whiteout")["whiteout"], true);
    assert_eq!(find("/dev/null", "rdev")["rdev"], serde_json::json!([1, 3]));
    assert_eq!(find("/dev/null", "rdev")["kind"], "char_device");
    assert!(entries.iter().any(|e| e["opaque"] == true), "{doc}");
    assert!(
        entries
            .iter()
            .any(|e| e["target"] == "/usr/share/zoneinfo/UTC" && e["kind"] == "symlink"),
        "{doc}"
    );
    for l in layers {
        assert_eq!(l["converted"], true);
        assert_eq!(l["index"]["part_size"], 131072, "{l}");
        assert!(l["source_digest"].as_str().unwrap().starts_with("sha256:"));
    }
    let inodes: u64 = layers
        .iter()
        .map(|l| l["index"]["inodes"].as_u64().unwrap())
        .sum();
    let nodes = entries.iter().filter(|e| e.get("ino").is_some()).count() as u64;
    // A hard link is one inode at two paths.
    assert!(nodes >= inodes, "{nodes} entries for {inodes} inodes");

    // The same image again: nothing new is written, the manifest is the same.
    let blocks_before = count_files(&store_dir.join("blocks"));
    let again = assert_ok(&slayerfs(
        &[
            "convert",
            &oci(&src, "v1"),
            &oci(&dst, "again"),
            "--store",
            store_dir.to_str().unwrap(),
        ],
        &[],
    ));
    let (w, p) = blocks_line(&again);
    assert_eq!((w, p), (0, written_blocks), "{again}");
    assert_eq!(count_files(&store_dir.join("blocks")), blocks_before);
    let manifest_of = |s: &str| {
        s.lines()
            .find(|l| l.contains("manifest"))
            .map(str::to_string)
    };
    assert_eq!(
        manifest_of(&out),
        manifest_of(&again),
        "conversion is deterministic"
    );
    // The summary as JSON, for scripts: the same figures.
    let summary: serde_json::Value = serde_json::from_str(&assert_ok(&slayerfs(
        &[
            "convert",
            "-q",
            "--json",
            &oci(&src, "v1"),
            &oci(&dst, "json"),
            "--store",
            store_dir.to_str().unwrap(),
        ],
        &[],
    )))
    .expect("convert --json prints one JSON object");
    assert_eq!(summary["blocks_written"], 0, "{summary}");
    assert_eq!(summary["blocks_present"], written_blocks, "{summary}");
    assert_eq!(summary["layers"], awkward_layers().len(), "{summary}");
    assert!(
        manifest_of(&out).is_some_and(|l| l.contains(summary["manifest"].as_str().unwrap())),
        "{summary}"
    );
    // Both tags are in the destination layout.
    assert!(ConvertedImage::open(&ImageRef::parse(&oci(&dst, "conv")).unwrap()).is_ok());
}

#[test]
fn two_images_sharing_a_large_file_store_it_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    let shared = noise(10 << 20, 42); // three blocks: 4 + 4 + 2 MiB
    let image = |extra: &str, seed| {
        vec![FLayer {
            entries: vec![
                FEntry::new("opt/model.bin", FKind::File(shared.clone())),
                FEntry::new(format!("etc/{extra}"), FKind::File(noise(5000, seed))),
            ],
            compression: Compression::Gzip,
        }]
    };
    write_image(&tmp.path().join("a"), "v1", &image("a", 1)).unwrap();
    write_image(&tmp.path().join("b"), "v1", &image("b", 2)).unwrap();
    let s = store_dir.to_str().unwrap();
    let a = assert_ok(&slayerfs(
        &[
            "convert",
            &oci(&tmp.path().join("a"), "v1"),
            &oci(&tmp.path().join("out"), "a"),
            "--store",
            s,
        ],
        &[],
    ));
    let b = assert_ok(&slayerfs(
        &[
            "convert",
            &oci(&tmp.path().join("b"), "v1"),
            &oci(&tmp.path().join("out"), "b"),
            "--store",
            s,
        ],
        &[],
    ));
    assert_eq!(blocks_line(&a), (4, 0), "{a}");
    assert_eq!(
        blocks_line(&b),
        (1, 3),
        "only the small file's pack is new: {b}"
    );
    assert_eq!(count_files(&store_dir.join("blocks")), 5);
}

/// A failed conversion names the layer and the entry, exits non-zero, and
/// leaves the destination as it was (absent, or with its old tags only).
#[test]
fn bad_layers_fail_cleanly_and_publish_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    let s = store_dir.to_str().unwrap();
    let good = raw_tar(&[(b"ok", tar::EntryType::Regular, b"fine", b"")]);
    let cases: Vec<(&str, Vec<u8>, Compression, &str)> = vec![
        (
            "whiteout of its own entry",
            slayerfs_integration::fixtures::compress(
                &raw_tar(&[
                    (b"etc/shadow", tar::EntryType::Regular, b"x", b""),
                    (b"etc/.wh.shadow", tar::EntryType::Regular, b"", b""),
                ]),
                Compression::Gzip,
            ),
            Compression::Gzip,
            "`etc/.wh.shadow`: whiteout of `etc/shadow`, which this layer already has",
        ),
        (
            "missing link",
            raw_tar(&[(b"l", tar::EntryType::Link, b"", b"nowhere")]),
            Compression::None,
            "hardlink target `nowhere` does not exist",
        ),
        (
            "root whiteout",
            raw_tar(&[(b"./.wh..", tar::EntryType::Regular, b"", b"")]),
            Compression::None,
            "whiteout of the layer root",
        ),
        (
            "truncated gzip",
            {
                let gz = slayerfs_integration::fixtures::compress(
                    &raw_tar(&[(b"big", tar::EntryType::Regular, &noise(300_000, 5), b"")]),
                    Compression::Gzip,
                );
                gz[..gz.len() / 2].to_vec()
            },
            Compression::Gzip,
            "cannot decompress (tar+gzip)",
        ),
        (
            // 10 KiB of data under a header that claims 4 EiB: nothing may
            // be sized from the claim (this once aborted the converter
            // trying to allocate for it).
            "size that lies",
            {
                let mut h = tar::Header::new_gnu();
                h.set_path("huge").unwrap();
                h.set_mode(0o644);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(1 << 62);
                h.set_cksum();
                let mut t = h.as_bytes().to_vec();
                t.extend_from_slice(&noise(10 << 10, 9));
                t
            },
            Compression::None,
            "entry #1 `huge`: corrupt or truncated tar: file data ends early",
        ),
        (
            "corrupt header",
            {
                let mut t = raw_tar(&[(b"a", tar::EntryType::Regular, b"x", b"")]);
                t[150] ^= 0x11;
                t
            },
            Compression::None,
            "entry #1",
        ),
    ];
    // An existing destination with a good image must survive every failure.
    let dst = tmp.path().join("dst");
    let good_src = tmp.path().join("good");
    write_image_blobs(&good_src, "v1", &[(good.clone(), Compression::None)]).unwrap();
    assert_ok(&slayerfs(
        &[
            "convert",
            &oci(&good_src, "v1"),
            &oci(&dst, "good"),
            "--store",
            s,
        ],
        &[],
    ));
    let index_json = std::fs::read(dst.join("index.json")).unwrap();
    for (what, blob, c, expect) in cases {
        let src = tmp.path().join(format!("src-{}", what.replace(' ', "-")));
        // A good lower layer first: its blocks land, but nothing is published.
        let written =
            write_image_blobs(&src, "v1", &[(good.clone(), Compression::None), (blob, c)]).unwrap();
        for target in [
            tmp.path().join(format!("fresh-{}", what.replace(' ', "-"))),
            dst.clone(),
        ] {
            let o = slayerfs(
                &[
                    "convert",
                    &oci(&src, "v1"),
                    &oci(&target, "bad"),
                    "--store",
                    s,
                ],
                &[],
            );
            let (_, err) = text(&o);
            assert!(!o.status.success(), "{what}: succeeded");
            assert!(err.contains(expect), "{what}: `{err}` lacks `{expect}`");
            assert!(
                err.contains(&written.layer_digests[1]),
                "{what}: `{err}` does not name the layer"
            );
            let messages: Vec<&str> = err.lines().filter(|l| l.starts_with("slayerfs:")).collect();
            assert_eq!(messages.len(), 1, "{what}: one message, got `{err}`");
            assert!(
                messages[0].contains(expect),
                "{what}: the message itself lacks `{expect}`"
            );
            if target == dst {
                assert_eq!(
                    std::fs::read(dst.join("index.json")).unwrap(),
                    index_json,
                    "{what}: destination changed"
                );
            } else {
                assert!(!target.exists(), "{what}: a fresh destination was created");
            }
        }
    }
    // A blob whose bytes do not match its digest is refused too.
    let src = tmp.path().join("tampered");
    let w = write_image_blobs(&src, "v1", &[(good.clone(), Compression::None)]).unwrap();
    let blob_path = src.join("blobs/sha256").join(&w.layer_digests[0][7..]);
    let mut bytes = std::fs::read(&blob_path).unwrap();
    bytes[600] ^= 1;
    std::fs::write(&blob_path, bytes).unwrap();
    let o = slayerfs(
        &[
            "convert",
            &oci(&src, "v1"),
            &oci(&tmp.path().join("t-out"), "x"),
            "--store",
            s,
        ],
        &[],
    );
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("the layer blob is sha256:"),
        "{err}"
    );
    assert!(!tmp.path().join("t-out").exists());
}

#[test]
fn config_errors_name_the_key_and_refs_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "[convert]\nzstd_level = 99\n").unwrap();
    let o = slayerfs(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "convert",
            "oci:/a:b",
            "oci:/c:d",
        ],
        &[],
    );
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("convert.zstd_level"),
        "{err}"
    );
    let o = slayerfs(
        &["convert", "/plain/path", "oci:/c:d", "--store", "/tmp/x"],
        &[],
    );
    assert!(text(&o).1.contains("no transport"), "{}", text(&o).1);
    let o = slayerfs(
        &[
            "convert",
            "oci:/does/not/exist:v1",
            "oci:/c:d",
            "--store",
            tmp.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        text(&o).1.contains("not an OCI image layout"),
        "{}",
        text(&o).1
    );
}

/// `--prefetch-list`: the listed small files, spread through a layer of
/// 400 files, are packed together into the fewest blocks they fill, and the
/// index lists them in the list's order; a list that is not one is refused
/// before anything is written.
#[test]
fn a_prefetch_list_packs_its_files_together() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let store = tmp.path().join("store");
    let mut entries = vec![FEntry::new("app", FKind::Dir)];
    for i in 0..400 {
        entries.push(FEntry::new(
            format!("app/f{i:03}"),
            FKind::File(noise(40_000, i as u64 + 1)),
        ));
    }
    write_image(
        &src,
        "v1",
        &[FLayer {
            entries,
            compression: Compression::Gzip,
        }],
    )
    .unwrap();
    // Every 20th file, listed backwards: 20 files, 800 kB, one block's worth.
    let listed: Vec<String> = (0..400)
        .rev()
        .step_by(20)
        .map(|i| format!("/app/f{i:03}"))
        .collect();
    let list = tmp.path().join("list.txt");
    std::fs::write(&list, format!("# a start\n{}\n", listed.join("\n"))).unwrap();

    let blocks_of = |tag: &str| -> (usize, Vec<u64>, Vec<String>) {
        let img =
            ConvertedImage::open(&ImageRef::parse(&oci(&tmp.path().join("dst"), tag)).unwrap())
                .unwrap();
        let index = img.layer_index(&img.manifest.layers()[0]).unwrap();
        let root = &index.inodes[0];
        let app = root.children.iter().find(|d| d.name == b"app").unwrap().ino;
        let names: std::collections::HashMap<u64, String> = index.inodes[(app - 1) as usize]
            .children
            .iter()
            .map(|d| (d.ino, format!("/app/{}", String::from_utf8_lossy(&d.name))))
            .collect();
        let blocks: std::collections::BTreeSet<u32> = names
            .iter()
            .filter(|(_, n)| listed.contains(n))
            .flat_map(|(ino, _)| {
                index.inodes[(*ino - 1) as usize]
                    .slices
                    .iter()
                    .map(|s| s.block)
            })
            .collect();
        let order = index
            .prefetch
            .iter()
            .map(|ino| names[ino].clone())
            .collect();
        (blocks.len(), index.prefetch.clone(), order)
    };
    let store_arg = store.to_str().unwrap();
    assert_ok(&slayerfs(
        &[
            "convert",
            "-q",
            &oci(&src, "v1"),
            &oci(&tmp.path().join("dst"), "plain"),
            "--store",
            store_arg,
        ],
        &[],
    ));
    let (spread, none, _) = blocks_of("plain");
    assert!(
        spread >= 4,
        "without a list the files lie in {spread} blocks"
    );
    assert!(none.is_empty());

    let list_arg = list.to_str().unwrap();
    assert_ok(&slayerfs(
        &[
            "convert",
            "-q",
            &oci(&src, "v1"),
            &oci(&tmp.path().join("dst"), "listed"),
            "--store",
            store_arg,
            "--prefetch-list",
            list_arg,
        ],
        &[],
    ));
    let (together, _, order) = blocks_of("listed");
    assert_eq!(together, 1, "800 kB of listed files fill one block");
    assert_eq!(order, listed, "the index lists them in the list's order");
    let tree = assert_ok(&slayerfs(
        &["inspect", &oci(&tmp.path().join("dst"), "listed"), "--tree"],
        &[],
    ));
    assert!(tree.contains("20 files to fetch first"), "{tree}");

    // Not a list: an error naming the line, nothing converted.
    std::fs::write(&list, b"/app/f001\n/app/\0bad\n").unwrap();
    let out = slayerfs(
        &[
            "convert",
            "-q",
            &oci(&src, "v1"),
            &oci(&tmp.path().join("dst"), "bad"),
            "--store",
            store_arg,
            "--prefetch-list",
            list_arg,
        ],
        &[],
    );
    assert!(!out.status.success());
    let (_, err) = text(&out);
    assert!(err.contains("line 2"), "{err}");
    assert!(ImageRef::parse(&oci(&tmp.path().join("dst"), "bad"))
        .ok()
        .and_then(|r| ConvertedImage::open(&r).ok())
        .is_none());
}
