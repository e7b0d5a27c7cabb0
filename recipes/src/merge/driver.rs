//! The streaming merge driver: checks that the inputs fit together (same tensors and shapes,
//! same vocabulary and tokenizer unless a tokenizer source is named), then for each output
//! tensor reads that tensor from every input, resolves the method's parameters for it, merges
//! and appends the result to the current output shard. Peak memory is the inputs' copies of one
//! tensor (in the compute dtype) plus the output buffers, independent of the model size.
//!
//! Output: an HF model directory — `model.safetensors` or `model-0000i-of-0000n.safetensors` +
//! `model.safetensors.index.json` (shards above `max_shard_bytes`), `config.json` of the
//! reference model (the base, else the first model) with the output dtype (and vocabulary
//! size), `generation_config.json`, and the tokenizer files of the tokenizer source (else the
//! reference). Everything is written into the given output directory only.
//!
//! Vocabulary: when inputs differ in `vocab_size`, a tokenizer source must be named; its
//! vocabulary size `V` is the output's. Embedding-like tensors (`embed_tokens`, `lm_head`, with
//! `vocab_size` rows) of the other inputs are cut to `V` rows, or completed with the rows of the
//! tokenizer source (token ids are assumed to agree on the shared prefix, as when a fine-tune
//! appended tokens).

use super::params::ParamValue;
use super::shards::{self, MappedFile, OutDtype, OutTensor, ShardWriter};
use super::{BaseUse, Method, Real, TensorParams, Tensors};
use crate::arch::io::{generation_config, GENERATION_CONFIG_FILE, TOKENIZER_FILES};
use crate::hf::{self, TensorInfo};
use crate::rng::SplitMix64;
use crate::stage::StageError;
use anyhow::Context;
use serde_json::{json, Map, Value as J};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

/// A model directory entering the merge: `name` (the node) names it in errors.
#[derive(Clone, Debug)]
pub struct Input {
    pub name: String,
    pub dir: PathBuf,
}

/// Parameter values of a merge before resolution per tensor: `global[param]` and
/// `per_model[i][param]` (same order as [`Job::models`]); unset ones take the method's default.
#[derive(Clone, Debug, Default)]
pub struct ParamSet {
    pub global: BTreeMap<String, ParamValue>,
    pub per_model: Vec<BTreeMap<String, ParamValue>>,
}

/// Everything a merge needs.
#[derive(Clone, Debug)]
pub struct Job {
    pub method: &'static Method,
    /// The base (for slerp: the first of the two).
    pub base: Option<Input>,
    pub models: Vec<Input>,
    pub params: ParamSet,
    /// `None` → the method's default.
    pub normalize: Option<bool>,
    pub seed: u64,
    /// `None` → the reference model's main dtype.
    pub dtype: Option<OutDtype>,
    /// Directory with the tokenizer files to ship (a model or tokenizer artifact).
    pub tokenizer_from: Option<Input>,
    /// A tensor missing from a model is taken from the base instead of failing.
    pub missing_from_base: bool,
    pub max_shard_bytes: u64,
    /// Compute in f64 instead of f32 (tests).
    pub f64: bool,
}

/// A loaded input: config.json and the weights' headers.
struct Loaded {
    input: Input,
    raw: J,
    vocab: usize,
    layers: usize,
    weights: hf::Weights,
}

fn user(msg: String, hint: Option<&str>) -> StageError {
    StageError::user(msg, hint.map(str::to_string))
}

fn load(input: &Input) -> Result<Loaded, StageError> {
    let shown = format!("model {}", input.name);
    let cfg = hf::read_config(&input.dir, &shown)?;
    let weights = hf::read_weights(&input.dir, &shown)?;
    let text = fs::read_to_string(input.dir.join(hf::CONFIG_FILE))
        .with_context(|| format!("{shown}: reading config.json"))?;
    let raw: J = serde_json::from_str(&text).with_context(|| format!("{shown}: config.json"))?;
    Ok(Loaded {
        input: input.clone(),
        raw,
        vocab: cfg.vocab_size,
        layers: cfg.num_hidden_layers,
        weights,
    })
}

/// Whether `name` is an embedding-like tensor with one row per token.
fn is_vocab_tensor(name: &str, shape: &[usize], vocab: usize) -> bool {
    (name.contains("embed_tokens") || name.contains("lm_head") || name.contains("wte"))
        && shape.first() == Some(&vocab)
}

/// The per-tensor seed: `SplitMix64::derived(seed, h, 0)` with `h` the first 8 bytes of
/// blake3(name), so masks do not depend on the order tensors are visited in.
pub fn tensor_seed(seed: u64, name: &str) -> u64 {
    let h = blake3::hash(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    SplitMix64::derived(seed, u64::from_le_bytes(b), 0).next_u64()
}

/// Runs the merge into `out_dir`; `tick(i, n)` is called before tensor `i` of `n` (it may
/// return an error to stop, e.g. on cancellation). Returns a summary.
pub fn run(
    job: &Job,
    out_dir: &Path,
    tick: &mut dyn FnMut(usize, usize) -> Result<(), StageError>,
) -> Result<J, StageError> {
    if job.method.decl.base != BaseUse::None && job.base.is_none() {
        return Err(user(
            format!("method {} needs a base model", job.method.decl.name),
            Some("set `base=NAME`"),
        ));
    }
    let base = job.base.as_ref().map(load).transpose()?;
    let models = job.models.iter().map(load).collect::<Result<Vec<_>, _>>()?;
    let Some(reference) = base.as_ref().or(models.first()) else {
        return Err(user("a merge needs at least one model".into(), None));
    };
    let all: Vec<&Loaded> = base.iter().chain(models.iter()).collect();
    let tok_src = match &job.tokenizer_from {
        Some(t) => t.dir.clone(),
        None => reference.input.dir.clone(),
    };
    let vocab = check_vocab(job, &all, reference)?;
    let donor = all
        .iter()
        .copied()
        .find(|l| Some(&l.input.dir) == job.tokenizer_from.as_ref().map(|t| &t.dir))
        .or_else(|| all.iter().copied().find(|l| l.vocab == vocab));
    let plan = plan_tensors(job, &all, reference, vocab)?;

    let dtype = job
        .dtype
        .or_else(|| {
            reference
                .weights
                .main_dtype()
                .and_then(|d| OutDtype::parse(&d))
        })
        .unwrap_or(OutDtype::F32);
    let shards = shards::plan_shards(plan.clone(), dtype, job.max_shard_bytes);
    let nshards = shards.len();
    let mut maps: HashMap<(PathBuf, String), MappedFile> = HashMap::new();
    for l in &all {
        for f in &l.weights.files {
            let key = (l.input.dir.clone(), f.clone());
            if let std::collections::hash_map::Entry::Vacant(e) = maps.entry(key) {
                let shown = format!("model {}: {f}", l.input.name);
                e.insert(MappedFile::open(&l.input.dir.join(f), &shown)?);
            }
        }
    }
    let ctx = ReadCtx {
        maps: &maps,
        vocab,
        donor,
        base: base.as_ref(),
        missing_from_base: job.missing_from_base,
    };
    let mut weight_map = Map::new();
    let (mut done, total, mut bytes, mut params) = (0usize, plan.len(), 0u64, 0usize);
    let mut files = Vec::new();
    for (si, shard) in shards.into_iter().enumerate() {
        let file = shards::shard_name(si, nshards);
        let mut w = ShardWriter::create(&out_dir.join(&file), shard.clone(), dtype)?;
        for t in &shard {
            tick(done, total)?;
            let merged = if job.f64 {
                merge_one::<f64>(job, &ctx, &models, reference, &t.name, job.method.merge_f64)?
            } else {
                merge_one::<f32>(job, &ctx, &models, reference, &t.name, job.method.merge_f32)?
            };
            match merged {
                Merged::F32(v) => w.push(&v)?,
                Merged::F64(v) => w.push(&v)?,
            }
            let n: usize = t.shape.iter().product();
            params += n;
            bytes += n as u64 * dtype.size();
            weight_map.insert(t.name.clone(), J::from(file.as_str()));
            done += 1;
        }
        w.finish()?;
        files.push(file);
    }
    tick(total, total)?;
    if nshards > 1 {
        let index = json!({
            "metadata": {"total_parameters": params, "total_size": bytes},
            "weight_map": weight_map,
        });
        crate::json::write_json(&out_dir.join(hf::INDEX_FILE), &index)?;
    }
    write_companions(reference, &tok_src, out_dir, dtype, vocab)?;
    Ok(json!({
        "method": job.method.decl.name,
        "base": job.base.as_ref().map(|b| b.name.clone()),
        "models": job.models.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
        "tensors": total,
        "parameters": params,
        "dtype": dtype.st_name(),
        "vocab_size": vocab,
        "shards": files,
        "bytes": bytes,
    }))
}

/// The output vocabulary size; refuses differing vocabularies or tokenizers without a source.
fn check_vocab(job: &Job, all: &[&Loaded], reference: &Loaded) -> Result<usize, StageError> {
    let tok_bytes = |l: &Loaded| fs::read(l.input.dir.join(crate::tok::TOKENIZER_FILE)).ok();
    if job.tokenizer_from.is_none() {
        for l in all {
            if l.vocab != reference.vocab {
                return Err(user(
                    format!(
                        "models {} and {} have different vocabulary sizes ({} and {})",
                        reference.input.name, l.input.name, reference.vocab, l.vocab
                    ),
                    Some("name the tokenizer of the result with `tokenizer-from=NODE`; embedding rows are then aligned to it"),
                ));
            }
        }
        let r = tok_bytes(reference);
        for l in all {
            let t = tok_bytes(l);
            if r.is_some() && t.is_some() && t != r {
                return Err(user(
                    format!(
                        "models {} and {} have different tokenizers (their tokenizer.json differ)",
                        reference.input.name, l.input.name
                    ),
                    Some("merge models that share a tokenizer, or name the result's tokenizer with `tokenizer-from=NODE`"),
                ));
            }
        }
        return Ok(reference.vocab);
    }
    let src = job.tokenizer_from.as_ref().map(|t| &t.dir);
    if let Some(l) = all.iter().find(|l| Some(&l.input.dir) == src) {
        return Ok(l.vocab);
    }
    // A tokenizer node: its full vocabulary, else the reference's.
    match src {
        Some(dir) if dir.join(crate::tok::TOKENIZER_FILE).is_file() => {
            let t = crate::tok::load_tokenizer_json(
                &dir.join(crate::tok::TOKENIZER_FILE),
                "tokenizer-from",
            )?;
            Ok(crate::tok::full_vocab_size(&t).max(1))
        }
        _ => Ok(reference.vocab),
    }
}

/// The output tensors (the reference's, in name order), after checking every input has each
/// one with the same shape and no input has extra ones.
fn plan_tensors(
    job: &Job,
    all: &[&Loaded],
    reference: &Loaded,
    vocab: usize,
) -> Result<Vec<OutTensor>, StageError> {
    let shape_of = |l: &Loaded, name: &str, info: &TensorInfo| -> Vec<usize> {
        let mut s = info.shape.clone();
        if is_vocab_tensor(name, &s, l.vocab) {
            s[0] = vocab;
        }
        s
    };
    let mut out = Vec::new();
    for (name, (_, info)) in &reference.weights.tensors {
        let want = shape_of(reference, name, info);
        for l in all {
            match l.weights.tensors.get(name) {
                None if job.missing_from_base && job.base.is_some() => {}
                None => {
                    return Err(user(
                        format!(
                            "tensor \"{name}\" is missing from model {} (present in {})",
                            l.input.name, reference.input.name
                        ),
                        Some("merged models must have the same tensors; with a base, `missing-from-base=#true` takes missing ones from it"),
                    ))
                }
                Some((_, i)) => {
                    let got = shape_of(l, name, i);
                    if got != want {
                        return Err(user(
                            format!(
                                "tensor \"{name}\": shape {:?} in model {} but {:?} in {}",
                                i.shape, l.input.name, info.shape, reference.input.name
                            ),
                            Some("only models of the same architecture and size can be merged"),
                        ));
                    }
                }
            }
        }
        out.push(OutTensor {
            name: name.clone(),
            shape: want,
        });
    }
    for l in all {
        if let Some(extra) = l
            .weights
            .tensors
            .keys()
            .find(|k| !reference.weights.tensors.contains_key(*k))
        {
            return Err(user(
                format!(
                    "tensor \"{extra}\" of model {} is not in {}",
                    l.input.name, reference.input.name
                ),
                Some("merged models must have the same tensors"),
            ));
        }
    }
    Ok(out)
}

struct ReadCtx<'a> {
    maps: &'a HashMap<(PathBuf, String), MappedFile>,
    vocab: usize,
    donor: Option<&'a Loaded>,
    base: Option<&'a Loaded>,
    missing_from_base: bool,
}

impl ReadCtx<'_> {
    /// Tensor `name` of `l`, rows aligned to the output vocabulary; a tensor the model lacks
    /// comes from the base when allowed.
    fn read<T: Real>(&self, l: &Loaded, name: &str) -> Result<Vec<T>, StageError> {
        let Some((file, info)) = l.weights.tensors.get(name) else {
            return match self.base {
                Some(b) if self.missing_from_base && !std::ptr::eq(b, l) => self.read(b, name),
                _ => Err(user(
                    format!("tensor \"{name}\" is missing from model {}", l.input.name),
                    None,
                )),
            };
        };
        let map = self
            .maps
            .get(&(l.input.dir.clone(), file.clone()))
            .ok_or_else(|| anyhow::anyhow!("{}: {file} not mapped", l.input.name))?;
        let mut v: Vec<T> = map.read(name, info)?;
        if is_vocab_tensor(name, &info.shape, l.vocab) && l.vocab != self.vocab {
            let row: usize = info.shape[1..].iter().product();
            if l.vocab > self.vocab {
                v.truncate(self.vocab * row);
            } else {
                let d = self
                    .donor
                    .filter(|d| d.vocab >= self.vocab)
                    .ok_or_else(|| {
                        user(
                            format!(
                                "tensor \"{name}\" of model {} has {} rows; the tokenizer source needs {} and no merged model provides them",
                                l.input.name, l.vocab, self.vocab
                            ),
                            Some("use `tokenizer-from` naming one of the merged models"),
                        )
                    })?;
                let full: Vec<T> = self.read(d, name)?;
                v.extend_from_slice(&full[l.vocab * row..self.vocab * row]);
            }
        }
        Ok(v)
    }
}

enum Merged {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

trait IntoMerged: Sized {
    fn wrap(v: Vec<Self>) -> Merged;
}
impl IntoMerged for f32 {
    fn wrap(v: Vec<Self>) -> Merged {
        Merged::F32(v)
    }
}
impl IntoMerged for f64 {
    fn wrap(v: Vec<Self>) -> Merged {
        Merged::F64(v)
    }
}

/// Resolves the parameters for `name` (module [`super::params`]).
pub fn tensor_params(job: &Job, name: &str, layers: usize) -> Result<TensorParams, StageError> {
    let m = job.method.decl;
    let resolve = |v: Option<&ParamValue>, p: &str| -> Result<f64, StageError> {
        v.and_then(|v| v.resolve(name, layers))
            .or_else(|| m.param(p).and_then(|d| d.default))
            .ok_or_else(|| {
                user(
                    format!("parameter `{p}` has no value for tensor \"{name}\""),
                    Some("a filter list needs an entry matching every tensor: end it with one whose filter is \"*\", or set the parameter for the node"),
                )
            })
    };
    let mut out = TensorParams {
        normalize: job.normalize.unwrap_or(m.normalize_default),
        seed: tensor_seed(job.seed, name),
        ..TensorParams::default()
    };
    for d in m.params {
        match d.name {
            "weight" | "density" => {
                let mut vals = Vec::new();
                for i in 0..job.models.len() {
                    let v = job.params.per_model.get(i).and_then(|p| p.get(d.name));
                    vals.push(resolve(v.or(job.params.global.get(d.name)), d.name)?);
                }
                if d.name == "weight" {
                    out.weight = vals;
                } else {
                    out.density = vals;
                }
            }
            "t" => out.t = resolve(job.params.global.get("t"), "t")?,
            "lambda" => out.lambda = resolve(job.params.global.get("lambda"), "lambda")?,
            _ => {}
        }
    }
    for (p, d) in out.density.iter().enumerate() {
        if !(*d > 0.0 && *d <= 1.0) {
            return Err(user(
                format!(
                    "density {d} of model {} for tensor \"{name}\" is outside (0, 1]",
                    job.models[p].name
                ),
                None,
            ));
        }
    }
    Ok(out)
}

fn merge_one<T: Real + IntoMerged>(
    job: &Job,
    ctx: &ReadCtx<'_>,
    models: &[Loaded],
    reference: &Loaded,
    name: &str,
    f: super::MergeFn<T>,
) -> Result<Merged, StageError> {
    let p = tensor_params(job, name, reference.layers)?;
    let base = match ctx.base {
        Some(b) => Some(ctx.read::<T>(b, name)?),
        None => None,
    };
    let mut ms = Vec::with_capacity(models.len());
    for l in models {
        ms.push(ctx.read::<T>(l, name)?);
    }
    let out = f(Tensors { base, models: ms }, &p)
        .map_err(|e| user(format!("tensor \"{name}\": {e}"), None))?;
    Ok(T::wrap(out))
}

/// config.json (dtype and vocabulary updated), generation_config.json and tokenizer files.
fn write_companions(
    reference: &Loaded,
    tok_src: &Path,
    out: &Path,
    dtype: OutDtype,
    vocab: usize,
) -> Result<(), StageError> {
    let mut cfg = reference.raw.clone();
    if let Some(o) = cfg.as_object_mut() {
        let mut any = false;
        for k in ["torch_dtype", "dtype"] {
            if o.contains_key(k) {
                o.insert(k.into(), J::from(dtype.torch_name()));
                any = true;
            }
        }
        if !any {
            o.insert("torch_dtype".into(), J::from(dtype.torch_name()));
        }
        o.insert("vocab_size".into(), J::from(vocab));
    }
    crate::json::write_json(&out.join(hf::CONFIG_FILE), &cfg)?;
    let gen = reference.input.dir.join(GENERATION_CONFIG_FILE);
    if gen.is_file() {
        fs::copy(&gen, out.join(GENERATION_CONFIG_FILE))
            .with_context(|| format!("copying {}", gen.display()))?;
    } else {
        crate::json::write_json(&out.join(GENERATION_CONFIG_FILE), &generation_config(&cfg))?;
    }
    for name in TOKENIZER_FILES {
        let from = tok_src.join(name);
        if from.is_file() {
            fs::copy(&from, out.join(name))
                .with_context(|| format!("copying {}", from.display()))?;
        }
    }
    Ok(())
}
