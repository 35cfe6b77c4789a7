//! `slayerfs-test-s3 --root DIR [--port N] [--bucket NAME…] [--stats FILE]`:
//! the S3 server the tests and benchmarks use, as a process. Prints
//! `listening on ADDR` once it accepts connections; access key
//! `slayerfs-test`, secret `slayerfs-test-secret`. Loopback only. With
//! `--stats`, FILE holds `gets heads puts get_bytes` (the server's counts so
//! far), rewritten every 100 ms.

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
    /// Where to keep the request counters.
    #[arg(long)]
    stats: Option<PathBuf>,
}

/// Rewrites `path` with the counters every 100 ms (atomically: a reader
/// never sees half a line).
async fn keep_stats(path: PathBuf, c: Arc<Counters>) {
    use std::sync::atomic::Ordering::Relaxed;
    let tmp = path.with_extension("tmp");
    loop {
        let line = format!(
            "{} {} {} {}\n",
            c.gets.load(Relaxed),
            c.heads.load(Relaxed),
            c.puts.load(Relaxed),
            c.get_bytes.load(Relaxed)
        );
        if std::fs::write(&tmp, line).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for b in &args.bucket {
        std::fs::create_dir_all(args.root.join(b))?;
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    println!("listening on {}", listener.local_addr()?);
    let counters = Arc::new(Counters::default());
    if let Some(path) = args.stats {
        tokio::spawn(keep_stats(path, counters.clone()));
    }
    tokio::select! {
        res = serve(&args.root, listener, counters) => res,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
