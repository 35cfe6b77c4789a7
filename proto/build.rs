// Generates Rust types from the .proto files; needs `protoc` (Debian
// `protobuf-compiler`, installed by scripts/test.sh and scripts/demo.sh).
fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    // Maps as BTreeMap: records encode the same way every time.
    prost_build::Config::new().btree_map(["."]).compile_protos(
        &[
            "proto/index.proto",
            "proto/store.proto",
            "proto/trace.proto",
        ],
        &["proto"],
    )
}
