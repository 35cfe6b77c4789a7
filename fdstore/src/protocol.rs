//! The holder's protocol, version 1: one datagram per message on a
//! `SOCK_SEQPACKET` unix socket, ASCII words, a descriptor riding along as
//! `SCM_RIGHTS` where one travels.
//!
//! ```text
//! client                         holder
//! SLFD/1 PUT <name>   + fd   ->  OK | ERR <reason>
//! SLFD/1 LIST                ->  FD <name> + fd ... END
//! SLFD/1 DROP <name>         ->  OK | ERR <reason>
//! SLFD/1 QUIT                ->  OK, then it closes everything and exits
//! ```
//! Every request names the version, so a holder older than its daemon
//! answers `ERR version` instead of misreading a newer request: the holder
//! outlives daemon upgrades and must never need one itself.

use crate::Error;

/// The protocol version this crate speaks.
pub const VERSION: u32 = 1;
/// The longest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 512;
/// The longest name.
pub const MAX_NAME: usize = 200;

/// A validated descriptor name: 1 to [`MAX_NAME`] characters of
/// `A-Z a-z 0-9 . _ - :` (systemd allows the same in `FDNAME=`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdName(String);

impl FdName {
    pub fn new(name: &str) -> Result<FdName, Error> {
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
        if ok {
            Ok(FdName(name.to_string()))
        } else {
            Err(Error::BadName(name.chars().take(MAX_NAME + 1).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for FdName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Put(FdName),
    List,
    Drop(FdName),
    Quit,
}

impl Request {
    pub fn encode(&self) -> String {
        match self {
            Request::Put(n) => format!("SLFD/{VERSION} PUT {n}"),
            Request::List => format!("SLFD/{VERSION} LIST"),
            Request::Drop(n) => format!("SLFD/{VERSION} DROP {n}"),
            Request::Quit => format!("SLFD/{VERSION} QUIT"),
        }
    }

    /// A request, or the `ERR` answer it gets.
    pub fn decode(msg: &[u8]) -> Result<Request, String> {
        let text = std::str::from_utf8(msg).map_err(|_| "ERR not ASCII".to_string())?;
        let mut words = text.split(' ');
        let version = words.next().unwrap_or_default();
        if version != format!("SLFD/{VERSION}") {
            return Err(format!("ERR version: this holder speaks SLFD/{VERSION}"));
        }
        let verb = words.next().unwrap_or_default();
        let arg = words.next();
        if words.next().is_some() {
            return Err("ERR too many words".into());
        }
        let named = || FdName::new(arg.unwrap_or_default()).map_err(|_| "ERR bad name".to_string());
        match verb {
            "PUT" => Ok(Request::Put(named()?)),
            "DROP" => Ok(Request::Drop(named()?)),
            "LIST" if arg.is_none() => Ok(Request::List),
            "QUIT" if arg.is_none() => Ok(Request::Quit),
            _ => Err("ERR unknown request".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let n = FdName::new("snapshot-12:fuse").unwrap();
        for r in [
            Request::Put(n.clone()),
            Request::List,
            Request::Drop(n),
            Request::Quit,
        ] {
            assert_eq!(Request::decode(r.encode().as_bytes()), Ok(r));
        }
    }

    #[test]
    fn bad_requests_get_an_error_answer() {
        for bad in [
            &b"SLFD/2 LIST"[..],
            b"SLFD/1 PUT",
            b"SLFD/1 PUT a/b",
            b"SLFD/1 PUT a b",
            b"SLFD/1 LIST x",
            b"SLFD/1 EAT x",
            b"\xff\xfe",
            b"",
        ] {
            let answer = Request::decode(bad).unwrap_err();
            assert!(answer.starts_with("ERR "), "{answer}");
        }
        assert!(FdName::new(&"x".repeat(MAX_NAME + 1)).is_err());
        assert!(FdName::new("").is_err());
        assert!(FdName::new("snap\u{e9}").is_err());
    }
}
