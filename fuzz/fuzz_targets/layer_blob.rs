//! Layer blobs from outside (see `slayerfs_layerfs::fuzzing::layer_blob`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| slayerfs_layerfs::fuzzing::layer_blob(data));
