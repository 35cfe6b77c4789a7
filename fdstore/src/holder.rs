//! The holder process: keeps descriptors by name and hands copies back,
//! for as long as it runs. It reads nothing from them, so a FUSE
//! connection it holds keeps its queued and unanswered requests while no
//! daemon serves it; a connection that ended (its filesystem unmounted
//! everywhere, or aborted) is closed and forgotten.
//!
//! One client at a time, each with a deadline, so that no client can stop
//! it from serving the next; only processes of its own user may talk to it.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use crate::protocol::{FdName, Request, MAX_MESSAGE};
use crate::scm;
use crate::Error;

/// How long a client may take over one message.
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);
/// How often held descriptors are checked for connections that ended.
const SWEEP_EVERY_MS: libc::c_int = 5_000;
/// The most descriptors kept at once.
const MAX_HELD: usize = 100_000;

/// Serves at `socket` until a client asks it to quit. Returns at once if
/// another holder already serves there.
pub fn serve(socket: &Path) -> Result<(), Error> {
    let Some(_lock) = lock(socket)? else {
        eprintln!(
            "slayerfs-fdholder: another holder serves {}",
            socket.display()
        );
        return Ok(());
    };
    raise_fd_limit();
    let sock_err = |source| Error::Socket {
        path: socket.to_path_buf(),
        source,
    };
    let addr = scm::socket_address(socket.as_os_str().as_bytes()).map_err(sock_err)?;
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(sock_err(e)),
    }
    let listener = scm::socket(libc::SOCK_SEQPACKET).map_err(sock_err)?;
    // SAFETY: `addr` is a valid sockaddr_un of length `addr.1`; the mode
    // change makes the socket ours only.
    unsafe {
        let old = libc::umask(0o077);
        let rc = libc::bind(
            listener.as_raw_fd(),
            &addr.0 as *const libc::sockaddr_un as *const libc::sockaddr,
            addr.1,
        );
        libc::umask(old);
        if rc != 0 {
            return Err(sock_err(io::Error::last_os_error()));
        }
        if libc::listen(listener.as_raw_fd(), 64) != 0 {
            return Err(sock_err(io::Error::last_os_error()));
        }
    }
    let mut held: BTreeMap<FdName, OwnedFd> = BTreeMap::new();
    loop {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, SWEEP_EVERY_MS) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        sweep(&mut held);
        if pfd.revents & libc::POLLIN == 0 {
            continue;
        }
        // SAFETY: accept4 on our listener; the result is checked.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            continue;
        }
        // SAFETY: a fresh descriptor we own.
        let client = unsafe { OwnedFd::from_raw_fd(fd) };
        if !same_user(&client) {
            let _ = scm::send(client.as_fd(), b"ERR not your holder", None, None);
            continue;
        }
        if scm::set_timeouts(client.as_fd(), CLIENT_DEADLINE).is_err() {
            continue;
        }
        match serve_client(&client, &mut held) {
            Ok(true) => {
                let _ = std::fs::remove_file(socket);
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => eprintln!("slayerfs-fdholder: client: {e}"),
        }
    }
}

/// Answers one client until it hangs up; true if it asked to quit.
fn serve_client(client: &OwnedFd, held: &mut BTreeMap<FdName, OwnedFd>) -> io::Result<bool> {
    let mut buf = [0u8; MAX_MESSAGE];
    loop {
        let (n, fd) = match scm::recv(client.as_fd(), &mut buf) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                scm::send(client.as_fd(), b"ERR malformed message", None, None)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(false);
        }
        let answer = match Request::decode(&buf[..n]) {
            Err(answer) => answer,
            Ok(Request::Put(name)) => match fd {
                None => "ERR PUT needs a descriptor".into(),
                Some(_) if held.len() >= MAX_HELD && !held.contains_key(&name) => {
                    format!("ERR holding {MAX_HELD} descriptors already")
                }
                Some(fd) => {
                    held.insert(name, fd);
                    "OK".into()
                }
            },
            Ok(Request::Drop(name)) => match held.remove(&name) {
                Some(_) => "OK".into(),
                None => format!("ERR no descriptor named {name}"),
            },
            Ok(Request::List) => {
                for (name, fd) in held.iter() {
                    let msg = format!("FD {name}");
                    scm::send(client.as_fd(), msg.as_bytes(), Some(fd.as_fd()), None)?;
                }
                "END".into()
            }
            Ok(Request::Quit) => {
                held.clear();
                scm::send(client.as_fd(), b"OK", None, None)?;
                return Ok(true);
            }
        };
        scm::send(client.as_fd(), answer.as_bytes(), None, None)?;
    }
}

/// Forgets descriptors whose other end is gone (POLLERR/POLLHUP: for
/// `/dev/fuse`, a connection that ended).
fn sweep(held: &mut BTreeMap<FdName, OwnedFd>) {
    if held.is_empty() {
        return;
    }
    let names: Vec<FdName> = held.keys().cloned().collect();
    // events 0: only errors and hang-ups are reported, never the requests
    // waiting on a connection.
    let mut pfds: Vec<libc::pollfd> = held
        .values()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: 0,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a valid array of its length.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 0) };
    if rc <= 0 {
        return;
    }
    for (name, p) in names.into_iter().zip(pfds) {
        if p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            held.remove(&name);
        }
    }
}

/// Whether the peer runs as our user (or as root).
fn same_user(client: &OwnedFd) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a ucred of the stated size.
    let rc = unsafe {
        libc::getsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    // SAFETY: plain syscall.
    let me = unsafe { libc::geteuid() };
    rc == 0 && (cred.uid == me || cred.uid == 0)
}

/// An exclusive lock on `<socket>.lock`, or None if another holder has it.
fn lock(socket: &Path) -> Result<Option<std::fs::File>, Error> {
    let path = socket.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| Error::Socket {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        return Err(Error::Socket { path, source: e });
    }
    Ok(Some(file))
}

/// Every snapshot's connection is one descriptor: allow as many as the hard
/// limit does.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
