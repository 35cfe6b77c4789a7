//! `slayerfs`: convert images into SlayerFS blocks and indexes, and inspect
//! converted images.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use slayerfs_chunkstore::{open_store, WriterOptions};
use slayerfs_config::{Config, StoreLocation};
use slayerfs_snapshotter::convert::convert_image;
use slayerfs_snapshotter::image_ref::ImageRef;
use slayerfs_snapshotter::inspect::{print_layers, print_tree, ConvertedImage};
use slayerfs_snapshotter::progress::{human_bytes, ProgressMode};

#[derive(Parser)]
#[command(
    name = "slayerfs",
    version,
    about = "SlayerFS: lazily pulled container images"
)]
struct Cli {
    /// Configuration file (default /etc/slayerfs/config.toml, if present).
    #[arg(long, global = true, env = "SLAYERFS_CONFIG")]
    config: Option<PathBuf>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Where blocks go; overrides the config file.
#[derive(clap::Args)]
struct StoreArgs {
    /// Block store: a directory or s3://BUCKET[/PREFIX] (default from the
    /// config, else <state_dir>/store).
    #[arg(long)]
    store: Option<String>,
    /// S3 endpoint URL, e.g. http://127.0.0.1:9000.
    #[arg(long)]
    s3_endpoint: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Convert an OCI image into blocks and layer indexes.
    Convert {
        /// Source image: oci:DIR[:TAG].
        src: String,
        /// Destination for the converted image: oci:DIR[:TAG].
        dst: String,
        #[command(flatten)]
        store: StoreArgs,
        /// zstd level for blocks (1..=19).
        #[arg(long)]
        zstd_level: Option<i32>,
        /// Threads hashing and compressing blocks (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show the layers of a converted image, and with --tree every entry.
    Inspect {
        /// Image: oci:DIR[:TAG].
        src: String,
        /// Print every entry of every layer index.
        #[arg(long)]
        tree: bool,
        /// Only this layer (1 = bottom).
        #[arg(long)]
        layer: Option<usize>,
    },
}

fn load_config(path: Option<&PathBuf>, store: Option<&StoreArgs>) -> anyhow::Result<Config> {
    let mut config = Config::load(path.map(PathBuf::as_path))?;
    if let Some(args) = store {
        if let Some(s) = &args.store {
            config.store.url = Some(s.clone());
        }
        if let Some(ep) = &args.s3_endpoint {
            config.store.s3.endpoint = Some(ep.clone());
        }
    }
    config.validate().context("invalid settings")?;
    Ok(config)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Convert {
            src,
            dst,
            store,
            zstd_level,
            workers,
            quiet,
        } => {
            let mut config = load_config(cli.config.as_ref(), Some(&store))?;
            if let Some(l) = zstd_level {
                config.convert.zstd_level = l;
            }
            if let Some(w) = workers {
                config.convert.workers = w;
            }
            config.validate().context("invalid settings")?;
            let src_ref = ImageRef::parse(&src)?;
            let dst_ref = ImageRef::parse(&dst)?;
            let location = config.store_location();
            if let StoreLocation::S3 { .. } = location {
                if config.store.s3.endpoint.is_none() {
                    tracing::info!("no S3 endpoint given; using AWS's");
                }
            }
            let store = open_store(&location, &config).await?;
            let opts = WriterOptions {
                workers: config.convert_workers(),
                zstd_level: config.convert.zstd_level,
            };
            let progress = if quiet {
                ProgressMode::Quiet
            } else {
                ProgressMode::detect()
            };
            let s = convert_image(&src_ref, &dst_ref, store, opts, progress)
                .await
                .with_context(|| format!("converting {src}"))?;
            println!("converted {src} -> {dst}");
            println!("  manifest  {}", s.manifest_digest);
            println!("  store     {location}");
            println!("  layers    {}", s.layers);
            println!("  entries   {}", s.entries);
            println!(
                "  bytes in  {} ({} uncompressed)",
                human_bytes(s.bytes_in),
                human_bytes(s.tar_bytes)
            );
            println!(
                "  blocks    {} written, {} already present ({} stored)",
                s.blocks_written,
                s.blocks_present,
                human_bytes(s.stored_bytes)
            );
            println!("  indexes   {}", human_bytes(s.index_bytes));
            println!(
                "  speed     {:.1} MB/s over {:.2} s",
                s.mb_per_s(),
                s.elapsed.as_secs_f64()
            );
        }
        Command::Inspect { src, tree, layer } => {
            let img = ConvertedImage::open(&ImageRef::parse(&src)?)?;
            let mut out = std::io::stdout().lock();
            print_layers(&img, &mut out)?;
            let layers = img.manifest.layers();
            if let Some(n) = layer {
                if n == 0 || n > layers.len() {
                    anyhow::bail!("--layer {n}: the image has layers 1 to {}", layers.len());
                }
            }
            if tree || layer.is_some() {
                for (i, d) in layers.iter().enumerate() {
                    if layer.is_some_and(|n| n != i + 1) {
                        continue;
                    }
                    let index = img.layer_index(d)?;
                    use std::io::Write;
                    writeln!(
                        out,
                        "\nlayer {} {} ({} inodes, {} blocks)",
                        i + 1,
                        d.digest(),
                        index.inodes.len(),
                        index.blocks.len()
                    )?;
                    print_tree(&index, &mut out)?;
                }
            }
        }
    }
    Ok(())
}

/// The error and its causes on one line, each cause once: a message that
/// already quotes its cause does not get it appended again.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg = format!("{msg}: {c}");
        }
    }
    msg
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("slayerfs: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // After a failure, conversions of other layers may still be running;
    // their writes are atomic, so they are left behind, not waited for.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slayerfs: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}
