//! Streaming safetensors I/O for merges: tensors read one at a time from memory-mapped files
//! (the pages of a tensor are released with `MADV_DONTNEED` once it is decoded, so resident
//! memory does not grow with the model), and shards written incrementally: the header (8-byte
//! little-endian length, JSON with each tensor's dtype, shape and `data_offsets`, padded with
//! spaces to a multiple of 8) is known before any data is merged because the output shapes and
//! dtype are known from the input headers; then the tensors are appended in header order.

use super::Real;
use crate::hf::{self, TensorInfo};
use anyhow::{bail, Context};
use memmap2::Mmap;
use serde_json::{json, Map, Value as J};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Output dtypes a merge writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutDtype {
    F32,
    Bf16,
    F16,
    F64,
}

impl From<kinds::model::WeightDtype> for OutDtype {
    fn from(d: kinds::model::WeightDtype) -> Self {
        use kinds::model::WeightDtype as W;
        match d {
            W::F32 => OutDtype::F32,
            W::Bf16 => OutDtype::Bf16,
            W::F16 => OutDtype::F16,
        }
    }
}

impl OutDtype {
    /// From a recipe word (`f32`, `bf16`, `f16`) or a safetensors name (`F32`, `BF16`, …).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "F32" => OutDtype::F32,
            "BF16" => OutDtype::Bf16,
            "F16" => OutDtype::F16,
            "F64" => OutDtype::F64,
            _ => return None,
        })
    }
    /// The safetensors dtype name.
    pub fn st_name(self) -> &'static str {
        match self {
            OutDtype::F32 => "F32",
            OutDtype::Bf16 => "BF16",
            OutDtype::F16 => "F16",
            OutDtype::F64 => "F64",
        }
    }
    /// The name transformers writes in config.json.
    pub fn torch_name(self) -> &'static str {
        match self {
            OutDtype::F32 => "float32",
            OutDtype::Bf16 => "bfloat16",
            OutDtype::F16 => "float16",
            OutDtype::F64 => "float64",
        }
    }
    pub fn size(self) -> u64 {
        match self {
            OutDtype::F32 => 4,
            OutDtype::Bf16 | OutDtype::F16 => 2,
            OutDtype::F64 => 8,
        }
    }
}

/// A memory-mapped safetensors file.
pub struct MappedFile {
    map: Mmap,
    data_start: usize,
    shown: String,
}

impl MappedFile {
    /// Maps `path`; `shown` names it in errors. The header was validated by
    /// [`hf::read_safetensors_header`] (offsets within the file).
    pub fn open(path: &Path, shown: &str) -> anyhow::Result<Self> {
        let f = File::open(path).with_context(|| format!("{shown}: cannot open"))?;
        // SAFETY: the artifact store never modifies a published file in place; a concurrent
        // truncation by another program would be a corrupted store, which `temper verify` reports.
        let map = unsafe { Mmap::map(&f) }.with_context(|| format!("{shown}: cannot map"))?;
        if map.len() < 8 {
            bail!("{shown}: not a safetensors file");
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&map[..8]);
        let data_start = 8 + u64::from_le_bytes(len) as usize;
        Ok(MappedFile {
            map,
            data_start,
            shown: shown.to_string(),
        })
    }

    /// Decodes tensor `name` (described by `info`) into `T`, then drops its pages from this
    /// process's resident set.
    pub fn read<T: Real>(&self, name: &str, info: &TensorInfo) -> anyhow::Result<Vec<T>> {
        let (a, b) = (
            self.data_start + info.offsets.0 as usize,
            self.data_start + info.offsets.1 as usize,
        );
        if b > self.map.len() {
            bail!("{}: tensor \"{name}\" lies outside the file", self.shown);
        }
        let bytes = &self.map[a..b];
        let out: Vec<T> = match info.dtype.as_str() {
            "F32" => bytes
                .chunks_exact(4)
                .map(|c| T::from_f64(f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64))
                .collect(),
            "F64" => bytes
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    T::from_f64(f64::from_le_bytes(a))
                })
                .collect(),
            "BF16" => bytes
                .chunks_exact(2)
                .map(|c| T::from_f64(half::bf16::from_le_bytes([c[0], c[1]]).to_f64()))
                .collect(),
            "F16" => bytes
                .chunks_exact(2)
                .map(|c| T::from_f64(half::f16::from_le_bytes([c[0], c[1]]).to_f64()))
                .collect(),
            other => bail!(
                "{}: tensor \"{name}\" is stored as {other}; merges read F32, BF16, F16 and F64",
                self.shown
            ),
        };
        self.release(a, b - a);
        Ok(out)
    }

    /// Drops the pages of `[off, off+len)` from the resident set (they are re-read from the page
    /// cache if touched again). Best effort.
    fn release(&self, off: usize, len: usize) {
        const PAGE: usize = 4096;
        let start = off / PAGE * PAGE;
        let end = (off + len).min(self.map.len());
        if end > start {
            // SAFETY: a read-only shared file mapping: MADV_DONTNEED only discards this process's
            // page-table entries; the data is read again from the file on the next access.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
    }
}

/// Encodes `xs` as `dtype` (round to nearest even) and writes it, in chunks.
pub fn write_values<T: Real>(w: &mut impl Write, xs: &[T], dtype: OutDtype) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    for chunk in xs.chunks(1 << 13) {
        buf.clear();
        for x in chunk {
            let v = x.to_f64();
            match dtype {
                OutDtype::F32 => buf.extend_from_slice(&(v as f32).to_le_bytes()),
                OutDtype::F64 => buf.extend_from_slice(&v.to_le_bytes()),
                OutDtype::Bf16 => {
                    buf.extend_from_slice(&half::bf16::from_f32(v as f32).to_le_bytes())
                }
                OutDtype::F16 => {
                    buf.extend_from_slice(&half::f16::from_f32(v as f32).to_le_bytes())
                }
            }
        }
        w.write_all(&buf)?;
    }
    Ok(())
}

/// One tensor of an output shard: name and shape (dtype is the shard's).
#[derive(Clone, Debug)]
pub struct OutTensor {
    pub name: String,
    pub shape: Vec<usize>,
}

/// A shard being written: header first, then each tensor in order through [`ShardWriter::push`].
pub struct ShardWriter {
    w: BufWriter<File>,
    tensors: Vec<OutTensor>,
    next: usize,
    dtype: OutDtype,
    shown: String,
}

impl ShardWriter {
    /// Creates `path` and writes the header for `tensors` (in this order) of `dtype`.
    pub fn create(path: &Path, tensors: Vec<OutTensor>, dtype: OutDtype) -> anyhow::Result<Self> {
        let shown = path.display().to_string();
        let mut header = Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut off = 0u64;
        for t in &tensors {
            let len = t.shape.iter().product::<usize>() as u64 * dtype.size();
            header.insert(
                t.name.clone(),
                json!({"dtype": dtype.st_name(), "shape": t.shape, "data_offsets": [off, off + len]}),
            );
            off += len;
        }
        let mut text = serde_json::to_string(&J::Object(header))?.into_bytes();
        while !text.len().is_multiple_of(8) {
            text.push(b' ');
        }
        let f = File::create(path).with_context(|| format!("creating {shown}"))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        w.write_all(&(text.len() as u64).to_le_bytes())?;
        w.write_all(&text)?;
        Ok(ShardWriter {
            w,
            tensors,
            next: 0,
            dtype,
            shown,
        })
    }

    /// Name and shape of the next tensor to push, `None` when the shard is complete.
    pub fn next_tensor(&self) -> Option<&OutTensor> {
        self.tensors.get(self.next)
    }

    /// Appends the next tensor's values (its element count must match the header).
    pub fn push<T: Real>(&mut self, xs: &[T]) -> anyhow::Result<()> {
        let Some(t) = self.tensors.get(self.next) else {
            bail!("{}: more tensors than the header declares", self.shown);
        };
        let n: usize = t.shape.iter().product();
        if xs.len() != n {
            bail!(
                "{}: tensor \"{}\" has {} elements, its shape {:?} needs {n}",
                self.shown,
                t.name,
                xs.len(),
                t.shape
            );
        }
        write_values(&mut self.w, xs, self.dtype)
            .with_context(|| format!("writing {}", self.shown))?;
        self.next += 1;
        Ok(())
    }

    /// Flushes and fsyncs; every declared tensor must have been pushed.
    pub fn finish(self) -> anyhow::Result<()> {
        if self.next != self.tensors.len() {
            bail!(
                "{}: {} of {} tensors written",
                self.shown,
                self.next,
                self.tensors.len()
            );
        }
        let f = self
            .w
            .into_inner()
            .map_err(|e| anyhow::anyhow!("flushing {}: {}", self.shown, e.error()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", self.shown))
    }
}

/// Splits tensors (in order) into shards of at most `max_bytes` (a larger tensor gets a shard of
/// its own), as [`crate::arch::io`] does when saving a model.
pub fn plan_shards(
    tensors: Vec<OutTensor>,
    dtype: OutDtype,
    max_bytes: u64,
) -> Vec<Vec<OutTensor>> {
    let mut shards: Vec<Vec<OutTensor>> = vec![vec![]];
    let mut cur = 0u64;
    for t in tensors {
        let size = t.shape.iter().product::<usize>() as u64 * dtype.size();
        if cur > 0 && cur + size > max_bytes {
            shards.push(vec![]);
            cur = 0;
        }
        cur += size;
        if let Some(s) = shards.last_mut() {
            s.push(t);
        }
    }
    shards
}

/// File name of shard `i` (0-based) of `n`: `model.safetensors` when `n = 1`.
pub fn shard_name(i: usize, n: usize) -> String {
    if n == 1 {
        hf::WEIGHTS_FILE.to_string()
    } else {
        format!("model-{:05}-of-{n:05}.safetensors", i + 1)
    }
}
