//! Cuts file contents into blocks.
//!
//! Files under one block share packed blocks (a file never straddles two, so
//! a small file is one fetch). Files of a block or more start on a block
//! boundary and are cut at every block boundary of the file, so the same
//! large file in two layers yields the same blocks. An aligned block of a
//! large file that is all zeros is a hole: no block, no slice.

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

/// Packs file data of one layer into blocks submitted to a [`BlockWriter`].
pub struct Packer<'w> {
    writer: &'w mut BlockWriter,
    pack: Vec<u8>,
    pack_seq: Option<BlockSeq>,
}

impl<'w> Packer<'w> {
    pub fn new(writer: &'w mut BlockWriter) -> Self {
        Packer {
            writer,
            pack: Vec::new(),
            pack_seq: None,
        }
    }

    /// Reads exactly `size` bytes of one file and returns its slices.
    pub fn add_file(
        &mut self,
        data: &mut dyn Read,
        size: u64,
    ) -> Result<Vec<PendingSlice>, PackError> {
        if size == 0 {
            Ok(Vec::new())
        } else if size < BLOCK_SIZE as u64 {
            self.add_small(data, size as usize).map(|s| vec![s])
        } else {
            self.add_large(data, size)
        }
    }

    fn add_small(&mut self, data: &mut dyn Read, size: usize) -> Result<PendingSlice, PackError> {
        if self.pack.len() + size > BLOCK_SIZE {
            self.flush_pack()?;
        }
        let seq = match self.pack_seq {
            Some(seq) => seq,
            None => {
                self.pack = self.writer.buffer();
                *self.pack_seq.insert(self.writer.reserve())
            }
        };
        let start = self.pack.len();
        self.pack.resize(start + size, 0);
        if let Err(e) = data.read_exact(&mut self.pack[start..]) {
            self.pack.truncate(start);
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

    fn flush_pack(&mut self) -> Result<(), PackError> {
        if let Some(seq) = self.pack_seq.take() {
            let pack = std::mem::take(&mut self.pack);
            self.writer.submit_reserved_blocking(seq, pack)?;
        }
        Ok(())
    }

    /// Submits the last, partly filled pack.
    pub fn finish(mut self) -> Result<(), PackError> {
        self.flush_pack()
    }
}

fn is_zero(buf: &[u8]) -> bool {
    // 16 bytes at a time; the compiler turns this into vector compares.
    let (words, tail) = buf.as_chunks::<16>();
    words.iter().all(|w| u128::from_ne_bytes(*w) == 0) && tail.iter().all(|&b| b == 0)
}
