//! The properties the fuzz targets (`fuzz/`) check, one function each, so
//! that ordinary tests replay their corpora and every crash found: no bytes
//! from outside panic the index decoder or a layer import, and what either
//! accepts holds together. Enabled with the `test-support` feature.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use slayerfs_chunkstore::{BlockStore, MemoryStore, ObjectKey, WriterOptions};
use slayerfs_proto::index::LayerIndex;
use slayerfs_proto::Message;

use crate::build::{convert_layer, Expected};
use crate::index::{decode_index, encode_index, ValidIndex};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for fuzzing")
    })
}

/// An index blob from outside: the first byte picks a zstd blob (even) or
/// plain protobuf (odd, so the fuzzer reaches the validator without
/// having to find zstd frames). Whatever it is, the answer is an error or
/// an index that encodes and decodes back to itself.
pub fn index_blob(data: &[u8]) {
    let Some((pick, rest)) = data.split_first() else {
        return;
    };
    let valid = if pick % 2 == 0 {
        decode_index(rest).ok()
    } else {
        LayerIndex::decode(rest)
            .ok()
            .and_then(|i| ValidIndex::check(i).ok())
    };
    if let Some(valid) = valid {
        let index = valid.into_inner();
        let (_, blob) = encode_index(&index, 1).expect("encoding in memory");
        let again = decode_index(&blob).expect("an index we encoded decodes");
        assert_eq!(
            again.into_inner(),
            index,
            "an index changed in a round trip"
        );
    }
}

/// A stored trace from outside: the first byte picks the blob as it is
/// (even) or its rest as plain protobuf, compressed here (odd, so the
/// fuzzer reaches the checks without having to find zstd frames). The
/// answer is an error or a trace that encodes and decodes back to itself
/// and merges with itself into itself.
pub fn trace_blob(data: &[u8]) {
    use crate::trace::{decode_trace, encode_trace, merge};
    let Some((pick, rest)) = data.split_first() else {
        return;
    };
    let blob = if pick % 2 == 0 {
        rest.to_vec()
    } else {
        zstd::bulk::compress(rest, 1).expect("compressing in memory")
    };
    if let Ok(trace) = decode_trace(&blob) {
        let again = decode_trace(&encode_trace(&trace)).expect("a trace we encoded decodes");
        assert_eq!(again, trace, "a trace changed in a round trip");
        let merged = merge(&[trace.clone(), trace.clone()], usize::MAX);
        assert_eq!(merged, trace, "a trace merged with itself changed");
    }
}

/// A layer blob from outside (tar, gzip or zstd), converted into a store
/// in memory: an error, or a layer whose published index decodes.
pub fn layer_blob(data: &[u8]) {
    let store: Arc<dyn BlockStore> = Arc::new(MemoryStore::default());
    let opts = WriterOptions {
        workers: 1,
        zstd_level: 1,
        part_size: slayerfs_chunkstore::PartSize::DEFAULT,
    };
    let converted = runtime().block_on(convert_layer(
        Cursor::new(data.to_vec()),
        store.clone(),
        opts,
        "sha256:fuzz",
        Expected::default(),
    ));
    if let Ok(layer) = converted {
        let blob = runtime()
            .block_on(store.get(&ObjectKey::Index(layer.digest)))
            .expect("a converted layer's index is published");
        let decoded = decode_index(&blob).expect("a published index decodes");
        assert_eq!(decoded, layer.index, "the published index is the one built");
    }
}

/// The inputs kept for fuzz target `target` (its corpus and the crashes it
/// found, `fuzz/corpus/TARGET`, `fuzz/regressions/TARGET`), sorted.
pub fn kept_inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        files.extend(
            dir.flatten()
                .filter(|e| e.file_name() != "README")
                .map(|e| e.path())
                .filter(|p| p.is_file()),
        );
    }
    files.sort();
    files
}

/// Runs `check` on every input kept for `target`; panics naming the first
/// that fails, or if none is kept.
pub fn replay(target: &str, check: fn(&[u8])) {
    let inputs = kept_inputs(target);
    assert!(!inputs.is_empty(), "no inputs kept for {target}");
    for path in inputs {
        let data = std::fs::read(&path).expect("reading a kept input");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails {target}", path.display());
    }
}
