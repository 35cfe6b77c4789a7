//! Fixtures and real-server helpers for SlayerFS's end-to-end tests.
//!
//! Owns what the tests in `tests/` start and build: an S3 server on
//! 127.0.0.1 (the `s3s-fs` implementation, in-process or as the
//! `slayerfs-test-s3` binary), a fault-injecting proxy to put in front of
//! it, OCI image layouts with awkward layers, and the
//! location of the project's binaries. It tests nothing itself.

pub mod bins;
pub mod cri;
pub mod daemon;
pub mod docker;
pub mod fault_proxy;
pub mod fixtures;
pub mod mount;
pub mod prometheus;
pub mod runtime;
pub mod s3;
pub mod snapshots_api;
pub mod tree;
pub mod workload;
