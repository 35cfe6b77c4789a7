//! Attributes and numbers as the FUSE protocol carries them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};
use slayerfs_proto::index::InodeKind;

use crate::rootfs::{Attr, Time};

pub(super) fn file_type(kind: InodeKind) -> FileType {
    match kind {
        InodeKind::Directory => FileType::Directory,
        InodeKind::Symlink => FileType::Symlink,
        InodeKind::CharDevice => FileType::CharDevice,
        InodeKind::BlockDevice => FileType::BlockDevice,
        InodeKind::Fifo => FileType::NamedPipe,
        InodeKind::Socket => FileType::Socket,
        InodeKind::Regular | InodeKind::Unspecified => FileType::RegularFile,
    }
}

pub(super) fn system_time(t: Time) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec.into())
    }
}

/// The kernel's 32-bit device number encoding (`new_encode_dev`).
pub(super) fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

pub(super) fn decode_dev(dev: u32) -> (u32, u32) {
    ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

pub(super) fn file_attr(a: &Attr) -> FileAttr {
    let mtime = system_time(a.mtime());
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.inode.size,
        blocks: a.inode.size.div_ceil(512),
        atime: system_time(a.atime),
        mtime,
        ctime: system_time(a.ctime),
        crtime: mtime,
        kind: file_type(a.kind()),
        perm: (a.inode.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.inode.uid,
        gid: a.inode.gid,
        rdev: encode_dev(a.inode.rdev_major, a.inode.rdev_minor),
        blksize: 4096,
        flags: 0,
    }
}

pub(super) fn time_or_now(t: TimeOrNow) -> Time {
    match t {
        TimeOrNow::SpecificTime(t) => Time::from(t),
        TimeOrNow::Now => Time::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip_the_kernel_encoding() {
        assert_eq!(encode_dev(8, 1), 0x801);
        assert_eq!(encode_dev(1, 3), 0x103);
        for (major, minor) in [(0, 0), (8, 1), (259, 0x12345), (4095, 0xfffff)] {
            assert_eq!(decode_dev(encode_dev(major, minor)), (major, minor));
        }
    }

    #[test]
    fn times_before_1970_keep_their_nanoseconds() {
        let t = Time {
            sec: -1,
            nsec: 500_000_000,
        };
        assert_eq!(Time::from(system_time(t)), t);
        let t = Time {
            sec: 1_700_000_000,
            nsec: 7,
        };
        assert_eq!(Time::from(system_time(t)), t);
    }
}
