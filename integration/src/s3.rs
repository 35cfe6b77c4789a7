//! A real S3 server on 127.0.0.1 for tests and benchmarks: `s3s-fs` serving
//! a directory, with request counters kept on the server side.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};

/// Test credentials the server accepts.
pub const ACCESS_KEY: &str = "slayerfs-test";
pub const SECRET_KEY: &str = "slayerfs-test-secret";

/// Requests the server answered, by method, and bytes it sent in GET bodies.
#[derive(Debug, Default)]
pub struct Counters {
    pub gets: AtomicU64,
    /// The path of every GET answered, in order (`/bucket/key`), with its
    /// `Range` header after a space if it had one.
    pub get_paths: std::sync::Mutex<Vec<String>>,
    pub heads: AtomicU64,
    pub puts: AtomicU64,
    pub other: AtomicU64,
    pub get_bytes: AtomicU64,
}

#[derive(Clone)]
struct Counted {
    inner: S3Service,
    counters: Arc<Counters>,
}

type Resp = http::Response<s3s::Body>;
type BoxFut = Pin<Box<dyn Future<Output = Result<Resp, s3s::HttpError>> + Send>>;

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Counted {
    type Response = Resp;
    type Error = s3s::HttpError;
    type Future = BoxFut;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let method = req.method().clone();
        let mut path = req.uri().path().to_string();
        if let Some(range) = req
            .headers()
            .get(http::header::RANGE)
            .and_then(|v| v.to_str().ok())
        {
            path = format!("{path} {range}");
        }
        let counters = self.counters.clone();
        let fut = hyper::service::Service::call(&self.inner, req);
        Box::pin(async move {
            let resp = fut.await?;
            let c = &counters;
            match method {
                http::Method::GET => {
                    c.gets.fetch_add(1, Ordering::Relaxed);
                    c.get_paths
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(path);
                    let len = resp
                        .headers()
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                    c.get_bytes.fetch_add(len, Ordering::Relaxed);
                }
                http::Method::HEAD => {
                    c.heads.fetch_add(1, Ordering::Relaxed);
                }
                http::Method::PUT => {
                    c.puts.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    c.other.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(resp)
        })
    }
}

/// Serves `root` (one subdirectory per bucket) on `listener` until the
/// future is dropped.
pub async fn serve(
    root: &Path,
    listener: tokio::net::TcpListener,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = Counted {
        inner: builder.build(),
        counters,
    };
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let (socket, _) = listener.accept().await?;
        // As S3 endpoints do: a response's head and body written apart must
        // not wait for the client's delayed ACK (40 ms a GET otherwise).
        socket.set_nodelay(true)?;
        let conn = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// An S3 server running on its own thread and runtime, stopped on drop.
pub struct S3Server {
    pub addr: SocketAddr,
    pub root: PathBuf,
    pub counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3Server {
    /// Starts a server on 127.0.0.1 (a free port) over `root`, with the
    /// given buckets created.
    pub fn start(root: &Path, buckets: &[&str]) -> anyhow::Result<Self> {
        Self::start_at(root, buckets, "127.0.0.1:0".parse()?)
    }

    /// Starts a server on `addr` (to bring one back where it was).
    pub fn start_at(root: &Path, buckets: &[&str], addr: SocketAddr) -> anyhow::Result<Self> {
        for b in buckets {
            std::fs::create_dir_all(root.join(b))?;
        }
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let root_owned = root.to_path_buf();
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name("s3-server".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("s3 server runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("s3 server listener: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        res = serve(&root_owned, listener, c) => {
                            if let Err(e) = res { eprintln!("s3 server: {e:#}"); }
                        }
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(S3Server {
            addr,
            root: root.to_path_buf(),
            counters,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Environment variables that give a client this server's credentials.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
    }
}

impl Counters {
    /// The paths of the GETs answered after the first `from`, and how many
    /// there are in all now (the `from` of a later call).
    pub fn gets_since(&self, from: usize) -> (Vec<String>, usize) {
        let all = self.get_paths.lock().unwrap_or_else(|p| p.into_inner());
        (all.get(from..).unwrap_or_default().to_vec(), all.len())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
