//! Record files of what never changes once built: one per imported layer
//! and one per merged view. Written once, start to end, then mapped
//! read-only: a lookup is a binary search in mapped pages, so records cost
//! no heap (the kernel's page cache holds them and can drop them), and
//! building one writes each byte once (sled wrote a layer's records several
//! times over and kept the nodes it paged out on its heap).
//!
//! Layout (integers little-endian), inodes numbered `1..=count`:
//! - data: per inode its attribute record, its directory entries (names,
//!   then one [`DENT`]-byte entry per name in name order: name offset u64,
//!   name length u32, flags u32, inode u64) and its chunk entries (one
//!   [`CHUNK`]-byte entry per chunk in chunk order: chunk u64, value offset
//!   u64, value length u32, 0u32), in any order;
//! - the inode directory: one [`SLOT`]-byte slot per inode (attribute
//!   offset u64, length u32, entry count u32, entries offset u64, chunk
//!   entries offset u64, chunk count u32, 0u32);
//! - a [`FOOTER`]-byte footer: directory offset u64, count u64, version u32,
//!   CRC-32 of every byte before it, magic.
//!
//! The CRC is checked when a file is opened (local corruption is an error,
//! not wrong attributes); every offset is still bounds-checked on use.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{corrupt, StoreError};
use crate::geometry::Ino;

const MAGIC: &[u8; 8] = b"SLFSTBL\x01";
const VERSION: u32 = 1;
const SLOT: usize = 40;
const DENT: usize = 24;
const CHUNK: usize = 24;
const FOOTER: usize = 32;
/// A directory entry's flag: the name is a whiteout.
const WHITEOUT: u32 = 1;

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Table {
        path: path.to_path_buf(),
        source,
    }
}

/// One inode's place in the file.
#[derive(Clone, Copy, Default)]
struct Slot {
    attr_off: u64,
    attr_len: u32,
    dents: u32,
    dents_off: u64,
    chunks_off: u64,
    chunks: u32,
    has_attr: bool,
}

/// A directory entry as a table holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    pub name: &'a [u8],
    pub ino: u64,
    pub whiteout: bool,
}

/// Writes a table to a temporary name beside `path`; [`Self::finish`]
/// makes it durable under `path`. Dropped unfinished, it leaves nothing.
pub(crate) struct TableWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    crc: crc32fast::Hasher,
    pos: u64,
    slots: Vec<Slot>,
}

impl TableWriter {
    /// `inode_count` is a hint; the table holds inodes up to the highest
    /// one written, and every one of them must have its attributes.
    pub fn create(path: &Path, inode_count: u64) -> Result<Self, StoreError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        // Unique per writer: two writers of one name (a view two threads
        // move from sled at once) must not share a temporary file.
        static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".tmp-{}-{n}-{}",
            std::process::id(),
            name.unwrap_or_default()
        ));
        let count = usize::try_from(inode_count)
            .map_err(|_| corrupt("table", format!("{inode_count} inodes")))?;
        let file = File::create(&tmp).map_err(io_error(&tmp))?;
        Ok(TableWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            crc: crc32fast::Hasher::new(),
            pos: 0,
            slots: Vec::with_capacity(count),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<u64, StoreError> {
        let at = self.pos;
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| corrupt("table", "closed"))?;
        out.write_all(bytes).map_err(io_error(&self.tmp))?;
        self.crc.update(bytes);
        self.pos += bytes.len() as u64;
        Ok(at)
    }

    fn slot(&mut self, ino: Ino) -> Result<&mut Slot, StoreError> {
        let i = ino
            .0
            .checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .ok_or_else(|| corrupt("table", format!("{ino} outside the table")))?;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, Slot::default());
        }
        Ok(&mut self.slots[i])
    }

    /// The attribute record of `ino`, once.
    pub fn put_attr(&mut self, ino: Ino, record: &[u8]) -> Result<(), StoreError> {
        if self.slot(ino)?.has_attr {
            return Err(corrupt("table", format!("{ino} written twice")));
        }
        let len = u32::try_from(record.len())
            .map_err(|_| corrupt("table", format!("{ino}: record too large")))?;
        let off = self.write(record)?;
        let slot = self.slot(ino)?;
        (slot.attr_off, slot.attr_len, slot.has_attr) = (off, len, true);
        Ok(())
    }

    /// The entries of directory `ino`, in strictly increasing name order.
    pub fn put_entries(&mut self, ino: Ino, entries: &[Entry<'_>]) -> Result<(), StoreError> {
        if self.slot(ino)?.dents > 0 {
            return Err(corrupt("table", format!("{ino}: entries written twice")));
        }
        if entries.windows(2).any(|w| w[0].name >= w[1].name) {
            return Err(corrupt("table", format!("{ino}: entries out of order")));
        }
        let count = u32::try_from(entries.len())
            .map_err(|_| corrupt("table", format!("{ino}: too many entries")))?;
        let mut offs = Vec::with_capacity(entries.len());
        for e in entries {
            offs.push(self.write(e.name)?);
        }
        let mut packed = Vec::with_capacity(entries.len() * DENT);
        for (e, off) in entries.iter().zip(offs) {
            packed.extend_from_slice(&off.to_le_bytes());
            packed.extend_from_slice(&(e.name.len() as u32).to_le_bytes());
            packed.extend_from_slice(&u32::from(e.whiteout).to_le_bytes());
            packed.extend_from_slice(&e.ino.to_le_bytes());
        }
        let at = self.write(&packed)?;
        let slot = self.slot(ino)?;
        (slot.dents_off, slot.dents) = (at, count);
        Ok(())
    }

    /// The per-chunk values of file `ino`, in strictly increasing chunk
    /// order.
    pub fn put_chunks(&mut self, ino: Ino, chunks: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        if self.slot(ino)?.chunks > 0 {
            return Err(corrupt("table", format!("{ino}: chunks written twice")));
        }
        if chunks.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(corrupt("table", format!("{ino}: chunks out of order")));
        }
        let count = u32::try_from(chunks.len())
            .map_err(|_| corrupt("table", format!("{ino}: too many chunks")))?;
        let mut packed = Vec::with_capacity(chunks.len() * CHUNK);
        for (chunk, value) in chunks {
            let len = u32::try_from(value.len())
                .map_err(|_| corrupt("table", format!("{ino}: chunk value too large")))?;
            let off = self.write(value)?;
            packed.extend_from_slice(&chunk.to_le_bytes());
            packed.extend_from_slice(&off.to_le_bytes());
            packed.extend_from_slice(&len.to_le_bytes());
            packed.extend_from_slice(&0u32.to_le_bytes());
        }
        let at = self.write(&packed)?;
        let slot = self.slot(ino)?;
        (slot.chunks_off, slot.chunks) = (at, count);
        Ok(())
    }

    /// Writes the directory and footer, syncs the file, gives it its name
    /// and syncs the directory: after this returns the table survives a
    /// crash. Every inode must have its attribute record.
    pub fn finish(mut self) -> Result<(), StoreError> {
        if let Some(i) = self.slots.iter().position(|s| !s.has_attr) {
            return Err(corrupt("table", format!("ino {} was never written", i + 1)));
        }
        let mut dir = Vec::with_capacity(self.slots.len() * SLOT);
        for s in &self.slots {
            dir.extend_from_slice(&s.attr_off.to_le_bytes());
            dir.extend_from_slice(&s.attr_len.to_le_bytes());
            dir.extend_from_slice(&s.dents.to_le_bytes());
            dir.extend_from_slice(&s.dents_off.to_le_bytes());
            dir.extend_from_slice(&s.chunks_off.to_le_bytes());
            dir.extend_from_slice(&s.chunks.to_le_bytes());
            dir.extend_from_slice(&0u32.to_le_bytes());
        }
        let dir_off = self.write(&dir)?;
        let mut head = Vec::with_capacity(20);
        head.extend_from_slice(&dir_off.to_le_bytes());
        head.extend_from_slice(&(self.slots.len() as u64).to_le_bytes());
        head.extend_from_slice(&VERSION.to_le_bytes());
        self.write(&head)?;
        let crc = std::mem::take(&mut self.crc).finalize();
        let mut tail = crc.to_le_bytes().to_vec();
        tail.extend_from_slice(MAGIC);
        self.write(&tail)?;
        let out = self.out.take().ok_or_else(|| corrupt("table", "closed"))?;
        let file = out
            .into_inner()
            .map_err(|e| io_error(&self.tmp)(e.into_error()))?;
        file.sync_all().map_err(io_error(&self.tmp))?;
        std::fs::rename(&self.tmp, &self.path).map_err(io_error(&self.path))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dir))
    }
}

impl Drop for TableWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// An open table.
pub(crate) struct Table {
    map: memmap2::Mmap,
    dir_off: u64,
    count: u64,
    refill: super::resident::Refill,
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

impl Table {
    /// Opens and checks the table at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut file = File::open(path).map_err(io_error(path))?;
        let len = file.metadata().map_err(io_error(path))?.len();
        if len < FOOTER as u64 {
            return Err(corrupt("table", format!("{}: truncated", path.display())));
        }
        // Checked by reading rather than through the map, so that only
        // the pages lookups touch are mapped in.
        let mut crc = crc32fast::Hasher::new();
        let mut left = len - 12;
        let mut buf = vec![0u8; 1 << 16];
        while left > 0 {
            let n = buf.len().min(left as usize);
            file.read_exact(&mut buf[..n]).map_err(io_error(path))?;
            crc.update(&buf[..n]);
            left -= n as u64;
        }
        let mut tail = [0u8; 12];
        file.read_exact(&mut tail).map_err(io_error(path))?;
        if &tail[4..] != MAGIC {
            return Err(corrupt("table", format!("{}: not a table", path.display())));
        }
        if le_u32(&tail, 0) != crc.finalize() {
            return Err(corrupt(
                "table",
                format!("{}: checksum mismatch", path.display()),
            ));
        }
        // SAFETY: table files are never written after their rename; a
        // removal unlinks the file, which leaves this mapping intact.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error(path))?;
        let f = map.len() - FOOTER;
        let (dir_off, count, version) =
            (le_u64(&map, f), le_u64(&map, f + 8), le_u32(&map, f + 16));
        if version != VERSION {
            return Err(corrupt(
                "table",
                format!("{}: version {version}", path.display()),
            ));
        }
        let dir_end = count
            .checked_mul(SLOT as u64)
            .and_then(|n| n.checked_add(dir_off));
        if dir_end != Some(f as u64) {
            return Err(corrupt(
                "table",
                format!("{}: inode directory out of place", path.display()),
            ));
        }
        Ok(Table {
            map,
            dir_off,
            count,
            refill: Default::default(),
        })
    }

    pub fn inode_count(&self) -> u64 {
        self.count
    }

    /// `len` bytes at `off`, inside the data.
    fn bytes(&self, off: u64, len: u64) -> Result<&[u8], StoreError> {
        off.checked_add(len)
            .filter(|&end| end <= self.dir_off)
            .and_then(|end| self.map.get(off as usize..end as usize))
            .ok_or_else(|| corrupt("table", format!("{len} bytes at {off} outside the data")))
    }

    fn slot(&self, ino: Ino) -> Option<Slot> {
        if ino.0 == 0 || ino.0 > self.count {
            return None;
        }
        self.refill.touch(&self.map);
        let at = (self.dir_off + (ino.0 - 1) * SLOT as u64) as usize;
        let s = &self.map[at..at + SLOT];
        Some(Slot {
            attr_off: le_u64(s, 0),
            attr_len: le_u32(s, 8),
            dents: le_u32(s, 12),
            dents_off: le_u64(s, 16),
            chunks_off: le_u64(s, 24),
            chunks: le_u32(s, 32),
            has_attr: true,
        })
    }

    /// The attribute record of `ino`; None outside the table.
    pub fn attr(&self, ino: Ino) -> Result<Option<&[u8]>, StoreError> {
        self.slot(ino)
            .map(|s| self.bytes(s.attr_off, s.attr_len.into()))
            .transpose()
    }

    fn entries_of(&self, s: &Slot) -> Result<&[u8], StoreError> {
        self.bytes(s.dents_off, u64::from(s.dents) * DENT as u64)
    }

    fn chunks_of(&self, s: &Slot) -> Result<&[u8], StoreError> {
        self.bytes(s.chunks_off, u64::from(s.chunks) * CHUNK as u64)
    }

    fn entry<'a>(&'a self, packed: &[u8], i: usize) -> Result<Entry<'a>, StoreError> {
        let e = &packed[i * DENT..(i + 1) * DENT];
        Ok(Entry {
            name: self.bytes(le_u64(e, 0), le_u32(e, 8).into())?,
            whiteout: le_u32(e, 12) & WHITEOUT != 0,
            ino: le_u64(e, 16),
        })
    }

    /// The entry `name` of directory `dir`.
    pub fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Option<Entry<'_>>, StoreError> {
        let Some(s) = self.slot(dir) else {
            return Ok(None);
        };
        let packed = self.entries_of(&s)?;
        let (mut lo, mut hi) = (0usize, s.dents as usize);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = self.entry(packed, mid)?;
            match e.name.cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some(e)),
            }
        }
        Ok(None)
    }

    /// The entries of directory `dir`, in name order.
    pub fn entries(&self, dir: Ino) -> Result<Vec<Entry<'_>>, StoreError> {
        let Some(s) = self.slot(dir) else {
            return Ok(Vec::new());
        };
        let packed = self.entries_of(&s)?;
        (0..s.dents as usize)
            .map(|i| self.entry(packed, i))
            .collect()
    }

    /// The chunk entries of `ino`: (chunk, value offset, value length).
    fn chunk_entries(&self, ino: Ino) -> Result<Vec<(u64, u64, u64)>, StoreError> {
        let Some(s) = self.slot(ino) else {
            return Ok(Vec::new());
        };
        let packed = self.chunks_of(&s)?;
        Ok(packed
            .chunks_exact(CHUNK)
            .map(|c| (le_u64(c, 0), le_u64(c, 8), u64::from(le_u32(c, 16))))
            .collect())
    }

    /// The value of chunk `chunk` of `ino`.
    pub fn chunk(&self, ino: Ino, chunk: u64) -> Result<Option<&[u8]>, StoreError> {
        let Some(s) = self.slot(ino) else {
            return Ok(None);
        };
        let packed = self.chunks_of(&s)?;
        let (mut lo, mut hi) = (0usize, s.chunks as usize);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let c = &packed[mid * CHUNK..(mid + 1) * CHUNK];
            match le_u64(c, 0).cmp(&chunk) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    return Ok(Some(self.bytes(le_u64(c, 8), le_u32(c, 16).into())?));
                }
            }
        }
        Ok(None)
    }

    /// Every chunk value of `ino`, in chunk order.
    pub fn chunks(&self, ino: Ino) -> Result<Vec<(u64, &[u8])>, StoreError> {
        self.chunk_entries(ino)?
            .into_iter()
            .map(|(chunk, off, len)| Ok((chunk, self.bytes(off, len)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &[u8], ino: u64) -> Entry<'_> {
        Entry {
            name,
            ino,
            whiteout: ino == 9,
        }
    }

    #[test]
    fn written_out_of_order_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let mut w = TableWriter::create(&path, 3).unwrap();
        w.put_attr(Ino(3), b"three").unwrap();
        w.put_entries(Ino(1), &[entry(b"a", 2), entry(b"b", 3), entry(b"c", 9)])
            .unwrap();
        w.put_attr(Ino(1), b"root").unwrap();
        w.put_chunks(Ino(3), &[(0, b"c0".to_vec()), (7, b"c7".to_vec())])
            .unwrap();
        w.put_attr(Ino(2), b"").unwrap();
        w.finish().unwrap();
        let t = Table::open(&path).unwrap();
        assert_eq!(t.inode_count(), 3);
        assert_eq!(t.attr(Ino(1)).unwrap(), Some(&b"root"[..]));
        assert_eq!(t.attr(Ino(2)).unwrap(), Some(&b""[..]));
        assert_eq!(t.attr(Ino(4)).unwrap(), None);
        assert_eq!(t.attr(Ino(0)).unwrap(), None);
        assert_eq!(t.lookup(Ino(1), b"b").unwrap(), Some(entry(b"b", 3)));
        assert_eq!(
            t.lookup(Ino(1), b"c").unwrap().map(|e| e.whiteout),
            Some(true)
        );
        assert_eq!(t.lookup(Ino(1), b"bb").unwrap(), None);
        assert_eq!(t.lookup(Ino(2), b"a").unwrap(), None);
        assert_eq!(t.entries(Ino(1)).unwrap().len(), 3);
        assert_eq!(t.chunk(Ino(3), 7).unwrap(), Some(&b"c7"[..]));
        assert_eq!(t.chunk(Ino(3), 1).unwrap(), None);
        assert_eq!(t.chunks(Ino(3)).unwrap().len(), 2);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn unfinished_or_incomplete_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let mut w = TableWriter::create(&path, 2).unwrap();
        w.put_attr(Ino(1), b"x").unwrap();
        assert!(w.put_attr(Ino(1), b"y").is_err());
        assert!(w.put_attr(Ino(0), b"y").is_err());
        assert!(w
            .put_entries(Ino(1), &[entry(b"b", 2), entry(b"a", 2)])
            .is_err());
        w.put_attr(Ino(3), b"z").unwrap();
        assert!(w.finish().is_err(), "ino 2 was never written");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn every_flipped_byte_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let mut w = TableWriter::create(&path, 2).unwrap();
        w.put_attr(Ino(1), b"root").unwrap();
        w.put_entries(Ino(1), &[entry(b"f", 2)]).unwrap();
        w.put_attr(Ino(2), b"file").unwrap();
        w.finish().unwrap();
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert!(Table::open(&path).is_err(), "byte {i} flipped");
        }
        for n in 0..good.len() {
            std::fs::write(&path, &good[..n]).unwrap();
            assert!(Table::open(&path).is_err(), "truncated to {n}");
        }
    }
}
