//! Jobs whose id temper never recorded, found by their name.
//!
//! The ledger entry written before `sbatch` is the intent. A front killed while `sbatch` runs,
//! or after it answered but before the id is written, leaves an intent without a job id and
//! maybe a job. Every job's name holds its node's key ([`job_name`]), so the job an intent
//! stands for is the job Slurm lists under the intent's name: never a job built for another
//! key. A resubmission adopts a live one (records its id) instead of submitting again;
//! `status`, `show`, `plan` and `cancel` see it the same way. Intents written by a temper whose
//! job names held no key are never matched by name.

use super::cli::QueueState;
use super::ledger::{Ledger, Submission};
use anyhow::Result;

/// How many hex digits of the key a job name holds (64 bits: two keys of one instance id never
/// share them by chance).
pub const KEY_DIGITS: usize = 16;

/// The longest instance id a job name holds whole (Slurm refuses names over 1024 bytes); a
/// longer one is cut, and the key still tells the jobs apart.
const MAX_ID_CHARS: usize = 160;

/// The job name of instance `id` of recipe `stem` with key `key`:
/// `temper:<recipe>:<instance id>:<first 16 hex digits of the key>`, without characters that
/// trip Slurm's output formats.
pub fn job_name(stem: &str, id: &str, key: &str) -> String {
    let id: String = id.chars().take(MAX_ID_CHARS).collect();
    let key = &key[..KEY_DIGITS.min(key.len())];
    format!("temper:{stem}:{id}:{key}")
        .chars()
        .map(|c| {
            if c.is_whitespace() || c == '|' || c == '%' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Whether `sub`'s job name identifies its key, so that a job found by that name is its job.
pub fn named_by_key(sub: &Submission) -> bool {
    !sub.job_name.is_empty() && sub.job_name == job_name(&sub.recipe, &sub.node, &sub.key)
}

fn number(id: &str) -> u64 {
    id.split('_')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Every job of `listing` (one `squeue`) named for `sub`, oldest first.
pub fn named<'q>(
    sub: &Submission,
    listing: &'q [(String, QueueState)],
) -> Vec<(&'q str, &'q QueueState)> {
    if !named_by_key(sub) {
        return Vec::new();
    }
    let mut v: Vec<(&str, &QueueState)> = listing
        .iter()
        .filter(|(_, q)| q.name == sub.job_name)
        .map(|(id, q)| (id.as_str(), q))
        .collect();
    v.sort_by_key(|(id, _)| number(id));
    v
}

/// Whether `q` will still build something: queued (held or waiting on its inputs too) or
/// running, and not waiting on an input that failed.
pub fn live(q: &QueueState) -> bool {
    q.active() && !q.never_runs()
}

/// The live job named for `sub` (the oldest, should there be several).
pub fn live_job<'q>(sub: &Submission, listing: &'q [(String, QueueState)]) -> Option<&'q str> {
    named(sub, listing)
        .into_iter()
        .find(|(_, q)| live(q))
        .map(|(id, _)| id)
}

/// The job that best says what became of `sub` when its id was never recorded: the live one,
/// else the newest Slurm still lists.
pub fn latest_job<'q>(sub: &Submission, listing: &'q [(String, QueueState)]) -> Option<&'q str> {
    live_job(sub, listing).or_else(|| named(sub, listing).last().map(|(id, _)| *id))
}

/// Sets `sub`'s job id (and so its log) to `id`, in memory.
pub fn fill(ledger: &Ledger, sub: &mut Submission, id: &str) {
    sub.job_id = Some(id.to_string());
    sub.log = Some(ledger.job_log(&sub.node, id));
}

/// Records job `id` as the job of `key`'s intent, when the intent has no job id yet and the
/// job carries its name (checked by the caller through `named`/`live_job`). Returns whether
/// the ledger changed.
pub fn record(ledger: &Ledger, key: &str, id: &str) -> Result<bool> {
    let Some(mut sub) = ledger.get(key)? else {
        return Ok(false);
    };
    if sub.job_id.is_some() {
        return Ok(false);
    }
    fill(ledger, &mut sub, id);
    ledger.put(&sub)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(key: &str, name: &str) -> Submission {
        Submission {
            key: key.into(),
            node: "tok[tok.vocab-size=300]".into(),
            kind: "tokenizer".into(),
            recipe: "sel".into(),
            identity: "sel/tok[tok.vocab-size=300]".into(),
            key_tree: serde_json::Value::Null,
            run_id: 1,
            job_id: None,
            job_name: name.into(),
            after: Vec::new(),
            after_nodes: Vec::new(),
            log: None,
            submitted_at: 0.0,
            signal: "USR2".into(),
            signal_lead: 300,
            max_timeouts: 3,
            timeouts: 0,
            requeues: 0,
            ended: None,
        }
    }

    fn q(state: &str, reason: &str, name: &str) -> QueueState {
        QueueState {
            state: state.into(),
            reason: reason.into(),
            nodes: String::new(),
            name: name.into(),
        }
    }

    #[test]
    fn names_hold_the_key_and_nothing_that_trips_squeue() {
        let k = "0123456789abcdef0123456789abcdef";
        let n = job_name("my recipe", "x[a=1,b=2]", k);
        assert_eq!(n, "temper:my_recipe:x[a=1,b=2]:0123456789abcdef");
        let long = job_name("r", &"y".repeat(5000), k);
        assert!(long.len() < 300 && long.ends_with(":0123456789abcdef"));
    }

    #[test]
    fn an_intent_finds_only_jobs_of_its_own_key() {
        let key = "aaaaaaaaaaaaaaaabbbb";
        let other = "ccccccccccccccccdddd";
        let s = sub(key, &job_name("sel", "tok[tok.vocab-size=300]", key));
        let mine = s.job_name.clone();
        let theirs = job_name("sel", "tok[tok.vocab-size=300]", other);
        let listing = vec![
            ("7".to_string(), q("RUNNING", "None", &theirs)),
            ("9".to_string(), q("FAILED", "NonZeroExitCode", &mine)),
            ("12".to_string(), q("PENDING", "JobHeldUser", &mine)),
            (
                "10".to_string(),
                q("PENDING", "DependencyNeverSatisfied", &mine),
            ),
        ];
        assert_eq!(live_job(&s, &listing), Some("12"));
        assert_eq!(latest_job(&s, &listing), Some("12"));
        let finished = vec![listing[1].clone(), listing[0].clone()];
        assert_eq!(live_job(&s, &finished), None);
        assert_eq!(latest_job(&s, &finished), Some("9"));
        // An intent whose name does not hold its key (an older temper) matches nothing.
        let old = sub(key, "temper:sel:tok[tok.vocab-size=300]");
        let listing = vec![("3".to_string(), q("PENDING", "None", &old.job_name))];
        assert_eq!(latest_job(&old, &listing), None);
    }
}
