// Generates the CRI client the tests drive containerd with, from the
// subset in proto/cri.proto; needs `protoc` (Debian `protobuf-compiler`,
// installed by scripts/install-deps.sh).
fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    tonic_build::configure()
        .build_server(false)
        .compile(&["proto/cri.proto"], &["proto"])
}
