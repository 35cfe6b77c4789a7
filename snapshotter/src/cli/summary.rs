//! The closing summaries of `slayerfs convert` and `slayerfs pull`: lines
//! for a person, or with `--json` one JSON object for a script (figures in
//! plain numbers: bytes, seconds).

use std::io::Write;

use serde::Serialize;

use super::convert::ConvertSummary;
use super::progress::human_bytes;
use super::pull::{LayerOutcome, PullReport};

/// What `convert --json` prints.
#[derive(Serialize)]
pub struct Converted<'a> {
    pub source: &'a str,
    pub destination: &'a str,
    pub manifest: &'a str,
    pub store: String,
    pub layers: usize,
    pub entries: u64,
    /// Bytes of the source's layer blobs, as stored (compressed).
    pub bytes_in: u64,
    /// The same, uncompressed.
    pub tar_bytes: u64,
    pub blocks_written: u64,
    pub blocks_present: u64,
    /// Bytes of the blocks written, as stored.
    pub stored_bytes: u64,
    pub index_bytes: u64,
    pub seconds: f64,
}

impl<'a> Converted<'a> {
    pub fn new(
        source: &'a str,
        destination: &'a str,
        store: String,
        s: &'a ConvertSummary,
    ) -> Self {
        Converted {
            source,
            destination,
            manifest: &s.manifest_digest,
            store,
            layers: s.layers,
            entries: s.entries,
            bytes_in: s.bytes_in,
            tar_bytes: s.tar_bytes,
            blocks_written: s.blocks_written,
            blocks_present: s.blocks_present,
            stored_bytes: s.stored_bytes,
            index_bytes: s.index_bytes,
            seconds: s.elapsed.as_secs_f64(),
        }
    }

    pub fn print(&self, json: bool, out: &mut dyn Write) -> std::io::Result<()> {
        if json {
            return json_line(self, out);
        }
        writeln!(out, "converted {} -> {}", self.source, self.destination)?;
        writeln!(out, "  manifest  {}", self.manifest)?;
        writeln!(out, "  store     {}", self.store)?;
        writeln!(out, "  layers    {}", self.layers)?;
        writeln!(out, "  entries   {}", self.entries)?;
        writeln!(
            out,
            "  bytes in  {} ({} uncompressed)",
            human_bytes(self.bytes_in),
            human_bytes(self.tar_bytes)
        )?;
        writeln!(
            out,
            "  blocks    {} written, {} already present ({} stored)",
            self.blocks_written,
            self.blocks_present,
            human_bytes(self.stored_bytes)
        )?;
        writeln!(out, "  indexes   {}", human_bytes(self.index_bytes))?;
        writeln!(
            out,
            "  speed     {:.1} MB/s over {:.2} s",
            self.tar_bytes as f64 / 1e6 / self.seconds.max(1e-9),
            self.seconds
        )
    }
}

/// How many layers of a pull went each way.
#[derive(Serialize)]
pub struct LayerCounts {
    pub total: usize,
    pub lazy: usize,
    pub unpacked: usize,
    pub present: usize,
}

/// What `pull --json` prints.
#[derive(Serialize)]
pub struct Pulled<'a> {
    pub image: &'a str,
    pub manifest: &'a str,
    /// The top layer's chain id: the snapshot containers start from.
    pub chain_id: &'a str,
    pub layers: LayerCounts,
    pub registry_bytes: u64,
    pub seconds: f64,
}

impl<'a> Pulled<'a> {
    pub fn new(r: &'a PullReport) -> Self {
        let count = |o: LayerOutcome| r.layers.iter().filter(|l| **l == o).count();
        Pulled {
            image: &r.image,
            manifest: &r.manifest_digest,
            chain_id: &r.chain_id,
            layers: LayerCounts {
                total: r.layers.len(),
                lazy: count(LayerOutcome::Lazy),
                unpacked: count(LayerOutcome::Unpacked),
                present: count(LayerOutcome::Present),
            },
            registry_bytes: r.registry_bytes,
            seconds: r.seconds,
        }
    }

    pub fn print(&self, json: bool, out: &mut dyn Write) -> std::io::Result<()> {
        if json {
            return json_line(self, out);
        }
        let l = &self.layers;
        writeln!(
            out,
            "pulled {} ({} layers: {} lazily, {} unpacked, {} present); {} from the registry in {:.2} s",
            self.image,
            l.total,
            l.lazy,
            l.unpacked,
            l.present,
            human_bytes(self.registry_bytes),
            self.seconds
        )
    }
}

/// `value` as one line of JSON.
pub fn json_line(value: &impl Serialize, out: &mut dyn Write) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)
}
