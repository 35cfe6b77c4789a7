//! List filters from outside (see `slayerfs_snapshotter::daemon::filters::fuzz_one`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| slayerfs_snapshotter::daemon::filters::fuzz_one(data));
