//! Where the project's binaries are: `SLAYERFS_BIN_DIR`, else the target
//! directory of this workspace for the profile the tests were built with.

use std::path::PathBuf;

/// The path of binary `name`; panics with a hint when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("SLAYERFS_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let profile = if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            };
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join(profile)
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: build the workspace binaries first (`cargo build --workspace --bins`) or set SLAYERFS_BIN_DIR",
        path.display()
    );
    path
}
