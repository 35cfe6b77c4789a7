//! Layers made to hurt the converter: sizes and counts that lie, PAX
//! records that lie or are huge, decompression bombs, paths thousands of
//! levels deep, hundreds of thousands of entries, garbage in numeric
//! fields, loops of links. Each ends in a correct conversion or one line
//! naming what was wrong, with the converter's peak memory bounded
//! (measured by `/usr/bin/time`).

mod common;

use std::io::Write;
use std::process::Command;

use common::text;
use slayerfs_integration::bins::bin;
use slayerfs_integration::fixtures::{pax_record, raw_tar, write_image_blobs, Compression};

/// The converter's peak resident memory may not pass this, whatever the
/// layer (a few times what a plain conversion takes; the bombs below
/// would need gigabytes).
const MAX_RSS_MIB: u64 = 384;

enum Outcome {
    Converts,
    /// Fails with one message containing this.
    Fails(&'static str),
    /// Either, as long as a failure is one clean message.
    Either,
}

fn header(name: &[u8], kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    if let Some(gnu) = h.as_gnu_mut() {
        let n = name.len().min(99);
        gnu.name[..n].copy_from_slice(&name[..n]);
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h.set_cksum();
    h
}

fn pad(t: &mut Vec<u8>) {
    t.resize(t.len().div_ceil(512) * 512, 0);
}

/// A zstd stream of: `head`, then `zeros` zero bytes, then `tail`.
fn zstd_bomb(head: &[u8], zeros: u64, tail: &[u8]) -> Vec<u8> {
    let mut e = zstd::Encoder::new(Vec::new(), 3).unwrap();
    e.write_all(head).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        e.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    e.write_all(tail).unwrap();
    e.finish().unwrap()
}

fn end() -> Vec<u8> {
    vec![0u8; 1024]
}

fn cases() -> Vec<(&'static str, Vec<u8>, Compression, Outcome)> {
    let mut cases = Vec::new();

    // A PAX header of 600 MiB from a few hundred bytes of zstd.
    let size = 600u64 << 20;
    let mut tail = vec![0u8; (size.div_ceil(512) * 512 - size) as usize];
    tail.extend_from_slice(&raw_tar(&[(b"f", tar::EntryType::Regular, b"x", b"")]));
    cases.push((
        "a 600 MiB PAX header",
        zstd_bomb(
            header(b"pax", tar::EntryType::XHeader, size).as_bytes(),
            size,
            &tail,
        ),
        Compression::Zstd,
        Outcome::Fails("PAX extended header of 629145600 bytes, over the 1048576-byte limit"),
    ));

    // A GNU long name of 8 MiB.
    let size = 8u64 << 20;
    cases.push((
        "an 8 MiB GNU long name",
        zstd_bomb(
            header(b"././@LongLink", tar::EntryType::GNULongName, size).as_bytes(),
            size,
            &end(),
        ),
        Compression::Zstd,
        Outcome::Fails("GNU long name of 8388608 bytes"),
    ));

    // A PAX header that claims 1 GiB and holds 1 KiB.
    let mut t = header(b"pax", tar::EntryType::XHeader, 1 << 30)
        .as_bytes()
        .to_vec();
    t.extend_from_slice(&pax_record("path", &[b'p'; 1000]));
    pad(&mut t);
    cases.push((
        "a PAX header whose size lies",
        t,
        Compression::None,
        Outcome::Fails("over the"),
    ));

    // PAX records whose lengths lie (longer than the header, zero, not a number).
    for (what, records) in [
        (
            "a PAX record longer than its header",
            b"9999 path=x\n".to_vec(),
        ),
        ("a PAX record of length 0", b"0 path=x\n".to_vec()),
        (
            "a PAX record length that is not a number",
            b"zz path=x\n".to_vec(),
        ),
        (
            "a PAX size record that lies",
            pax_record("size", b"99999999999"),
        ),
    ] {
        let mut t = header(b"pax", tar::EntryType::XHeader, records.len() as u64)
            .as_bytes()
            .to_vec();
        t.extend_from_slice(&records);
        pad(&mut t);
        t.extend_from_slice(&raw_tar(&[(b"f", tar::EntryType::Regular, b"abc", b"")]));
        cases.push((what, t, Compression::None, Outcome::Either));
    }

    // A file of 1 GiB of zeros from a few KiB: holes, no blocks.
    let size = 1u64 << 30;
    let mut tail = vec![0u8; (size.div_ceil(512) * 512 - size) as usize];
    tail.extend_from_slice(&end());
    cases.push((
        "a 1 GiB file of zeros in a few KiB",
        zstd_bomb(
            header(b"zeros", tar::EntryType::Regular, size).as_bytes(),
            size,
            &tail,
        ),
        Compression::Zstd,
        Outcome::Converts,
    ));

    // A path 3000 directories deep (through PAX), and its directories.
    let mut t = Vec::new();
    let mut path = Vec::new();
    for _ in 0..3000 {
        path.extend_from_slice(b"d/");
        let mut record = pax_record("path", &path);
        let mut h = header(b"pax", tar::EntryType::XHeader, record.len() as u64);
        h.set_cksum();
        t.extend_from_slice(h.as_bytes());
        t.append(&mut record);
        pad(&mut t);
        t.extend_from_slice(header(b"placeholder", tar::EntryType::Directory, 0).as_bytes());
    }
    t.extend_from_slice(&end());
    cases.push((
        "paths 3000 levels deep",
        t,
        Compression::None,
        Outcome::Either,
    ));

    // 200,000 entries.
    let mut e = zstd::Encoder::new(Vec::new(), 3).unwrap();
    for i in 0..200_000u32 {
        e.write_all(header(format!("f{i}").as_bytes(), tar::EntryType::Regular, 0).as_bytes())
            .unwrap();
    }
    e.write_all(&end()).unwrap();
    cases.push((
        "200,000 entries",
        e.finish().unwrap(),
        Compression::Zstd,
        Outcome::Converts,
    ));

    // Garbage in numeric fields, checksum made right.
    for (what, at, len) in [
        ("mode", 100, 8),
        ("uid", 108, 8),
        ("size", 124, 12),
        ("mtime", 136, 12),
    ] {
        let mut h = header(b"f", tar::EntryType::Regular, 3);
        h.as_mut_bytes()[at..at + len].copy_from_slice(&b"zz\x01zz\x7fzzzzzzzzzz"[..len]);
        h.set_cksum();
        let mut t = h.as_bytes().to_vec();
        t.extend_from_slice(b"abc");
        pad(&mut t);
        t.extend_from_slice(&end());
        let what: &'static str = Box::leak(format!("garbage in the {what} field").into_boxed_str());
        cases.push((what, t, Compression::None, Outcome::Fails("entry #1")));
    }

    // Links in loops.
    cases.push((
        "hard links naming each other",
        raw_tar(&[
            (b"a", tar::EntryType::Link, b"", b"b"),
            (b"b", tar::EntryType::Link, b"", b"a"),
        ]),
        Compression::None,
        Outcome::Fails("hardlink target `b` does not exist"),
    ));
    cases.push((
        "a hard link to itself",
        raw_tar(&[(b"a", tar::EntryType::Link, b"", b"a")]),
        Compression::None,
        Outcome::Fails("entry #1"),
    ));
    cases.push((
        "symlinks in a loop",
        raw_tar(&[
            (b"a", tar::EntryType::Symlink, b"", b"b"),
            (b"b", tar::EntryType::Symlink, b"", b"a"),
            (b"c", tar::EntryType::Symlink, b"", b"c"),
        ]),
        Compression::None,
        Outcome::Converts,
    ));

    // A GNU sparse file whose map claims more than the stream holds.
    let mut h = header(b"sparse", tar::EntryType::GNUSparse, 512);
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.isextended[0] = 1;
        gnu.realsize.copy_from_slice(b"77777777777\0");
    }
    h.set_cksum();
    let mut t = h.as_bytes().to_vec();
    let mut ext = [0u8; 512];
    ext[504] = 1;
    for _ in 0..3 {
        t.extend_from_slice(&ext);
    }
    cases.push((
        "a sparse map that never ends",
        t,
        Compression::None,
        Outcome::Either,
    ));
    cases
}

/// Runs `slayerfs convert` under `/usr/bin/time`: (success, stderr, peak KiB).
fn convert_measured(src: &str, dst: &str, store: &str) -> (bool, String, u64) {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "peak-kib %M"])
        .arg(bin("slayerfs"))
        .args(["convert", "-q", src, dst, "--store", store])
        .env("SLAYERFS_CONFIG", "/dev/null")
        .output()
        .expect("running slayerfs convert under /usr/bin/time");
    let (_, err) = text(&out);
    let peak = err
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("peak-kib "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak in {err}"));
    // (Without what /usr/bin/time adds.)
    let err = err
        .lines()
        .filter(|l| !l.starts_with("peak-kib ") && !l.starts_with("Command exited with"))
        .collect::<Vec<_>>()
        .join("\n");
    (out.status.success(), err, peak)
}

#[test]
fn hostile_layers_convert_or_fail_in_one_line_with_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mut wrong = Vec::new();
    for (i, (what, blob, c, outcome)) in cases().into_iter().enumerate() {
        let src = tmp.path().join(format!("src{i}"));
        write_image_blobs(&src, "v1", &[(blob, c)]).unwrap();
        let (ok, err, peak) = convert_measured(
            &format!("oci:{}:v1", src.display()),
            &format!("oci:{}:v1", tmp.path().join(format!("dst{i}")).display()),
            store.to_str().unwrap(),
        );
        let messages: Vec<&str> = err.lines().filter(|l| l.starts_with("slayerfs:")).collect();
        let peak_mib = peak / 1024;
        eprintln!(
            "{what}: {} ({peak_mib} MiB)",
            if ok {
                "converted".to_string()
            } else {
                err.clone()
            }
        );
        if peak_mib > MAX_RSS_MIB {
            wrong.push(format!("{what}: peak {peak_mib} MiB"));
        }
        if ok && !err.is_empty() && err.contains("panicked") {
            wrong.push(format!("{what}: {err}"));
        }
        match (outcome, ok) {
            (Outcome::Converts, true) | (Outcome::Either, true) => {}
            (Outcome::Converts, false) => wrong.push(format!("{what}: failed: {err}")),
            (Outcome::Fails(_), true) => wrong.push(format!("{what}: converted")),
            (Outcome::Fails(expect), false) if !err.contains(expect) => {
                wrong.push(format!("{what}: `{err}` lacks `{expect}`"))
            }
            (_, false) if messages.len() != 1 || err.contains("panicked") => {
                wrong.push(format!("{what}: not one clean message: `{err}`"))
            }
            _ => {}
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
