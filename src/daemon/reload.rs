//! Reloading the config of a running device.
//!
//! A file change, SIGHUP and `ublk-stack reload NAME` all end in
//! [`Reloader::reload`]: re-read and validate the whole file, diff it against
//! the plan the device runs, and apply every live change, or none. Invalid files
//! and structural edits are refused before anything is touched. The changes
//! themselves cannot be refused by a layer; only the I/O of a cache mode switch
//! (writing back dirty data) can fail, and that is reported as a failure with
//! what had been applied before it.
//!
//! A reload that grows the device (a larger `size` of a leaf, see
//! `config::diff`) is refused before anything changes when the front end
//! cannot resize a running device or a mirror on the way cannot grow now.
//! Otherwise the layers grow from the bottom up, each taking in the new space
//! durably, and the device last. If a layer or the device refuses part-way,
//! the device keeps serving its old size (the layers that grew only have
//! room no request reaches) and the reload reports a failure; the next
//! reload of the same file takes up where it stopped.
//!
//! Reloads never interleave: the running plan is locked for the whole reload.
//! `status` reads the outcome from a separate lock, so it answers while a long
//! mode switch is under way.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use layers::plan::{LogLevel, Plan};
use layers::{Executor, IoCtx, Stack};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub(crate) use super::front_end::Resize;
use super::{control, notify};
use crate::config::diff::{self, Changes, Edit, Grow, LayerChange};

/// What asked for the reload (logged and shown in `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    #[serde(rename = "file change")]
    FileChanged,
    #[serde(rename = "SIGHUP")]
    Sighup,
    #[serde(rename = "reload command")]
    Command,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::FileChanged => "file change",
            Trigger::Sighup => "SIGHUP",
            Trigger::Command => "reload command",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every change was applied; the generation went up by one.
    Applied,
    /// The file says what the device already runs.
    Unchanged,
    /// Invalid file or structural edit: nothing was touched.
    Refused,
    /// A change failed while being applied (I/O of a cache mode switch); the
    /// ones before it stay applied.
    Failed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Applied => "applied",
            Verdict::Unchanged => "unchanged",
            Verdict::Refused => "refused",
            Verdict::Failed => "failed",
        }
    }
}

/// The outcome of one reload.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub trigger: Trigger,
    pub verdict: Verdict,
    /// Each applied key: `layers.m.read_policy: round-robin -> first`.
    pub applied: Vec<String>,
    /// Each reason for a refusal or failure.
    pub refused: Vec<String>,
    /// The config generation after this reload.
    pub generation: u64,
    /// When it ended.
    pub time: SystemTime,
    /// From reading the file to the last change applied: long only when a
    /// cache writes back dirty data.
    pub took: Duration,
}

/// An [`Outcome`] as `status` and `reload` report it (the `last_reload` of
/// docs/status.md): times in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReloadSummary {
    pub result: Verdict,
    pub trigger: Trigger,
    pub applied: Vec<String>,
    pub refused: Vec<String>,
    pub generation: u64,
    /// When it ended, in seconds since the Unix epoch.
    pub time: u64,
    pub took_s: f64,
}

impl Outcome {
    pub fn summary(&self) -> ReloadSummary {
        let time = self
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        ReloadSummary {
            result: self.verdict,
            trigger: self.trigger,
            applied: self.applied.clone(),
            refused: self.refused.clone(),
            generation: self.generation,
            time,
            took_s: self.took.as_secs_f64(),
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.summary()).unwrap_or(Value::Null)
    }
}

/// Sets the daemon's log level; see `daemon::logging`.
pub type SetLogLevel = Box<dyn Fn(LogLevel) -> Result<(), String> + Send + Sync>;

/// What `status` shows: the generation (1 at `up`, +1 per applied reload) and
/// the last reload's outcome.
#[derive(Clone, Debug)]
pub struct Record {
    pub generation: u64,
    pub last: Option<Outcome>,
}

pub struct Reloader {
    config: PathBuf,
    stack: Arc<Stack>,
    /// The plan the device runs now, which is not the one it was compiled from
    /// once a reload has been applied.
    running: Mutex<Plan>,
    record: Mutex<Record>,
    set_log_level: SetLogLevel,
    /// How the front end serves a grown stack; `None`: the device never grows.
    resize: Option<Arc<dyn Resize>>,
    /// The size the front end serves (lags the stack's after a failed resize).
    device_size: Mutex<u64>,
}

impl Reloader {
    /// `config` is the file `up` read (made absolute, so the daemon finds it
    /// whatever its working directory); `plan` is what it compiled `stack` from.
    pub fn new(config: PathBuf, plan: Plan, stack: Arc<Stack>, set_log_level: SetLogLevel) -> Self {
        Reloader {
            config,
            device_size: Mutex::new(stack.size()),
            stack,
            running: Mutex::new(plan),
            record: Mutex::new(Record {
                generation: 1,
                last: None,
            }),
            set_log_level,
            resize: None,
        }
    }

    /// The front end's way to serve a grown stack.
    pub fn with_resize(mut self, resize: Option<Arc<dyn Resize>>) -> Self {
        self.resize = resize;
        self
    }

    /// The diff of `plan` against the running one, with every layer's size:
    /// what it exposes now, and what the edited file gives it. A device
    /// whose stack grew but whose front end did not follow (a failed resize)
    /// gets the resize again.
    fn changes(&self, running: &Plan, plan: &Plan) -> Result<Changes, Vec<String>> {
        let old_sizes: Vec<u64> = running
            .layers
            .iter()
            .map(|layer| self.stack.layer(&layer.name).map_or(0, |l| l.size()))
            .collect();
        let new_sizes = crate::config::sizes::exposed_sizes(plan)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let mut changes = diff::diff_sized(running, &old_sizes, plan, &new_sizes)
            .map_err(|refusal| refusal.reasons)?;
        let device = *lock(&self.device_size);
        let target = new_sizes[plan.top];
        if changes.device_size.is_none() && target > device {
            let edit = Edit {
                key: "device size".into(),
                from: layers::units::size::format_human(device),
                to: layers::units::size::format_human(target),
            };
            changes.device_size = Some((target, edit));
        }
        Ok(changes)
    }

    /// Why the growth in `changes` cannot go ahead now: asked before any
    /// layer or the device changes.
    fn growth_refusal(&self, changes: &Changes) -> Vec<String> {
        let mut reasons = Vec::new();
        if changes.device_size.is_some() {
            match &self.resize {
                None => reasons.push("this front end cannot resize a running device".into()),
                Some(resize) => reasons.extend(resize.refusal()),
            }
        }
        for grow in &changes.grow {
            let why = match (
                self.stack.mirror(&grow.layer),
                self.stack.compress(&grow.layer),
            ) {
                (Some(mirror), _) => mirror.grow_refusal(grow.to),
                (_, Some(compress)) => compress.grow_refusal(grow.to),
                _ => None,
            };
            if let Some(why) = why {
                reasons.push(format!("layers.{}: {why}", grow.layer));
            }
        }
        reasons
    }

    pub fn config(&self) -> &std::path::Path {
        &self.config
    }

    pub fn record(&self) -> Record {
        lock(&self.record).clone()
    }

    /// What a reload from config `text` would do, applying nothing: `result`
    /// is `unchanged`, `changes` (with `apply`: each edit) or `refused` (with
    /// `refused`: each reason). `path` names the file in messages; relative
    /// paths in the text are taken from its folder.
    pub fn plan(&self, text: &str, path: &std::path::Path) -> Value {
        let running = lock(&self.running);
        let base_dir = path.parent().unwrap_or(std::path::Path::new("/"));
        let (result, apply, refused): (&str, Vec<String>, Vec<String>) =
            match crate::config::parse(text, path, base_dir) {
                Err(errors) => (
                    "refused",
                    Vec::new(),
                    errors.iter().map(ToString::to_string).collect(),
                ),
                Ok(plan) => match self.changes(&running, &plan) {
                    Err(reasons) => ("refused", Vec::new(), reasons),
                    Ok(changes) if changes.is_empty() && changes.device_size.is_none() => {
                        ("unchanged", Vec::new(), Vec::new())
                    }
                    Ok(changes) => match self.growth_refusal(&changes) {
                        reasons if !reasons.is_empty() => ("refused", Vec::new(), reasons),
                        _ => (
                            "changes",
                            changes.edits().iter().map(ToString::to_string).collect(),
                            Vec::new(),
                        ),
                    },
                },
            };
        json!({
            "ok": true,
            "result": result,
            "apply": apply,
            "refused": refused,
            "generation": lock(&self.record).generation,
            "config": self.config,
        })
    }

    /// Re-read the file and apply what changed; logs and records the outcome.
    pub fn reload(&self, trigger: Trigger) -> Outcome {
        let mut running = lock(&self.running);
        let begun = Instant::now();
        let (verdict, applied, refused) = match crate::config::load(&self.config) {
            Err(errors) => {
                let reasons = errors.iter().map(ToString::to_string).collect();
                (Verdict::Refused, Vec::new(), reasons)
            }
            Ok(plan) => match self.changes(&running, &plan) {
                Err(reasons) => (Verdict::Refused, Vec::new(), reasons),
                Ok(changes) if changes.is_empty() && changes.device_size.is_none() => {
                    (Verdict::Unchanged, Vec::new(), Vec::new())
                }
                Ok(changes) => match self.growth_refusal(&changes) {
                    reasons if !reasons.is_empty() => (Verdict::Refused, Vec::new(), reasons),
                    _ => self.apply(&mut running, plan, &changes),
                },
            },
        };
        let mut record = lock(&self.record);
        if verdict == Verdict::Unchanged && trigger == Trigger::FileChanged {
            // A save of the same text, a `touch`, an overflow of the watch:
            // not worth a line in the log or replacing the last real outcome.
            tracing::debug!("config file event, content unchanged");
            let generation = record.generation;
            return Outcome {
                trigger,
                verdict,
                applied,
                refused,
                generation,
                time: SystemTime::now(),
                took: begun.elapsed(),
            };
        }
        if !applied.is_empty() {
            record.generation += 1;
        }
        let outcome = Outcome {
            trigger,
            verdict,
            applied,
            refused,
            generation: record.generation,
            time: SystemTime::now(),
            took: begun.elapsed(),
        };
        record.last = Some(outcome.clone());
        drop(record);
        log(&outcome);
        notify::notify(&notify::status(&format!(
            "config generation {}: last reload {} ({})",
            outcome.generation,
            outcome.verdict.as_str(),
            outcome.trigger.as_str()
        )));
        outcome
    }

    /// Apply `changes`, in their order, stopping at the first failure.
    /// `running` becomes `new`, or the old plan with what went through.
    fn apply(
        &self,
        running: &mut Plan,
        new: Plan,
        changes: &Changes,
    ) -> (Verdict, Vec<String>, Vec<String>) {
        let mut applied = Vec::new();
        let io = IoCtx::new(0, 64).and_then(|ctx| Ok((ctx, Executor::new()?)));
        let (ctx, exec) = match io {
            Ok(io) => io,
            Err(e) => {
                let reason = format!("cannot set up io_uring for the reload: {e}");
                return (Verdict::Failed, applied, vec![reason]);
            }
        };
        for LayerChange {
            layer,
            change,
            edits,
        } in &changes.layers
        {
            let result = exec.block_on(&ctx, self.stack.apply_live(&ctx, layer, change));
            if let Err(e) = result {
                return (Verdict::Failed, applied, vec![failure(edits, &e)]);
            }
            diff::patch(running, layer, change);
            applied.extend(edits.iter().map(ToString::to_string));
        }
        // Children first: a layer grows over layers that have grown.
        for Grow {
            layer, to, edit, ..
        } in &changes.grow
        {
            let result = exec.block_on(&ctx, self.stack.grow(&ctx, layer, *to));
            if let Err(e) = result {
                let why = format!("{e}; the device keeps its size");
                return (Verdict::Failed, applied, vec![failure([edit], &why)]);
            }
            applied.push(edit.to_string());
        }
        if let Some((bytes, edit)) = &changes.device_size {
            let result = match &self.resize {
                Some(resize) => resize.resize(*bytes),
                None => Err("this front end cannot resize a running device".into()),
            };
            if let Err(e) = result {
                let why = format!(
                    "{e}; the layers have grown but the device keeps serving its old size \
                     (reload again to retry)"
                );
                return (Verdict::Failed, applied, vec![failure([edit], &why)]);
            }
            *lock(&self.device_size) = *bytes;
            applied.push(edit.to_string());
        }
        if let Some((level, edit)) = &changes.log_level {
            if let Err(e) = (self.set_log_level)(*level) {
                return (Verdict::Failed, applied, vec![failure([edit], &e)]);
            }
            applied.push(edit.to_string());
        }
        *running = new;
        (Verdict::Applied, applied, Vec::new())
    }
}

fn failure<'a>(edits: impl IntoIterator<Item = &'a Edit>, error: &str) -> String {
    let keys: Vec<String> = edits.into_iter().map(ToString::to_string).collect();
    format!("{}: failed: {error}", keys.join(", "))
}

/// A panic elsewhere while holding the lock leaves consistent data here (every
/// write to it is a single assignment), so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn log(outcome: &Outcome) {
    let trigger = outcome.trigger.as_str();
    let generation = outcome.generation;
    match outcome.verdict {
        Verdict::Applied => {
            for edit in &outcome.applied {
                tracing::info!(trigger, generation, "reload applied {edit}");
            }
        }
        Verdict::Unchanged => tracing::info!(trigger, "reload: the config is unchanged"),
        Verdict::Refused => {
            for reason in &outcome.refused {
                tracing::warn!(trigger, "reload refused: {reason}");
            }
        }
        Verdict::Failed => {
            for edit in &outcome.applied {
                tracing::warn!(trigger, generation, "reload applied {edit}");
            }
            for reason in &outcome.refused {
                tracing::error!(trigger, generation, "reload failed: {reason}");
            }
        }
    }
}

/// `ublk-stack reload NAME`: prints what was applied and what refused; exit 0
/// when applied (or nothing to do), 1 when refused or failed.
pub fn command(name: &str) -> u8 {
    let socket = match control::find(name) {
        Ok(socket) => socket,
        Err(reason) => {
            eprintln!("ublk-stack: {reason}");
            return 1;
        }
    };
    // A cache mode switch writes dirty data back before it answers.
    let reply = match control::request(&socket, "reload", Duration::from_secs(600)) {
        Ok(reply) => reply,
        Err(e) => {
            eprintln!("ublk-stack: {}", control::unreachable(name, &socket, &e));
            return 1;
        }
    };
    let Some(result) = reply["result"].as_str() else {
        let error = reply["error"].as_str().unwrap_or("reload failed");
        eprintln!("ublk-stack: {name}: {error}");
        return 1;
    };
    print!("{}", render(name, &reply));
    u8::from(!matches!(result, "applied" | "unchanged"))
}

/// `NAME: applied (generation 2)` and one line per key or reason.
fn render(name: &str, reply: &Value) -> String {
    let result = reply["result"].as_str().unwrap_or("?");
    let mut out = format!("{name}: {result} (generation {})", reply["generation"]);
    match result {
        "unchanged" => out.push_str(": the file says what the device runs\n"),
        "refused" => out.push_str(": the running device is unchanged\n"),
        _ => out.push('\n'),
    }
    for (list, word) in [("applied", "applied"), ("refused", "refused")] {
        for item in reply[list].as_array().into_iter().flatten() {
            out.push_str(&format!("{word}: {}\n", item.as_str().unwrap_or("?")));
        }
    }
    out
}

#[cfg(test)]
mod tests;
