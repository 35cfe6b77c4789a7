//! A `/dev/fuse` connection that can outlive the process serving it.
//!
//! The kernel initialises a connection once (FUSE_INIT) and keeps what was
//! negotiated for as long as the connection lives; a process that takes
//! over a connection must not, and cannot, initialise it again. `fuser`
//! always reads an INIT before it serves, so a [`Connection`] keeps the
//! INIT request the kernel sent and hands `fuser` that request through a
//! socket pair: on a fresh connection `fuser`'s answer is passed on to the
//! kernel; on one taken over it is dropped, since the kernel has its
//! answer already. Then the socket under `fuser`'s descriptor is replaced
//! by the connection itself (`dup3`), and `fuser` serves it from there,
//! every worker reading the one descriptor (cloned descriptors would each
//! take their unanswered requests with them when closed).
//!
//! A taken-over connection is asked to send again what was read but never
//! answered (FUSE_NOTIFY_RESEND, Linux 6.9); such requests carry
//! [`RESEND_BIT`] in their unique id.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{session_config, MountOptions, SlayerFuse};

/// Set in the unique id of a request the kernel sends again.
pub const RESEND_BIT: u64 = 1 << 63;
/// `fuse_in_header`: len, opcode, unique, nodeid, uid, gid, pid,
/// total_extlen, padding.
const IN_HEADER_LEN: usize = 40;
const FUSE_INIT: u32 = 26;
/// The shortest read `/dev/fuse` accepts (FUSE_MIN_READ_BUFFER).
const MIN_READ: usize = 8192;
/// `fuse_init_in.flags2` bit 7 (bit 39 of the flags): the kernel resends.
const FLAGS2_HAS_RESEND: u32 = 1 << 7;
/// `FUSE_NOTIFY_RESEND`, a notification code (the error field of an
/// unsolicited `fuse_out_header`).
const NOTIFY_RESEND: i32 = 7;

/// The INIT request that initialised a connection, checked to be one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitRequest(Vec<u8>);

impl InitRequest {
    /// Checks that `bytes` hold a whole FUSE_INIT request (as the kernel
    /// sent it; for a connection taken over, as it was saved).
    pub fn parse(bytes: Vec<u8>) -> io::Result<InitRequest> {
        let bad = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("FUSE INIT request: {why}"),
            )
        };
        // Header plus major, minor, max_readahead, flags.
        if bytes.len() < IN_HEADER_LEN + 16 || bytes.len() > MIN_READ {
            return Err(bad(&format!("{} bytes", bytes.len())));
        }
        let u32_at = |at: usize| {
            u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        if u32_at(0) as usize != bytes.len() {
            return Err(bad("length field does not match"));
        }
        if u32_at(4) != FUSE_INIT {
            return Err(bad(&format!("opcode {}", u32_at(4))));
        }
        if u32_at(IN_HEADER_LEN) != 7 {
            return Err(bad(&format!(
                "protocol major version {}",
                u32_at(IN_HEADER_LEN)
            )));
        }
        Ok(InitRequest(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The kernel's minor protocol version.
    pub fn minor(&self) -> u32 {
        let b = &self.0[IN_HEADER_LEN + 4..IN_HEADER_LEN + 8];
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Whether the kernel can send unanswered requests again.
    pub fn kernel_resends(&self) -> bool {
        // flags2 follows flags, from protocol 7.36 on.
        let at = IN_HEADER_LEN + 16;
        self.minor() >= 36
            && self.0.len() >= at + 4
            && u32::from_ne_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
                & FLAGS2_HAS_RESEND
                != 0
    }
}

/// What this process answered to an INIT request: on a connection taken
/// over, compared with the answer the kernel got, to tell when a new build
/// would negotiate differently from the one that initialised it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReply(Vec<u8>);

impl InitReply {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Everything but the unique id (the header's bytes 8..16), which
    /// differs between a kernel's INIT and a saved one.
    pub fn same_settings(&self, other: &InitReply) -> bool {
        let strip = |b: &[u8]| -> Vec<u8> {
            let mut v = b.to_vec();
            if v.len() >= 16 {
                v[8..16].fill(0);
            }
            v
        };
        strip(&self.0) == strip(&other.0)
    }
}

/// What a later process needs to take a connection over: the kernel's INIT
/// request and the answer it got. Saved as `SLFC1`, then each as a
/// little-endian u32 length and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedInit {
    pub request: InitRequest,
    pub reply: InitReply,
}

const SAVED_MAGIC: &[u8] = b"SLFC1";

impl SavedInit {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = SAVED_MAGIC.to_vec();
        for part in [self.request.as_bytes(), self.reply.as_bytes()] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> io::Result<SavedInit> {
        let bad = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("saved FUSE INIT: {why}"),
            )
        };
        let mut rest = bytes
            .strip_prefix(SAVED_MAGIC)
            .ok_or_else(|| bad("not SLFC1"))?;
        let mut part = || -> io::Result<Vec<u8>> {
            if rest.len() < 4 {
                return Err(bad("truncated"));
            }
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len > MIN_READ || rest.len() - 4 < len {
                return Err(bad("a part longer than the file or than an INIT can be"));
            }
            let p = rest[4..4 + len].to_vec();
            rest = &rest[4 + len..];
            Ok(p)
        };
        let request = InitRequest::parse(part()?)?;
        let reply = InitReply(part()?);
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(SavedInit { request, reply })
    }
}

/// A FUSE connection with the INIT request that initialised it.
pub struct Connection {
    fd: OwnedFd,
    init: InitRequest,
    /// For a connection an earlier process initialised (taken over), the
    /// answer it gave the kernel.
    answered: Option<InitReply>,
}

impl Connection {
    /// Mounts a new FUSE filesystem at `mountpoint` (mount(2); needs
    /// CAP_SYS_ADMIN) and reads the kernel's INIT request.
    pub fn mount(mountpoint: &Path, writable: bool, opts: &MountOptions) -> io::Result<Connection> {
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")?;
        let fd = OwnedFd::from(dev);
        let data = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
            fd.as_raw_fd()
        );
        let cstr = |s: &[u8]| {
            CString::new(s)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a mount argument"))
        };
        let source = cstr(opts.fs_name.as_bytes())?;
        let target = cstr(mountpoint.as_os_str().as_bytes())?;
        let fstype = cstr(b"fuse.slayerfs")?;
        let data = cstr(data.as_bytes())?;
        let flags = if writable { 0 } else { libc::MS_RDONLY };
        // SAFETY: valid C strings; `data` is the option string fuse reads.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                data.as_ptr() as *const libc::c_void,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let init = match read_init(fd.as_fd()) {
            Ok(init) => init,
            Err(e) => {
                // SAFETY: a valid C string.
                unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
                return Err(e);
            }
        };
        Ok(Connection {
            fd,
            init,
            answered: None,
        })
    }

    /// A connection another process initialised and served, with the
    /// INIT request and answer it saved.
    pub fn take_over(fd: OwnedFd, saved: SavedInit) -> Connection {
        Connection {
            fd,
            init: saved.request,
            answered: Some(saved.reply),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn init(&self) -> &InitRequest {
        &self.init
    }

    pub fn is_taken_over(&self) -> bool {
        self.answered.is_some()
    }

    /// A `fuser` session serving `fs` on this connection, and the
    /// connection's own descriptor (the session serves from a copy).
    /// `keep` runs once the INIT answer is known and before the kernel can
    /// send anything else, with the descriptor and what a later process
    /// needs to take the connection over (it fails the session if it
    /// fails). For a connection taken over, the kernel is then asked to
    /// send again every request the earlier process read and did not
    /// answer.
    pub fn into_session(
        self,
        fs: SlayerFuse,
        opts: &MountOptions,
        keep: impl FnOnce(BorrowedFd<'_>, &SavedInit) -> io::Result<()>,
    ) -> io::Result<(fuser::Session<SlayerFuse>, OwnedFd)> {
        // A socket pair keeps message boundaries, as /dev/fuse does.
        let (ours, theirs) = std::os::unix::net::UnixDatagram::pair()?;
        let theirs = OwnedFd::from(theirs);
        let theirs_raw = theirs.as_raw_fd();
        write_all(ours.as_fd(), self.init.as_bytes())?;
        let config = session_config(opts);
        let session = fuser::Session::from_fd(fs, theirs, config.acl, config)?;
        let mut reply = vec![0u8; MIN_READ];
        let n = read_retrying(ours.as_fd(), &mut reply)?;
        reply.truncate(n);
        let saved = SavedInit {
            request: self.init,
            reply: InitReply(reply),
        };
        keep(self.fd.as_fd(), &saved)?;
        match &self.answered {
            None => write_all(self.fd.as_fd(), saved.reply.as_bytes())?,
            Some(answered) if !answered.same_settings(&saved.reply) => tracing::warn!(
                "this build would negotiate the FUSE connection differently from the one that started it; serving it as the kernel set it up"
            ),
            Some(_) => {}
        }
        // SAFETY: both descriptors are open; afterwards the number fuser
        // owns names the connection instead of the socket.
        if unsafe { libc::dup3(self.fd.as_raw_fd(), theirs_raw, libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if self.answered.is_some() {
            if saved.request.kernel_resends() {
                notify_resend(self.fd.as_fd())?;
            } else {
                tracing::warn!("this kernel cannot send unanswered FUSE requests again (Linux 6.9 can): requests in flight at the restart fail");
            }
        }
        Ok((session, self.fd))
    }
}

/// Reads the kernel's first request, which is INIT.
fn read_init(fd: BorrowedFd<'_>) -> io::Result<InitRequest> {
    let mut buf = vec![0u8; MIN_READ + 4096];
    let n = read_retrying(fd, &mut buf)?;
    buf.truncate(n);
    InitRequest::parse(buf)
}

/// One read(2) into `buf`, again while it is interrupted (or, on
/// /dev/fuse, while a request it would have returned was withdrawn).
fn read_retrying(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reads into `buf`, of its length.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if !matches!(
            e.raw_os_error(),
            Some(libc::EINTR | libc::ENOENT | libc::EAGAIN)
        ) {
            return Err(e);
        }
    }
}

/// Asks the kernel to queue again the requests read and not answered.
fn notify_resend(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut msg = [0u8; 16];
    msg[..4].copy_from_slice(&16u32.to_ne_bytes());
    msg[4..8].copy_from_slice(&NOTIFY_RESEND.to_ne_bytes());
    write_all(fd, &msg)
}

fn write_all(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<()> {
    // SAFETY: writes `data`, of its length.
    let n = unsafe {
        libc::write(
            fd.as_raw_fd(),
            data.as_ptr() as *const libc::c_void,
            data.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init_bytes(minor: u32, flags2: u32) -> Vec<u8> {
        let mut b = vec![0u8; IN_HEADER_LEN + 64];
        let len = b.len() as u32;
        b[..4].copy_from_slice(&len.to_ne_bytes());
        b[4..8].copy_from_slice(&FUSE_INIT.to_ne_bytes());
        b[IN_HEADER_LEN..IN_HEADER_LEN + 4].copy_from_slice(&7u32.to_ne_bytes());
        b[IN_HEADER_LEN + 4..IN_HEADER_LEN + 8].copy_from_slice(&minor.to_ne_bytes());
        b[IN_HEADER_LEN + 16..IN_HEADER_LEN + 20].copy_from_slice(&flags2.to_ne_bytes());
        b
    }

    #[test]
    fn a_saved_init_round_trips_and_bad_ones_are_refused() {
        let saved = SavedInit {
            request: InitRequest::parse(init_bytes(41, FLAGS2_HAS_RESEND)).unwrap(),
            reply: InitReply(vec![1, 2, 3]),
        };
        let bytes = saved.encode();
        assert_eq!(SavedInit::decode(&bytes).unwrap(), saved);
        for cut in 0..bytes.len() {
            assert!(SavedInit::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(SavedInit::decode(&long).is_err());
        let mut huge = SAVED_MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(SavedInit::decode(&huge).is_err());
    }

    #[test]
    fn replies_compare_without_their_unique_id() {
        let a = InitReply((0u8..40).collect());
        let mut b = a.0.clone();
        b[9] ^= 0xff;
        assert!(a.same_settings(&InitReply(b.clone())));
        b[20] ^= 1;
        assert!(!a.same_settings(&InitReply(b)));
    }

    #[test]
    fn an_init_request_is_checked() {
        let ok = InitRequest::parse(init_bytes(41, FLAGS2_HAS_RESEND)).unwrap();
        assert!(ok.kernel_resends());
        assert!(!InitRequest::parse(init_bytes(41, 0))
            .unwrap()
            .kernel_resends());
        assert!(!InitRequest::parse(init_bytes(31, FLAGS2_HAS_RESEND))
            .unwrap()
            .kernel_resends());
        let mut wrong_len = init_bytes(41, 0);
        wrong_len.push(0);
        assert!(InitRequest::parse(wrong_len).is_err());
        let mut not_init = init_bytes(41, 0);
        not_init[4] = 1;
        assert!(InitRequest::parse(not_init).is_err());
        assert!(InitRequest::parse(vec![0; 10]).is_err());
        assert!(InitRequest::parse(vec![0; 100_000]).is_err());
    }
}
