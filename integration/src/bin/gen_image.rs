//! `slayerfs-gen-image --out DIR`: writes a large benchmark image to an OCI
//! layout, streaming (never the whole layer in memory): one layer of many
//! small files (or `--spread N` layers sharing them out) and one of a few
//! large files (none with `--large-files 0`), tagged `tar` (uncompressed
//! layers) and, with `--gzip`, `gzip` (the same layers gzip-compressed).
//!
//! File contents mix text-like runs (compressible) with pseudo-random runs,
//! so compression costs what it does on real images.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use clap::Parser;
use sha2::{Digest, Sha256};
use slayerfs_integration::fixtures::{write_manifest, Compression, LayerBlob};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 20_000)]
    small_files: usize,
    #[arg(long, default_value_t = 4)]
    large_files: usize,
    #[arg(long, default_value_t = 200)]
    large_mib: u64,
    /// Layers the small files are dealt out to (file i goes to layer i % N);
    /// the merged tree is the same whatever N.
    #[arg(long, default_value_t = 1)]
    spread: usize,
    /// Also write gzip-compressed copies of the layers, tagged `gzip`.
    #[arg(long)]
    gzip: bool,
}

/// Deterministic content: 64 KiB runs, alternately text-like and random.
struct Content {
    left: u64,
    state: u64,
    pos: u64,
}

impl Content {
    fn new(len: u64, seed: u64) -> Self {
        Content {
            left: len,
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            pos: 0,
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }
}

const WORDS: &[&[u8]] = &[
    b"container ",
    b"layer ",
    b"snapshot ",
    b"block ",
    b"index\n",
    b"the ",
    b"of ",
    b"{\"key\": 42} ",
];

impl Read for Content {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        let mut i = 0;
        while i < n {
            let run_left = 65_536 - (self.pos % 65_536) as usize;
            let take = run_left.min(n - i);
            if (self.pos / 65_536).is_multiple_of(2) {
                let mut j = 0;
                while j < take {
                    let w = WORDS[(self.next() % WORDS.len() as u64) as usize];
                    let k = w.len().min(take - j);
                    buf[i + j..i + j + k].copy_from_slice(&w[..k]);
                    j += k;
                }
            } else {
                let mut j = 0;
                while j < take {
                    let bytes = self.next().to_le_bytes();
                    let k = 8.min(take - j);
                    buf[i + j..i + j + k].copy_from_slice(&bytes[..k]);
                    j += k;
                }
            }
            i += take;
            self.pos += take as u64;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a blob through `fill`, then names it by its digest.
fn write_blob(
    dir: &Path,
    fill: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<(String, u64)> {
    let tmp = dir.join("blobs/sha256/.partial");
    let mut w = Hashing {
        inner: BufWriter::with_capacity(1 << 20, File::create(&tmp)?),
        hash: Sha256::new(),
        len: 0,
    };
    fill(&mut w)?;
    w.flush()?;
    let digest = hex::encode(w.hash.finalize());
    std::fs::rename(&tmp, dir.join("blobs/sha256").join(&digest))?;
    Ok((format!("sha256:{digest}"), w.len))
}

fn file_header(size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn small_layer(w: &mut dyn Write, count: usize, layer: usize, of: usize) -> anyhow::Result<()> {
    let mut b = tar::Builder::new(w);
    let mut sizes = Content::new(u64::MAX, 99);
    for i in 0..count {
        // 1 KiB to 64 KiB, skewed small like real images.
        let r = sizes.next();
        let size = 1024 + (r % 64_512) * (r >> 60) / 15;
        if i % of != layer {
            continue;
        }
        let path = format!("usr/share/bench/{:03}/file-{i:06}.dat", i % 500);
        let mut h = file_header(size, 0o644);
        b.append_data(&mut h, path, Content::new(size, i as u64))?;
    }
    b.finish()?;
    Ok(())
}

fn large_layer(w: &mut dyn Write, count: usize, mib: u64) -> anyhow::Result<()> {
    let mut b = tar::Builder::new(w);
    for i in 0..count {
        let size = mib << 20;
        let mut h = file_header(size, 0o755);
        b.append_data(
            &mut h,
            format!("opt/models/large-{i}.bin"),
            Content::new(size, 1000 + i as u64),
        )?;
    }
    b.finish()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(args.out.join("blobs/sha256"))?;
    let mut plain = Vec::new();
    let spread = args.spread.max(1);
    let mut blobs = Vec::new();
    for layer in 0..spread {
        blobs.push(write_blob(&args.out, |w| {
            small_layer(w, args.small_files, layer, spread)
        })?);
    }
    if args.large_files > 0 {
        blobs.push(write_blob(&args.out, |w| {
            large_layer(w, args.large_files, args.large_mib)
        })?);
    }
    for (digest, size) in blobs {
        plain.push(LayerBlob {
            digest: digest.clone(),
            size,
            diff_id: digest,
            compression: Compression::None,
        });
    }
    write_manifest(&args.out, "tar", &plain)?;
    println!(
        "tar: {} bytes in {} layers",
        plain.iter().map(|l| l.size).sum::<u64>(),
        plain.len()
    );
    if args.gzip {
        let mut gz = Vec::new();
        for l in &plain {
            let src = args.out.join("blobs/sha256").join(&l.digest[7..]);
            let (digest, size) = write_blob(&args.out, |w| {
                let mut enc = flate2::write::GzEncoder::new(w, flate2::Compression::default());
                std::io::copy(&mut File::open(&src)?, &mut enc)?;
                enc.finish()?;
                Ok(())
            })?;
            gz.push(LayerBlob {
                digest,
                size,
                diff_id: l.diff_id.clone(),
                compression: Compression::Gzip,
            });
        }
        write_manifest(&args.out, "gzip", &gz)?;
        println!("gzip: {} bytes", gz.iter().map(|l| l.size).sum::<u64>());
    }
    Ok(())
}
