//! The `list_filter` fuzz target's corpus and every crash it found,
//! replayed as an ordinary test.

#[test]
fn list_filter_inputs_parse_or_fail_cleanly() {
    slayerfs_layerfs::fuzzing::replay(
        "list_filter",
        slayerfs_snapshotter::daemon::filters::fuzz_one,
    );
}
