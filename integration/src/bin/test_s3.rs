//! `slayerfs-test-s3 --root DIR [--port N] [--bucket NAME…]`: the S3 server
//! the tests and benchmarks use, as a process. Prints `listening on ADDR`
//! once it accepts connections; access key `slayerfs-test`, secret
//! `slayerfs-test-secret`. Loopback only.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use slayerfs_integration::s3::{serve, Counters};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    root: PathBuf,
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Buckets to create.
    #[arg(long)]
    bucket: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for b in &args.bucket {
        std::fs::create_dir_all(args.root.join(b))?;
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    println!("listening on {}", listener.local_addr()?);
    tokio::select! {
        res = serve(&args.root, listener, Arc::new(Counters::default())) => res,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
