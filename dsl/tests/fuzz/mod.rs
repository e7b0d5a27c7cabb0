//! The DSL fuzzer.
//!
//! Byte- and token-level mutations of the example recipes (`examples/*.kdl`) and the bad-input
//! corpus (`tests/bad/recipes/*.kdl`) go through `load_with` (parse → validate, with includes,
//! `--set`s, random limits and untrusted mode) → `expand` → `render`, each under `catch_unwind`
//! and timed. Failures: a panic, an input taking more than `HANG_SECS` (past `ABORT_SECS` a
//! watchdog aborts the run, naming the input), an "internal error"
//! diagnostic, the recogniser accepting text the `kdl` crate rejects (the stack bound of
//! `dsl::scan` relies on it), or a diagnostic showing the content of a file outside the
//! repository (marker `FUZZ-SECRET`). Each failing input is written to
//! `$CARGO_TARGET_TMPDIR/temper-fuzz/run-PID/fail-N.kdl` and the test fails listing them. Before
//! each run the input is written to `…/run-PID/repo/sub/main.kdl`: after a hard abort that file
//! is the culprit. `TEMPER_FUZZ_SECS` (default 5) sets the duration, `TEMPER_FUZZ_SEED` the seed;
//! the campaign runs `TEMPER_FUZZ_SECS=600 cargo test --release -p temper-dsl --test all fuzz
//! -- --nocapture`.

use crate::common;
use std::collections::BTreeMap;
use std::fs;

/// An input slower than this is a hang.
const HANG_SECS: u64 = 5;
/// An input still running after this aborts the run (see the watchdog).
const ABORT_SECS: u64 = 60;

/// xorshift64*: small, seeded, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Splits KDL-ish text into tokens: whitespace runs, quoted strings, words, single symbols.
fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let cs: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        let start = i;
        if c.is_whitespace() {
            while i < cs.len() && cs[i].is_whitespace() {
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while i < cs.len() && cs[i] != '"' && cs[i] != '\n' {
                i += if cs[i] == '\\' { 2 } else { 1 };
            }
            i = (i + 1).min(cs.len());
        } else if "{}()=;\\#/".contains(c) {
            i += 1;
        } else {
            while i < cs.len() && !cs[i].is_whitespace() && !"{}()=;\\\"#/".contains(cs[i]) {
                i += 1;
            }
        }
        out.push(cs[start..i.min(cs.len())].iter().collect());
    }
    out
}

/// Tokens worth inserting, beyond those of the corpus.
const DICT: &[&str] = &[
    "{",
    "}",
    "\"",
    ";",
    "=",
    "#true",
    "#false",
    "#null",
    "#inf",
    "#nan",
    "/-",
    "/*",
    "*/",
    "//",
    "\\\n",
    "(t)",
    "\n",
    " ",
    "0",
    "-1",
    "1.5",
    "1e309",
    "-0.0",
    "0x7fffffffffffffff",
    "99999999999999999999999999999999999999999",
    "1_000_000",
    "18446744073709551616",
    "\"\\u{0}\"",
    "\"\\u{202e}\"",
    "\"a\\u{1b}[31m\"",
    "é",
    "名前",
    "🦀",
    "\u{A0}",
    "\u{2028}",
    "\"\"\"\n  x\n  \"\"\"",
    "#\"raw{\"#",
    "include \"inc/base.kdl\"\n",
    "include \"/proc/self/environ\"\n",
    "include \"../../outside/secret.txt\"\n",
    "include \"../../outside/leak.kdl\"\n",
    "include \"main.kdl\"\n",
    "include \"inc\"\n",
    "path=\"../../outside/secret.txt\"",
    "path=\"/etc/*\"",
    "path=\"data/*.jsonl\"",
    "path=\"link.jsonl\"",
    "sweep { tiny.seed 0 1 2 }\n",
    "sweep { zip { a.x 1 2; b.y 3 4 } }\n",
    "repeat 3 { model \"m-{i}\" tokenizer=tok }\n",
    "repeat 1000 { a \"x-{i}\" }\n",
    "defaults { device cpu; threads 2 }\n",
    "zip",
    "sweep",
    "repeat",
    "{i}",
    "{prev}",
    "tiny.layers",
    "model",
    "dataset",
    "tokenizer",
    "align",
    "merge",
    "mix",
    "source",
    "data",
];

/// A registry of the test kinds plus permissive stubs for the kinds the corpus uses that the
/// test registry lacks, so the examples reach validation and expansion.
fn fuzz_registry(corpus: &[String]) -> dsl::Registry {
    use dsl::{KindSchema, ParamSpec, ParamType};
    let mut reg = common::registry();
    let mut seen: BTreeMap<String, BTreeMap<String, ParamType>> = BTreeMap::new();
    for text in corpus {
        // Only texts whose nesting the recogniser bounds go to the parser directly (the corpus
        // holds a 2,000-deep one).
        if !dsl::fuzzing::recognizer_accepts(text, 64) {
            continue;
        }
        let Ok(doc) = kdl::KdlDocument::parse_v2(text) else {
            continue;
        };
        let names: Vec<String> = doc
            .nodes()
            .iter()
            .filter_map(|n| n.entries().first()?.value().as_string().map(String::from))
            .collect();
        let guess = |v: &kdl::KdlValue| match v {
            kdl::KdlValue::Integer(_) => ParamType::Float {
                min: None,
                max: None,
            },
            kdl::KdlValue::Float(_) => ParamType::Float {
                min: None,
                max: None,
            },
            kdl::KdlValue::Bool(_) => ParamType::Bool,
            kdl::KdlValue::String(s) if names.contains(s) => ParamType::Ref(&[]),
            kdl::KdlValue::String(s) if s.contains('/') || s.contains(".j") => ParamType::Path,
            _ => ParamType::Str,
        };
        for n in doc.nodes() {
            let kind = n.name().value();
            if reg.get(kind).is_some() || ["include", "sweep", "repeat", "defaults"].contains(&kind)
            {
                continue;
            }
            let params = seen.entry(kind.to_string()).or_default();
            for e in n.entries().iter().skip(1) {
                if let Some(k) = e.name() {
                    params
                        .entry(k.value().to_string())
                        .or_insert(guess(e.value()));
                }
            }
            for c in n.iter_children() {
                if let [e] = c.entries() {
                    if e.name().is_none() {
                        params
                            .entry(c.name().value().to_string())
                            .or_insert(guess(e.value()));
                    }
                }
            }
        }
    }
    for (kind, params) in seen {
        let mut k = KindSchema::new(Box::leak(kind.into_boxed_str()), 1, "model");
        for (p, ty) in params {
            if !["device", "threads", "log-every"].contains(&p.as_str()) {
                k = k.param(ParamSpec::new(Box::leak(p.into_boxed_str()), ty).optional());
            }
        }
        reg.register(k);
    }
    reg
}

fn mutate(rng: &mut Rng, text: &str, corpus: &[String], words: &[String]) -> Vec<u8> {
    let mut toks = tokenize(text);
    let dict = |rng: &mut Rng| -> String {
        if rng.chance(50) {
            rng.pick(DICT).to_string()
        } else {
            rng.pick(words).clone()
        }
    };
    for _ in 0..1 + rng.below(3) {
        let n = toks.len().max(1);
        match rng.below(12) {
            // Replace a word or value (usually keeps the syntax valid: deeper validation).
            9..=11 if !toks.is_empty() => {
                let i = rng.below(n);
                if !toks[i].trim().is_empty() {
                    toks[i] = dict(rng);
                }
            }
            0 if !toks.is_empty() => {
                let i = rng.below(n);
                let len = 1 + rng.below(4);
                toks.drain(i..(i + len).min(toks.len()));
            }
            1 if !toks.is_empty() => {
                let i = rng.below(n);
                let t = toks[i].clone();
                toks.insert(i, t);
            }
            2 if toks.len() > 1 => {
                let (a, b) = (rng.below(n), rng.below(n));
                toks.swap(a, b);
            }
            3 | 4 => {
                let t = dict(rng);
                toks.insert(rng.below(n + 1), t);
            }
            5 => {
                // A token repeated many times (deep nesting, long chains, huge lines).
                let t = if rng.chance(50) {
                    dict(rng)
                } else {
                    "{".into()
                };
                let most = if rng.chance(20) { 5000 } else { 200 };
                let k = 1 + rng.below(most);
                toks.insert(rng.below(n + 1), t.repeat(k));
            }
            6 => {
                // Wrap a range in deep blocks.
                let k = 1 + rng.below(300);
                let (a, b) = (rng.below(n + 1), rng.below(n + 1));
                let (a, b) = (a.min(b), a.max(b));
                toks.insert(b, " }".repeat(k));
                toks.insert(a, "a { ".repeat(k));
            }
            7 => {
                // Splice a chunk of another recipe.
                let other = tokenize(rng.pick(corpus).as_str());
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + 1 + rng.below(40)).min(other.len());
                    let at = rng.below(n + 1);
                    for (k, t) in other[a..b].iter().enumerate() {
                        toks.insert(at + k, t.clone());
                    }
                }
            }
            _ => {
                // A few random bytes (any byte: invalid UTF-8 and control characters too).
                let mut bytes = toks.concat().into_bytes();
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(bytes.len() + 1);
                    if rng.chance(50) && at < bytes.len() {
                        bytes.remove(at);
                    } else {
                        bytes.insert(at, (rng.next() & 0xff) as u8);
                    }
                }
                return bytes;
            }
        }
    }
    toks.concat().into_bytes()
}

/// Error message shapes: quoted parts, numbers and locations masked.
fn error_kind(m: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in m.chars().take(80) {
        match c {
            '`' => {
                quoted = !quoted;
                if quoted {
                    out.push_str("`_`");
                }
            }
            _ if quoted => {}
            c if c.is_ascii_digit() => {
                if !out.ends_with('N') {
                    out.push('N');
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[test]
fn fuzz() {
    let secs: u64 = std::env::var("TEMPER_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("TEMPER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut corpus = Vec::new();
    for dir in ["examples", "tests/bad/recipes", "tests/bad/recipes/inc"] {
        let mut files: Vec<_> = fs::read_dir(root.join(dir))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "kdl"))
            .collect();
        files.sort();
        corpus.extend(files.iter().map(|p| fs::read_to_string(p).unwrap()));
    }
    assert!(corpus.len() >= 40, "corpus: {} files", corpus.len());
    let mut words: Vec<String> = corpus
        .iter()
        .flat_map(|t| tokenize(t))
        .filter(|t| !t.trim().is_empty())
        .collect();
    words.sort();
    words.dedup();
    let reg = fuzz_registry(&corpus);

    // A repository (`repo/`, recipe in `repo/sub/`) holding every file the corpus names, the
    // corpus' includes, a symlink out, and secrets beside it.
    // One directory per process (concurrent runs must not share inputs), removed when the run
    // passes.
    let base = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("temper-fuzz")
        .join(format!("run-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let base_dir = base.clone();
    let repo = base.join("repo");
    let sub = repo.join("sub");
    fs::create_dir_all(repo.join(".git")).unwrap();
    fs::create_dir_all(base.join("outside")).unwrap();
    fs::write(base.join("outside/secret.txt"), "FUZZ-SECRET-TXT\n").unwrap();
    fs::write(base.join("outside/leak.kdl"), "FUZZ-SECRET-KDL = {{\n").unwrap();
    for t in &corpus {
        for w in tokenize(t) {
            let p = w.trim_matches('"');
            if w.starts_with('"') && (p.contains(".json") || p.contains("models/")) {
                let f = sub.join(p);
                if f.starts_with(&base) && !p.contains('*') {
                    fs::create_dir_all(f.parent().unwrap()).unwrap();
                    if !p.contains('.') {
                        fs::create_dir_all(&f).unwrap();
                    } else {
                        fs::write(&f, "{}\n").unwrap();
                    }
                }
            }
        }
    }
    fs::create_dir_all(sub.join("inc")).unwrap();
    for e in fs::read_dir(root.join("tests/bad/recipes/inc"))
        .unwrap()
        .flatten()
    {
        fs::copy(e.path(), sub.join("inc").join(e.file_name())).unwrap();
    }
    for e in fs::read_dir(root.join("examples")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "kdl") {
            fs::copy(e.path(), sub.join(e.file_name())).unwrap();
        }
    }
    let _ = std::os::unix::fs::symlink(base.join("outside/secret.txt"), sub.join("link.jsonl"));
    let main = sub.join("main.kdl");
    println!(
        "fuzz: {secs} s, seed {seed}; each input is written to {} first",
        main.display()
    );

    // Watchdog: an input still running after `ABORT_SECS` is a true hang; the test cannot
    // interrupt it, so it names the input and aborts rather than block the suite forever.
    let started = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let epoch = std::time::Instant::now();
    {
        let (started, main) = (started.clone(), main.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let t = started.load(std::sync::atomic::Ordering::Relaxed);
            if t > 0 && epoch.elapsed().as_secs().saturating_sub(t) > ABORT_SECS {
                eprintln!(
                    "fuzz: hang: an input ran over {ABORT_SECS} s: {}",
                    main.display()
                );
                std::process::abort();
            }
        });
    }
    let run = move || {
        let mut rng = Rng(seed);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        let (mut inputs, mut oks, mut accepted) = (0u64, 0u64, 0u64);
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        let mut slowest = (std::time::Duration::ZERO, String::new());
        let mut failures: Vec<String> = Vec::new();
        while std::time::Instant::now() < deadline && failures.len() < 20 {
            let seed_text = rng.pick(&corpus).clone();
            let bytes = mutate(&mut rng, &seed_text, &corpus, &words);
            fs::write(&main, &bytes).unwrap();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let mut opts = dsl::LoadOptions {
                untrusted: rng.chance(30),
                ..Default::default()
            };
            if rng.chance(20) {
                opts = opts.with_max_variants(*rng.pick(&[1, 3, 100]));
            }
            let n_sets = if rng.chance(10) { 1 + rng.below(2) } else { 0 };
            let sets: Vec<String> = (0..n_sets)
                .map(|_| {
                    format!(
                        "{}.{}={}",
                        rng.pick(&words),
                        rng.pick(&words),
                        rng.pick(DICT)
                    )
                })
                .collect();
            let t0 = std::time::Instant::now();
            started.store(
                epoch.elapsed().as_secs().max(1),
                std::sync::atomic::Ordering::Relaxed,
            );
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let accepts = dsl::fuzzing::recognizer_accepts(&text, opts.max_depth);
                let kdl_ok = !accepts || kdl::KdlDocument::parse_v2(&text).is_ok();
                let result = dsl::load_with(&main, &reg, &sets, &opts)
                    .and_then(|r| dsl::expand(&r).map(|e| e.instances.len()));
                let rendered = match &result {
                    Ok(_) => String::new(),
                    Err(d) => d.render(),
                };
                (accepts, kdl_ok, result.map_err(|d| d.messages()), rendered)
            }));
            let took = t0.elapsed();
            started.store(0, std::sync::atomic::Ordering::Relaxed);
            inputs += 1;
            if took > slowest.0 {
                slowest = (took, text.chars().take(60).collect());
            }
            let mut fail = |why: String| {
                let f = base.join(format!("fail-{}.kdl", failures.len()));
                fs::write(&f, &bytes).unwrap();
                failures.push(format!("{why}: {} (--set {sets:?})", f.display()));
            };
            match outcome {
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    fail(format!("panic `{msg}`"));
                }
                Ok((accepts, kdl_ok, result, rendered)) => {
                    accepted += u64::from(accepts);
                    if !kdl_ok {
                        fail("the recogniser accepts what kdl rejects".into());
                    }
                    if rendered.contains("FUZZ-SECRET") {
                        fail("a diagnostic shows an outside file".into());
                    }
                    match result {
                        Ok(_) => oks += 1,
                        Err(ms) => {
                            if ms.iter().any(|m| m.contains("internal error")) {
                                fail(format!("internal error: {ms:?}"));
                            }
                            for m in ms {
                                *kinds.entry(error_kind(&m)).or_default() += 1;
                            }
                        }
                    }
                }
            }
            if took.as_secs() >= HANG_SECS {
                fail(format!("hang: {took:?}"));
            }
        }
        println!(
            "fuzz: {inputs} inputs, {oks} loaded and expanded, {accepted} accepted by the \
             recogniser, {} distinct error kinds, slowest {:?} ({:?}…)",
            kinds.len(),
            slowest.0,
            slowest.1
        );
        if std::env::var_os("TEMPER_FUZZ_KINDS").is_some() {
            for (k, n) in &kinds {
                println!("{n:>8}  {k}");
            }
        }
        failures
    };
    let failures = std::thread::Builder::new()
        .name("fuzz".into())
        .stack_size(16 << 20)
        .spawn(run)
        .unwrap()
        .join()
        .unwrap();
    if failures.is_empty() {
        let _ = fs::remove_dir_all(&base_dir);
    }
    assert!(
        failures.is_empty(),
        "fuzz failures:\n{}",
        failures.join("\n")
    );
}

/// On the example recipes and the bad corpus, the recogniser and the `kdl` crate agree exactly:
/// valid files never take the conservative path, invalid ones never the exact one.
#[test]
fn recogniser_agrees_with_kdl_on_the_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in [
        "examples",
        "tests/bad/recipes",
        "tests/bad/recipes/inc",
        "tests/bad/data-recipes",
    ] {
        for e in fs::read_dir(root.join(dir)).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "kdl") {
                continue;
            }
            let text = fs::read_to_string(&p).unwrap();
            let t = text.clone();
            let kdl_ok = std::thread::Builder::new()
                .stack_size(256 << 20)
                .spawn(move || kdl::KdlDocument::parse_v2(&t).is_ok())
                .unwrap()
                .join()
                .unwrap();
            let accepts = dsl::fuzzing::recognizer_accepts(&text, 100_000);
            assert_eq!(accepts, kdl_ok, "{}", p.display());
        }
    }
}
