//! systemd's file descriptor store: descriptors sent with
//! `FDSTORE=1`/`FDNAME=` on `$NOTIFY_SOCKET` are kept by systemd across
//! restarts of the unit and passed back at the next start as
//! `$LISTEN_FDS`/`$LISTEN_FDNAMES`. Used when the unit has one
//! (`FileDescriptorStoreMax=`, which systemd 254 and later announce as
//! `$FDSTORE`; older ones need `SLAYERFS_FD_STORE=systemd` in the unit).

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use crate::protocol::FdName;
use crate::scm;
use crate::Error;

/// The first descriptor systemd passes.
const LISTEN_FDS_START: i32 = 3;

/// The unit's store.
pub struct SystemdStore {
    notify: (libc::sockaddr_un, libc::socklen_t),
    inherited: Vec<(FdName, OwnedFd)>,
}

impl SystemdStore {
    /// The store, if the environment says systemd keeps one for us; the
    /// descriptors it passed at this start are taken (and the variables
    /// naming them cleared, so children do not see them).
    pub fn from_env() -> Result<Option<SystemdStore>, Error> {
        let max: u64 = std::env::var("FDSTORE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // Before systemd 254 a unit says so itself.
        let asked = std::env::var("SLAYERFS_FD_STORE").is_ok_and(|v| v == "systemd");
        let Some(notify) = std::env::var_os("NOTIFY_SOCKET") else {
            if asked {
                return Err(Error::Systemd(
                    "SLAYERFS_FD_STORE=systemd but no $NOTIFY_SOCKET: the unit needs NotifyAccess=main".into(),
                ));
            }
            return Ok(None);
        };
        if max == 0 && !asked {
            return Ok(None);
        }
        let mut path = notify.as_bytes().to_vec();
        if path.first() == Some(&b'@') {
            path[0] = 0;
        }
        let notify = scm::socket_address(&path)
            .map_err(|e| Error::Systemd(format!("NOTIFY_SOCKET: {e}")))?;
        let inherited = inherited_fds()?;
        Ok(Some(SystemdStore { notify, inherited }))
    }

    fn notify(&self, text: &str, fd: Option<BorrowedFd<'_>>) -> Result<(), Error> {
        let sock = scm::socket(libc::SOCK_DGRAM)?;
        scm::send(sock.as_fd(), text.as_bytes(), fd, Some(&self.notify))
            .map_err(|e| Error::Systemd(format!("sd_notify: {e}")))
    }

    pub fn put(&self, name: &FdName, fd: BorrowedFd<'_>) -> Result<(), Error> {
        // systemd keeps every descriptor sent under a name: drop the old one.
        self.remove(name)?;
        self.notify(&format!("FDSTORE=1\nFDNAME={name}"), Some(fd))
    }

    pub fn remove(&self, name: &FdName) -> Result<(), Error> {
        self.notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), None)
    }

    /// The descriptors passed at this start (once).
    pub fn take_inherited(&mut self) -> Vec<(FdName, OwnedFd)> {
        std::mem::take(&mut self.inherited)
    }
}

fn inherited_fds() -> Result<Vec<(FdName, OwnedFd)>, Error> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called at start, before other threads read the
        // environment.
        unsafe { std::env::remove_var(var) };
    }
    if !ours || !(0..=65_536).contains(&count) {
        return Ok(Vec::new());
    }
    let names: Vec<&str> = names.split(':').collect();
    let mut fds = Vec::new();
    for i in 0..count {
        let raw = LISTEN_FDS_START + i;
        // SAFETY: systemd passed descriptors LISTEN_FDS_START.. to us.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain fcntl on a descriptor we own.
        unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) };
        match names.get(i as usize).map(|n| FdName::new(n)) {
            Some(Ok(name)) => fds.push((name, fd)),
            // Not one of ours: closed.
            _ => drop(fd),
        }
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// What systemd would receive: the messages of a put, checked on a
    /// datagram socket standing in for `$NOTIFY_SOCKET` (no systemd runs
    /// in the tests).
    #[test]
    fn a_put_replaces_the_name_and_sends_the_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let store = SystemdStore {
            notify: scm::socket_address(path.as_os_str().as_bytes()).unwrap(),
            inherited: Vec::new(),
        };
        let file = tempfile::tempfile().unwrap();
        let name = FdName::new("snapshot-7").unwrap();
        store.put(&name, file.as_fd()).unwrap();
        let mut buf = [0u8; 256];
        let (n, fd) = scm::recv(listener.as_fd(), &mut buf).unwrap();
        assert_eq!(
            (&buf[..n], fd.is_none()),
            (&b"FDSTOREREMOVE=1\nFDNAME=snapshot-7"[..], true)
        );
        let (n, fd) = scm::recv(listener.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"FDSTORE=1\nFDNAME=snapshot-7");
        let fd = fd.expect("the descriptor rides along");
        assert_ne!(fd.as_raw_fd(), file.as_raw_fd());
        store.remove(&name).unwrap();
        let (n, _) = scm::recv(listener.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"FDSTOREREMOVE=1\nFDNAME=snapshot-7");
    }
}
