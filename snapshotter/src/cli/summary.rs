//! The closing summaries of `slayerfs convert` and `slayerfs pull`: lines
//! for a person, or with `--json` one JSON object for a script (figures in
//! plain numbers: bytes, seconds).

use std::io::Write;

use serde::Serialize;

use super::convert::ConvertSummary;
use super::progress::human_bytes;
use super::pull::{LayerOutcome, PullReport};

/// What `convert --json` prints: where from and to, and the figures.
#[derive(Serialize)]
pub struct Converted<'a> {
    pub source: &'a str,
    pub destination: &'a str,
    pub store: String,
    #[serde(flatten)]
    pub summary: &'a ConvertSummary,
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
            store,
            summary: s,
        }
    }

    pub fn print(&self, json: bool, out: &mut dyn Write) -> std::io::Result<()> {
        if json {
            return json_line(self, out);
        }
        let s = self.summary;
        writeln!(out, "converted {} -> {}", self.source, self.destination)?;
        writeln!(out, "  manifest  {}", s.manifest_digest)?;
        writeln!(out, "  store     {}", self.store)?;
        writeln!(out, "  layers    {}", s.layers)?;
        writeln!(out, "  entries   {}", s.entries)?;
        writeln!(
            out,
            "  bytes in  {} ({} uncompressed)",
            human_bytes(s.bytes_in),
            human_bytes(s.tar_bytes)
        )?;
        writeln!(
            out,
            "  blocks    {} written, {} already present ({} stored)",
            s.blocks_written,
            s.blocks_present,
            human_bytes(s.stored_bytes)
        )?;
        writeln!(out, "  indexes   {}", human_bytes(s.index_bytes))?;
        writeln!(
            out,
            "  speed     {:.1} MB/s over {:.2} s",
            s.mb_per_s(),
            s.elapsed.as_secs_f64()
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
