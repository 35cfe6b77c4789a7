//! `slayerfs-snapshotter --root DIR --address SOCKET [--config FILE]
//! [--unmount-on-exit]`: the containerd proxy snapshotter. Serves
//! containerd's snapshots gRPC API on a unix socket; all state lives under
//! `--root`. SIGTERM/SIGINT end the process and leave every snapshot
//! mounted, its FUSE connection held for the next start (which takes it
//! over: running containers only wait); with `--unmount-on-exit` they
//! unmount everything first.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use containerd_snapshots::tonic::transport::Server;
use slayerfs_chunkstore::{open_store, BlockStore, LocalStore};
use slayerfs_config::{Config, StoreLocation};
use slayerfs_fdstore::FdStore;
use slayerfs_snapshotter::daemon::Service;
use slayerfs_snapshotter::daemon::SlayerSnapshotter;
use slayerfs_snapshotter::metrics;
use slayerfs_snapshotter::metrics::server::Health;
use slayerfs_snapshotter::metrics::store::MeteredStore;
use slayerfs_snapshotter::store_args::StoreArgs;

#[derive(Parser)]
#[command(
    name = "slayerfs-snapshotter",
    version,
    about = "SlayerFS containerd snapshotter"
)]
struct Cli {
    /// Directory holding all of the snapshotter's state.
    #[arg(long)]
    root: PathBuf,
    /// Unix socket to serve containerd's snapshots API on.
    #[arg(long)]
    address: PathBuf,
    /// Configuration file (default /etc/slayerfs/config.toml, if present).
    #[arg(long, env = "SLAYERFS_CONFIG")]
    config: Option<PathBuf>,
    /// The store images were converted into, where lazily pulled layers'
    /// blocks are read from (overrides the config file).
    #[command(flatten)]
    store: StoreArgs,
    /// SIGTERM unmounts every snapshot and lets go of every FUSE
    /// connection (for draining a node) instead of leaving them to the
    /// next start ([snapshotter] unmount_on_exit).
    #[arg(long)]
    unmount_on_exit: bool,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics and a health
    /// check at /healthz ([metrics] address; off by default).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_address: Option<std::net::SocketAddr>,
}

/// The fd holder: as configured, else beside this binary, else on PATH.
fn holder_binary(config: &Config) -> PathBuf {
    if let Some(p) = &config.snapshotter.fd_holder {
        return p.clone();
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("slayerfs-fdholder")));
    match beside {
        Some(p) if p.is_file() => p,
        _ => PathBuf::from("slayerfs-fdholder"),
    }
}

/// The shared store, read only: a local directory is not created (until a
/// conversion writes it, every object is simply missing).
async fn open_shared(config: &Config) -> anyhow::Result<Arc<dyn BlockStore>> {
    Ok(match config.store_location() {
        StoreLocation::Local(dir) => Arc::new(LocalStore::open_read_only(&dir)),
        location => open_store(&location, config).await?,
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    cli.store.apply(&mut config);
    if cli.unmount_on_exit {
        config.snapshotter.unmount_on_exit = true;
    }
    if let Some(a) = cli.metrics_address {
        config.metrics.address = Some(a);
    }
    config.validate().context("invalid settings")?;
    // Bound first: an address that cannot be served stops the start before
    // anything is opened or started (the fd holder above all).
    let metrics_listener = match config.metrics.address {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("serving metrics on {addr}"))?,
        ),
        None => None,
    };
    let root = std::path::absolute(&cli.root).context("the root directory")?;
    let shared = MeteredStore::wrap(
        open_shared(&config)
            .await
            .context("opening the block store")?,
    );
    tracing::info!(store = shared.location(), "lazily pulled layers read from");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    // Mount points are then found in the mount table by their path as
    // written (looking at one through the filesystem could wait on a
    // connection not served yet).
    let root = root
        .canonicalize()
        .with_context(|| format!("resolving {}", root.display()))?;
    let fds = FdStore::open(root.join("fdholder.sock"), holder_binary(&config))
        .context("opening the fd store that keeps FUSE connections across restarts")?;
    tracing::info!(store = fds.describe(), "FUSE connections kept by");
    let sn = SlayerSnapshotter::open(&root, &config, shared.clone(), fds)
        .await
        .with_context(|| format!("opening the snapshotter state in {}", root.display()))?;
    if let Some(listener) = metrics_listener {
        let health = Health {
            socket: cli.address.clone(),
            store: shared.clone(),
        };
        let bound = metrics::server::serve(listener, metrics::registry(sn.metric_levels()), health)
            .context("serving metrics")?;
        tracing::info!(address = %bound, "metrics at /metrics, health at /healthz");
    }
    if let Some(dir) = cli.address.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(&cli.address) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing the old {}", cli.address.display()))
        }
    }
    // Bound under a temporary name and renamed once listening: a client
    // that sees the socket can connect (bind creates the file before
    // listen starts).
    let file_name = cli
        .address
        .file_name()
        .context("the socket address has no file name")?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}", std::process::id()));
    let tmp = cli.address.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp)
        .with_context(|| format!("listening on {}", tmp.display()))?;
    std::fs::rename(&tmp, &cli.address)
        .with_context(|| format!("publishing the socket {}", cli.address.display()))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tracing::info!(address = %cli.address.display(), root = %root.display(), "serving");
    let signalled = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(
        Server::builder()
            .add_service(containerd_snapshots::server(Arc::new(Service(sn.clone()))))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    let served = tokio::select! {
        r = &mut server => r,
        _ = signalled => {
            let _ = stop.send(());
            // Requests in flight get a moment to finish; a long one (a
            // Commit of a large unpack) does not hold the stop up: it is
            // abandoned as a crash would abandon it (nothing is recorded
            // until it completes), and containerd retries it.
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(
                        "requests still running after {SHUTDOWN_GRACE:?}; stopping without them"
                    );
                    Ok(Ok(()))
                }
            }
        }
    };
    let served = served.context("the snapshots API server task")?;
    let _ = std::fs::remove_file(&cli.address);
    let sn2 = sn.clone();
    let unmount = config.snapshotter.unmount_on_exit;
    if !unmount {
        tracing::info!("leaving every snapshot mounted for the next start");
    }
    let code = i32::from(served.is_err());
    if let Err(e) = &served {
        tracing::error!(error = %e, "serving the snapshots API");
    }
    tokio::task::spawn_blocking(move || {
        sn2.shutdown(unmount);
        // Ending the process now, with the runtime still up: the FUSE
        // sessions left for the next start serve until the process is gone
        // and their reads run on this runtime (a request is answered or
        // sent again to the next start, never failed by a runtime shutting
        // down), and work abandoned above must not hold the exit up.
        std::process::exit(code);
    })
    .await?;
    Ok(())
}

/// How long requests in flight at SIGTERM may still run.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

fn main() -> ExitCode {
    let cli = Cli::parse();
    slayerfs_snapshotter::process::tune_allocator();
    slayerfs_snapshotter::process::init_logging("info");
    slayerfs_snapshotter::process::init_tls();
    let runtime = match slayerfs_snapshotter::process::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("slayerfs-snapshotter: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slayerfs-snapshotter: {e:#}");
            ExitCode::FAILURE
        }
    }
}
