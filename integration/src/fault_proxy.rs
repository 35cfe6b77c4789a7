//! A fault-injecting HTTP proxy on 127.0.0.1, put in front of a real
//! server (the S3 test server, the registry) for the faults a real server
//! cannot be made to produce: a black hole, a slow link, bursts of 5xx,
//! connections reset mid-body, wrong bytes.
//!
//! Each request is forwarded on a connection of its own (`Connection:
//! close` both ways), so a fault set between two requests applies to the
//! next one whatever the client pools.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to the requests it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards faithfully.
    None,
    /// Reads the request and never answers (until the client gives up).
    BlackHole,
    /// Forwards the answer at this many bytes a second.
    Throttle { bytes_per_sec: u64 },
    /// Answers 503 without asking the server.
    ServerError,
    /// Forwards the headers and half the body, then resets the connection.
    ResetMidBody,
    /// Forwards the answer with one byte of its body changed.
    WrongBytes,
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    fault: Fault,
    /// Requests the fault still applies to; then the proxy forwards.
    left: u64,
}

/// Requests seen, and how many had a fault applied.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    pub requests: AtomicU64,
    pub faulted: AtomicU64,
}

/// The proxy; stops when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    pub counters: Arc<ProxyCounters>,
    plan: Arc<Mutex<Plan>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1, forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<FaultProxy> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let plan = Arc::new(Mutex::new(Plan {
            fault: Fault::None,
            left: 0,
        }));
        let counters = Arc::new(ProxyCounters::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (p, c) = (plan.clone(), counters.clone());
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("proxy listener");
                    tokio::select! {
                        _ = serve(listener, upstream, p, c) => {}
                        _ = stopped => {}
                    }
                });
                // Connections held in a black hole end with the runtime.
                rt.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(FaultProxy {
            addr,
            counters,
            plan,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies `fault` to every request from now on.
    pub fn set(&self, fault: Fault) {
        self.set_for(fault, u64::MAX);
    }

    /// Applies `fault` to the next `requests` requests, then forwards.
    pub fn set_for(&self, fault: Fault, requests: u64) {
        *self.plan.lock().unwrap_or_else(|p| p.into_inner()) = Plan {
            fault,
            left: requests,
        };
    }

    /// Forwards faithfully from now on.
    pub fn heal(&self) {
        self.set(Fault::None);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    plan: Arc<Mutex<Plan>>,
    counters: Arc<ProxyCounters>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let (plan, counters) = (plan.clone(), counters.clone());
        tokio::spawn(async move {
            let _ = connection(client, upstream, plan, counters).await;
        });
    }
}

/// The fault for the next request, counting it down.
fn take(plan: &Mutex<Plan>) -> Fault {
    let mut p = plan.lock().unwrap_or_else(|p| p.into_inner());
    if p.left == 0 {
        return Fault::None;
    }
    p.left -= 1;
    p.fault
}

const MAX_HEAD: usize = 64 << 10;
const MAX_BODY: usize = 512 << 20;

async fn connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    plan: Arc<Mutex<Plan>>,
    counters: Arc<ProxyCounters>,
) -> std::io::Result<()> {
    let Some(request) = read_request(&mut client).await? else {
        return Ok(());
    };
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let fault = take(&plan);
    if fault != Fault::None {
        counters.faulted.fetch_add(1, Ordering::Relaxed);
    }
    match fault {
        Fault::BlackHole => {
            // Hold the connection until the client closes it.
            let mut sink = [0u8; 4096];
            while client.read(&mut sink).await? > 0 {}
            return Ok(());
        }
        Fault::ServerError => {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                <Error><Code>SlowDown</Code><Message>injected</Message></Error>";
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(answer.as_bytes()).await?;
            return client.shutdown().await;
        }
        _ => {}
    }
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&request).await?;
    let mut answer = Vec::new();
    (&mut server)
        .take(MAX_BODY as u64)
        .read_to_end(&mut answer)
        .await?;
    let body_at = find(&answer, b"\r\n\r\n").map_or(answer.len(), |i| i + 4);
    match fault {
        Fault::Throttle { bytes_per_sec } => {
            let piece = (bytes_per_sec / 20).max(1) as usize;
            for part in answer.chunks(piece) {
                client.write_all(part).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Fault::ResetMidBody => {
            let cut = body_at + (answer.len() - body_at) / 2;
            client.write_all(&answer[..cut]).await?;
            client.flush().await?;
            reset(&client)?;
            return Ok(());
        }
        Fault::WrongBytes => {
            if let Some(last) = answer.get_mut(body_at..).and_then(|b| b.last_mut()) {
                *last ^= 0x5a;
            }
            client.write_all(&answer).await?;
        }
        _ => client.write_all(&answer).await?,
    }
    client.shutdown().await
}

/// One request from the client, rewritten to close its connection after
/// the answer; `None` if the client closed first.
async fn read_request(client: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut piece = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too long"));
        }
        let n = client.read(&mut piece).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&piece[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut out = String::new();
    out.push_str(lines.next().unwrap_or_default());
    out.push_str("\r\n");
    let mut body_len = 0usize;
    for line in lines {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("keep-alive:") {
            continue;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            body_len = v.trim().parse().unwrap_or(0);
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut body = buf[head_end + 4..].to_vec();
    if body_len > MAX_BODY {
        return Err(std::io::Error::other("request body too long"));
    }
    while body.len() < body_len {
        let n = client.read(&mut piece).await?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&piece[..n]);
    }
    let mut request = out.into_bytes();
    request.extend_from_slice(&body);
    Ok(Some(request))
}

/// Makes the close of `stream` a reset (RST), not an orderly FIN.
fn reset(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a pointer to a linger of the size given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
