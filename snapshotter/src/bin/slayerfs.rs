//! `slayerfs`: convert images into SlayerFS blocks and indexes, inspect
//! converted images, and mount them.
// The argument docs are clap's help text (`oci:DIR[:TAG]`), not links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use slayerfs_chunkstore::{open_store, WriterOptions};
use slayerfs_config::{Config, StoreLocation};
use slayerfs_layerfs::build::PrefetchList;
use slayerfs_snapshotter::cli::convert::{convert_image, LayerOptions, RegistrySide};
use slayerfs_snapshotter::cli::inspect_report::{inspect, InspectOptions};
use slayerfs_snapshotter::cli::progress::ProgressMode;
use slayerfs_snapshotter::cli::pull::{pull, PullOptions};
use slayerfs_snapshotter::cli::summary::{Converted, Pulled};
use slayerfs_snapshotter::cli::{mount, upper_dir};
use slayerfs_snapshotter::fusemount;
use slayerfs_snapshotter::image::converted::ConvertedImage;
use slayerfs_snapshotter::image::reference::ImageRef;
use slayerfs_snapshotter::image::registry::RegistryOptions;
use slayerfs_snapshotter::store_args::StoreArgs;

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

#[derive(Subcommand)]
enum Command {
    /// Convert an OCI image into blocks and layer indexes.
    Convert {
        /// Source image: oci:DIR[:TAG] or docker://REF.
        src: String,
        /// Destination for the converted image: oci:DIR[:TAG] or docker://REF.
        dst: String,
        /// Only this platform of a multi-platform source (os/arch[/variant]);
        /// default: every platform.
        #[arg(long)]
        platform: Option<String>,
        /// Plain HTTP for every registry (localhost and 127.0.0.1 always are).
        #[arg(long)]
        insecure: bool,
        /// Registry credentials USER:PASS (else ~/.docker/config.json).
        #[arg(long)]
        creds: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        /// zstd level for blocks (1..=19).
        #[arg(long)]
        zstd_level: Option<i32>,
        /// Threads hashing and compressing blocks (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Files a container reads first, one path per line in the order it
        /// reads them, or a trace of a start taken from the store: packed
        /// together into as few blocks as they fill, and recorded in the
        /// layer indexes for nodes to fetch first.
        #[arg(long, value_name = "FILE")]
        prefetch_list: Option<PathBuf>,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
        /// The closing summary as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Pull an image into containerd, lazily for converted images (what
    /// nerdctl pull does): then `ctr run --snapshotter slayerfs REF …`.
    Pull {
        /// Image reference, e.g. registry.example/app:1 or 127.0.0.1:5000/app:1.
        reference: String,
        /// containerd's socket.
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        address: PathBuf,
        /// containerd namespace.
        #[arg(
            long,
            short = 'n',
            env = "CONTAINERD_NAMESPACE",
            default_value = "default"
        )]
        namespace: String,
        /// Snapshotter to pull into.
        #[arg(long, default_value = "slayerfs")]
        snapshotter: String,
        /// Platform to pick from a multi-platform image (os/arch).
        #[arg(long, default_value_t = default_platform())]
        platform: String,
        /// Plain HTTP for every registry (localhost and 127.0.0.1 always are).
        #[arg(long)]
        insecure: bool,
        /// Registry credentials USER:PASS (else ~/.docker/config.json).
        #[arg(long)]
        creds: Option<String>,
        /// Only the closing line.
        #[arg(short, long)]
        quiet: bool,
        /// The closing summary as one JSON object on stdout (progress
        /// lines go to stderr).
        #[arg(long)]
        json: bool,
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
        /// What a node fetches ahead: each layer's prefetch list, and the
        /// traces of recorded starts in the store (files, bytes, blocks).
        #[arg(long)]
        prefetch: bool,
        /// Write the merge of the image's stored traces to FILE (for
        /// `convert --prefetch-list`); implies --prefetch.
        #[arg(long, value_name = "FILE")]
        save_trace: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
        /// Everything shown as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Serve a converted image as a directory (read-only unless --rw).
    ///
    /// Stays in the foreground until unmounted (fusermount3 -u MOUNTPOINT,
    /// SIGINT or SIGTERM); --daemon returns once the mount is in place.
    Mount {
        /// Image: oci:DIR[:TAG].
        src: String,
        /// Directory to mount on.
        mountpoint: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// Writable: changes go to the upper layer in --upper.
        #[arg(long, requires = "upper")]
        rw: bool,
        /// Upper layer directory (created if missing; kept across mounts).
        #[arg(long, requires = "rw")]
        upper: Option<PathBuf>,
        /// Detach once mounted.
        #[arg(long)]
        daemon: bool,
        /// With --daemon: where the detached process logs.
        #[arg(long)]
        log: Option<PathBuf>,
        /// Threads answering the kernel.
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
}

/// This machine's platform in OCI terms.
fn default_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("linux/{arch}")
}

/// Set for a detached mount process without a log: its stderr is silenced
/// once it is mounted (the parent has read what it said before).
const QUIET_ONCE_MOUNTED: &str = "SLAYERFS_QUIET_ONCE_MOUNTED";

/// The last `slayerfs: …` line a mount process wrote to `file`, without the
/// prefix.
fn last_error(file: &mut std::fs::File) -> Option<String> {
    use std::io::{Read, Seek};
    let len = file.seek(std::io::SeekFrom::End(0)).ok()?;
    // The tail is enough: the error is the last line written.
    file.seek(std::io::SeekFrom::Start(len.saturating_sub(64 << 10)))
        .ok()?;
    let mut text = String::new();
    file.take(64 << 10).read_to_string(&mut text).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("slayerfs: "))
        .map(str::to_string)
}

/// Silences this process's stderr (see [`QUIET_ONCE_MOUNTED`]).
fn quiet_stderr() {
    if std::env::var_os(QUIET_ONCE_MOUNTED).is_none() {
        return;
    }
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 2 of a valid open fd; nothing holds fd 2's
        // old file in a way this breaks.
        unsafe { libc::dup2(null.as_raw_fd(), 2) };
    }
}

/// Re-runs this command without `--daemon`, detached, and returns once its
/// mount is in place (or it failed, with what it said).
fn spawn_daemon(mountpoint: &std::path::Path, log: Option<&PathBuf>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("locating this program")?;
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut given = std::env::args_os().skip(1);
    while let Some(a) = given.next() {
        if a == "--log" {
            given.next();
        } else if a != "--daemon" && !a.as_encoded_bytes().starts_with(b"--log=") {
            args.push(a);
        }
    }
    let out = match log {
        Some(path) => std::process::Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the log {}", path.display()))?,
        ),
        None => std::process::Stdio::null(),
    };
    // What the mount process says before it is mounted reaches the user:
    // its stderr is the log, or a file of ours it silences once mounted.
    let err_file = match log {
        Some(path) => std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening the log {}", path.display()))?,
        None => tempfile::tempfile().context("creating a file for the mount's messages")?,
    };
    let mut err_read = err_file.try_clone()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err_file);
    if log.is_none() {
        cmd.env(QUIET_ONCE_MOUNTED, "1");
    }
    // SAFETY: setsid is async-signal-safe; it detaches the child from our
    // session so that it outlives the terminal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the mount process")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait()? {
            let said = last_error(&mut err_read);
            anyhow::bail!(
                "the mount process exited ({status}) before mounting{}{}",
                said.map(|s| format!(": {s}")).unwrap_or_default(),
                log.map(|l| format!(" (log: {})", l.display()))
                    .unwrap_or_default()
            );
        }
        if fusemount::is_mount_point(mountpoint)? {
            println!("mounted at {} (pid {})", mountpoint.display(), child.id());
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the mount process (pid {}) did not mount within 120 s",
                child.id()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn load_config(path: Option<&PathBuf>, store: Option<&StoreArgs>) -> anyhow::Result<Config> {
    let mut config = Config::load(path.map(PathBuf::as_path))?;
    if let Some(args) = store {
        args.apply(&mut config);
    }
    config.validate().context("invalid settings")?;
    Ok(config)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Convert {
            src,
            dst,
            platform,
            insecure,
            creds,
            store,
            zstd_level,
            workers,
            prefetch_list,
            quiet,
            json,
        } => {
            let mut config = load_config(cli.config.as_ref(), Some(&store))?;
            let prefetch = match &prefetch_list {
                Some(path) => read_prefetch_list(path)?,
                None => PrefetchList::default(),
            };
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
                part_size: slayerfs_chunkstore::PartSize::new(config.convert.part_kib << 10)
                    .context("convert.part_kib")?,
            };
            let progress = if quiet {
                ProgressMode::Quiet
            } else {
                ProgressMode::detect()
            };
            let registry = RegistrySide {
                options: RegistryOptions {
                    insecure,
                    creds,
                    config: config.registry.clone(),
                },
                platform,
            };
            let how = LayerOptions {
                writer: opts,
                prefetch: Arc::new(prefetch),
            };
            let s = convert_image(&src_ref, &dst_ref, store, &how, progress, &registry)
                .await
                .with_context(|| format!("converting {src}"))?;
            Converted::new(&src, &dst, location.to_string(), &s)
                .print(json, &mut std::io::stdout().lock())?;
        }
        Command::Inspect {
            src,
            tree,
            layer,
            prefetch,
            save_trace,
            store,
            json,
        } => {
            let img = ConvertedImage::open(&ImageRef::parse(&src)?)?;
            let prefetch = match prefetch || save_trace.is_some() {
                true => {
                    let config = load_config(cli.config.as_ref(), Some(&store))?;
                    Some(open_store(&config.store_location(), &config).await?)
                }
                false => None,
            };
            let opts = InspectOptions {
                tree,
                layer,
                prefetch,
                save_trace: save_trace.as_deref(),
                json,
            };
            inspect(&img, &opts, &mut std::io::stdout().lock()).await?;
        }
        Command::Pull {
            reference,
            address,
            namespace,
            snapshotter,
            platform,
            insecure,
            creds,
            quiet,
            json,
        } => {
            let config = load_config(cli.config.as_ref(), None)?;
            let opts = PullOptions {
                address,
                namespace,
                snapshotter,
                platform,
                registry: RegistryOptions {
                    insecure,
                    creds,
                    config: config.registry,
                },
            };
            let report = pull(&reference, &opts, |line| match (quiet, json) {
                (true, _) => {}
                (false, false) => println!("{line}"),
                (false, true) => eprintln!("{line}"),
            })
            .await?;
            Pulled::new(&report).print(json, &mut std::io::stdout().lock())?;
        }
        Command::Mount {
            src,
            mountpoint,
            store,
            rw: _,
            upper,
            daemon: _,
            log: _,
            threads,
        } => {
            let config = load_config(cli.config.as_ref(), Some(&store))?;
            let mountpoint = fusemount::check_mountpoint(&mountpoint)?;
            let image = ConvertedImage::open(&ImageRef::parse(&src)?)?;
            let location = config.store_location();
            let store = open_store(&location, &config).await?;
            let rootfs = mount::image_rootfs(
                &image,
                store,
                &config,
                upper.as_deref(),
                tokio::runtime::Handle::current(),
            )
            .with_context(|| format!("preparing {src}"))?;
            let opts = slayerfs_layerfs::fuse::MountOptions {
                threads,
                fs_name: format!("slayerfs:{src}"),
                ..Default::default()
            };
            let mode = match &upper {
                Some(dir) => format!("read-write, upper {}", dir.display()),
                None => "read-only".to_string(),
            };
            let served = fusemount::serve(std::sync::Arc::new(rootfs), &mountpoint, opts, || {
                if let Some(dir) = &upper {
                    if let Err(e) = upper_dir::record_mount(dir, &mountpoint) {
                        tracing::warn!("{e:#}");
                    }
                }
                eprintln!(
                    "slayerfs: {src} mounted at {} ({mode}); unmount with `fusermount3 -u {}` or Ctrl-C",
                    mountpoint.display(),
                    mountpoint.display()
                );
                quiet_stderr();
            })
            .await;
            if let Some(dir) = &upper {
                upper_dir::clear_mount(dir);
            }
            served?;
            eprintln!("slayerfs: {} unmounted", mountpoint.display());
        }
    }
    Ok(())
}

/// The error and its causes on one line, each cause once.
fn one_line(e: &anyhow::Error) -> String {
    slayerfs_chunkstore::error_chain(e.as_ref())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Mount {
        daemon: true,
        mountpoint,
        log,
        ..
    } = &cli.command
    {
        // Detach before any thread exists: the mount runs in a fresh
        // process of its own.
        return match spawn_daemon(mountpoint, log.as_ref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("slayerfs: {}", one_line(&e));
                ExitCode::FAILURE
            }
        };
    }
    let default_level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    slayerfs_snapshotter::process::tune_allocator();
    slayerfs_snapshotter::process::init_logging(default_level);
    slayerfs_snapshotter::process::init_tls();
    let runtime = match slayerfs_snapshotter::process::runtime() {
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

/// The prefetch list at `path`, read within its size limit.
fn read_prefetch_list(path: &std::path::Path) -> anyhow::Result<PrefetchList> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening the prefetch list {}", path.display()))?;
    let mut text = Vec::new();
    let limit = slayerfs_layerfs::build::prefetch_list::MAX_LIST_BYTES as u64 + 1;
    file.take(limit)
        .read_to_end(&mut text)
        .with_context(|| format!("reading the prefetch list {}", path.display()))?;
    slayerfs_layerfs::trace::list_or_trace(&text)
        .with_context(|| format!("the prefetch list {}", path.display()))
}
