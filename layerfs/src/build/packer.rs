//! Cuts file contents into blocks.
//!
//! Files under one block share packed blocks (a file never straddles two, so
//! a small file is one fetch). Files of a block or more start on a block
//! boundary and are cut at every block boundary of the file, so the same
//! large file in two layers yields the same blocks. An aligned block of a
//! large file that is all zeros is a hole: no block, no slice. Small files
//! on the prefetch list share blocks of their own, so that a start reads as
//! few blocks as the files it reads first fill.

use std::io::Read;

use slayerfs_chunkstore::{BlockSeq, BlockWriter, WriteError};

use super::tree::PendingSlice;
use crate::geometry::{chunk_of, BLOCK_SIZE};

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("reading file data: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// A block being filled with small files.
#[derive(Default)]
struct Pack {
    bytes: Vec<u8>,
    seq: Option<BlockSeq>,
}

/// Packs file data of one layer into blocks submitted to a [`BlockWriter`].
pub struct Packer<'w> {
    writer: &'w mut BlockWriter,
    pack: Pack,
    /// Small files on the prefetch list.
    first: Pack,
}

impl<'w> Packer<'w> {
    pub fn new(writer: &'w mut BlockWriter) -> Self {
        Packer {
            writer,
            pack: Pack::default(),
            first: Pack::default(),
        }
    }

    /// Reads exactly `size` bytes of one file and returns its slices; a
    /// small file `read_first` (on the prefetch list) goes with the others
    /// that are.
    pub fn add_file(
        &mut self,
        data: &mut dyn Read,
        size: u64,
        read_first: bool,
    ) -> Result<Vec<PendingSlice>, PackError> {
        if size == 0 {
            Ok(Vec::new())
        } else if size < BLOCK_SIZE as u64 {
            self.add_small(data, size as usize, read_first)
                .map(|s| vec![s])
        } else {
            self.add_large(data, size)
        }
    }

    fn add_small(
        &mut self,
        data: &mut dyn Read,
        size: usize,
        read_first: bool,
    ) -> Result<PendingSlice, PackError> {
        let writer = &mut *self.writer;
        let pack = if read_first {
            &mut self.first
        } else {
            &mut self.pack
        };
        if pack.bytes.len() + size > BLOCK_SIZE {
            flush(writer, pack)?;
        }
        let seq = match pack.seq {
            Some(seq) => seq,
            None => {
                pack.bytes = writer.buffer();
                *pack.seq.insert(writer.reserve())
            }
        };
        let start = pack.bytes.len();
        pack.bytes.resize(start + size, 0);
        if let Err(e) = data.read_exact(&mut pack.bytes[start..]) {
            pack.bytes.truncate(start);
            return Err(e.into());
        }
        Ok(PendingSlice {
            chunk_index: 0,
            offset_in_chunk: 0,
            length: size as u32,
            block: seq,
            offset_in_block: start as u32,
        })
    }

    fn add_large(
        &mut self,
        data: &mut dyn Read,
        size: u64,
    ) -> Result<Vec<PendingSlice>, PackError> {
        // The size is the header's claim, not yet the data's: it sizes
        // nothing before the bytes are there.
        let mut slices = Vec::new();
        let mut offset = 0u64;
        while offset < size {
            let len = (size - offset).min(BLOCK_SIZE as u64) as usize;
            // Read into fresh capacity: no zero-fill of 4 MiB per block.
            let mut buf = self.writer.buffer();
            data.take(len as u64).read_to_end(&mut buf)?;
            if buf.len() != len {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file data ends early",
                )
                .into());
            }
            if !is_zero(&buf) {
                let seq = self.writer.submit_blocking(buf)?;
                // Blocks start at multiples of BLOCK_SIZE, which divides the
                // chunk size: a block never crosses a chunk.
                let (chunk_index, offset_in_chunk) = chunk_of(offset);
                slices.push(PendingSlice {
                    chunk_index,
                    offset_in_chunk,
                    length: len as u32,
                    block: seq,
                    offset_in_block: 0,
                });
            }
            offset += len as u64;
        }
        Ok(slices)
    }

    /// Submits the last, partly filled packs.
    pub fn finish(mut self) -> Result<(), PackError> {
        flush(self.writer, &mut self.pack)?;
        flush(self.writer, &mut self.first)
    }
}

/// Submits a pack's block, if it has one.
fn flush(writer: &mut BlockWriter, pack: &mut Pack) -> Result<(), PackError> {
    if let Some(seq) = pack.seq.take() {
        writer.submit_reserved_blocking(seq, std::mem::take(&mut pack.bytes))?;
    }
    Ok(())
}

fn is_zero(buf: &[u8]) -> bool {
    // 16 bytes at a time; the compiler turns this into vector compares.
    let (words, tail) = buf.as_chunks::<16>();
    words.iter().all(|w| u128::from_ne_bytes(*w) == 0) && tail.iter().all(|&b| b == 0)
}
