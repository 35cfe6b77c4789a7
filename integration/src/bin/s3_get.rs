//! `slayerfs-s3-get --endpoint URL --bucket B [--prefix P] --blocks DIR [--parallel N]`:
//! the raw-GET baseline of the filesystem benchmark. GETs every block whose
//! file is under DIR (the S3 server's own directory of the bucket's
//! `blocks/`) through the same S3 client the product uses, without decoding
//! or verifying, N requests at a time, in name order; prints the stored
//! bytes fetched and the seconds taken.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use slayerfs_chunkstore::{BlockId, BlockStore, ObjectKey, S3Store};
use slayerfs_config::S3Config;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    endpoint: String,
    #[arg(long)]
    bucket: String,
    /// The store's key prefix in the bucket.
    #[arg(long, default_value = "")]
    prefix: String,
    #[arg(long)]
    blocks: PathBuf,
    #[arg(long, default_value_t = 1)]
    parallel: usize,
}

fn block_ids(dir: &Path) -> anyhow::Result<Vec<BlockId>> {
    let mut ids = Vec::new();
    for sub in std::fs::read_dir(dir)? {
        for f in std::fs::read_dir(sub?.path())? {
            if let Some(id) = f?.file_name().to_str().and_then(|n| n.parse().ok()) {
                ids.push(id);
            }
        }
    }
    ids.sort();
    Ok(ids)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ids = block_ids(&args.blocks)?;
    let cfg = S3Config {
        endpoint: Some(args.endpoint.clone()),
        ..S3Config::default()
    };
    let store: Arc<dyn BlockStore> =
        Arc::new(S3Store::open(&args.bucket, &args.prefix, &cfg).await?);
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.parallel.max(1)));
    let mut tasks = Vec::new();
    for id in ids {
        let permit = sem.clone().acquire_owned().await?;
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            store
                .get(&ObjectKey::Block(id))
                .await
                .map(|b| b.len() as u64)
        }));
    }
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await??;
    }
    println!("{bytes} {:.3}", started.elapsed().as_secs_f64());
    Ok(())
}
