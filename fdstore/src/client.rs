//! The daemon's side of the holder: one connection per request, the
//! holder started (detached, in a session of its own) when none answers.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::protocol::{FdName, Request, MAX_MESSAGE};
use crate::scm;
use crate::Error;

/// How long a request to the holder may take.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long a holder just started has to answer.
const START_DEADLINE: Duration = Duration::from_secs(5);

/// Talks to the holder at one socket.
pub struct HolderClient {
    socket: PathBuf,
    /// What to start when no holder answers.
    binary: PathBuf,
}

impl HolderClient {
    /// A client of the holder at `socket`; if none answers there, starts
    /// `binary --socket SOCKET` (its stderr appended to `SOCKET.log`).
    pub fn connect_or_spawn(socket: PathBuf, binary: PathBuf) -> Result<HolderClient, Error> {
        let client = HolderClient { socket, binary };
        client.ensure_running()?;
        Ok(client)
    }

    /// Starts a holder if none answers; true if one was started (it holds
    /// nothing yet).
    pub fn ensure_running(&self) -> Result<bool, Error> {
        if self.connect().is_ok() {
            return Ok(false);
        }
        self.spawn(&self.binary)?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match self.connect() {
                Ok(_) => return Ok(true),
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::Spawn {
                        path: self.binary.clone(),
                        reason: format!("it did not answer within {START_DEADLINE:?}: {e}"),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn spawn(&self, binary: &Path) -> Result<(), Error> {
        let spawn_err = |reason: String| Error::Spawn {
            path: binary.to_path_buf(),
            reason,
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.socket.with_extension("log"))
            .map_err(|e| spawn_err(format!("its log file: {e}")))?;
        let mut cmd = std::process::Command::new(binary);
        cmd.arg("--socket")
            .arg(&self.socket)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; a session of its own keeps
        // the holder out of signals sent to the daemon's process group.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| spawn_err(e.to_string()))?;
        // Not waited for: it outlives us by design.
        drop(child);
        Ok(())
    }

    fn connect(&self) -> Result<OwnedFd, Error> {
        let sock_err = |source| Error::Socket {
            path: self.socket.clone(),
            source,
        };
        let addr = scm::socket_address(self.socket.as_os_str().as_bytes()).map_err(sock_err)?;
        let fd = scm::socket(libc::SOCK_SEQPACKET).map_err(sock_err)?;
        scm::set_timeouts(fd.as_fd(), DEADLINE).map_err(sock_err)?;
        // SAFETY: `addr` is a valid sockaddr_un of length `addr.1`.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                &addr.0 as *const libc::sockaddr_un as *const libc::sockaddr,
                addr.1,
            )
        };
        if rc != 0 {
            return Err(sock_err(io::Error::last_os_error()));
        }
        Ok(fd)
    }

    /// Sends one request and reads the answers up to the last one.
    fn ask(
        &self,
        req: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(String, Vec<(String, OwnedFd)>), Error> {
        // A holder that just died may still have answered the last connect
        // (a kill -9 takes a moment): start another and ask it.
        let conn = match self.connect() {
            Ok(conn) => conn,
            Err(_) => {
                self.ensure_running()?;
                self.connect()?
            }
        };
        scm::send(conn.as_fd(), req.encode().as_bytes(), fd, None)?;
        let mut buf = [0u8; MAX_MESSAGE];
        let mut fds = Vec::new();
        loop {
            let (n, fd) = scm::recv(conn.as_fd(), &mut buf)?;
            if n == 0 {
                return Err(Error::Protocol("the holder hung up".into()));
            }
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            match (text.strip_prefix("FD "), fd) {
                (Some(name), Some(fd)) => fds.push((name.to_string(), fd)),
                (Some(_), None) => {
                    return Err(Error::Protocol(format!("{text:?} without a descriptor")))
                }
                (None, _) => return Ok((text, fds)),
            }
        }
    }

    fn ask_ok(&self, req: &Request, fd: Option<BorrowedFd<'_>>) -> Result<(), Error> {
        match self.ask(req, fd)?.0.as_str() {
            "OK" => Ok(()),
            other => Err(Error::Refused(other.to_string())),
        }
    }

    pub fn put(&self, name: &FdName, fd: BorrowedFd<'_>) -> Result<(), Error> {
        self.ask_ok(&Request::Put(name.clone()), Some(fd))
    }

    pub fn remove(&self, name: &FdName) -> Result<(), Error> {
        self.ask_ok(&Request::Drop(name.clone()), None)
    }

    pub fn quit(&self) -> Result<(), Error> {
        self.ask_ok(&Request::Quit, None)
    }

    pub fn list(&self) -> Result<Vec<(FdName, OwnedFd)>, Error> {
        let (last, fds) = self.ask(&Request::List, None)?;
        if last != "END" {
            return Err(Error::Refused(last));
        }
        fds.into_iter()
            .map(|(name, fd)| {
                Ok((
                    FdName::new(&name).map_err(|_| Error::Protocol(format!("name {name:?}")))?,
                    fd,
                ))
            })
            .collect()
    }
}
