//! Stored trace blobs from outside (see `slayerfs_layerfs::fuzzing::trace_blob`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| slayerfs_layerfs::fuzzing::trace_blob(data));
