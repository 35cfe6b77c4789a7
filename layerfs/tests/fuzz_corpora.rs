//! The fuzz targets' corpora and every crash they found, replayed through
//! the same checks as ordinary tests, so CI runs them without a nightly
//! toolchain.

use slayerfs_layerfs::fuzzing::{index_blob, layer_blob, replay, trace_blob};

#[test]
fn index_blob_inputs_decode_or_fail_cleanly() {
    replay("index_blob", index_blob);
}

#[test]
fn layer_blob_inputs_convert_or_fail_cleanly() {
    replay("layer_blob", layer_blob);
}

#[test]
fn trace_blob_inputs_decode_or_fail_cleanly() {
    replay("trace_blob", trace_blob);
}
