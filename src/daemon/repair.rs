//! Repairs a running device: `scrub` (read every copy, verify, rewrite bad ones
//! from good ones) and `readd` (put a failed mirror leg back and rebuild it in
//! the background). Both run on daemon threads with their own io_uring, beside
//! the queues, which keep serving I/O. Their progress goes to the client as
//! lines (`progress.rs`); the running or last scrub shows in `status`
//! (`scrub_run.rs`). The commands that ask for them are in `command.rs`.

mod command;
mod display;
pub mod progress;
mod scrub_run;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use command::{readd_command, scrub_command};
use layers::mirror::{Health, Mirror, ScrubReport};
use layers::plan::LayerSpec;
use layers::report::LayerReport;
use layers::{AsyncLayer, Error, Executor, IoCtx, Stack};
pub use scrub_run::ScrubRun;
use serde_json::{json, Value};

use super::control::ProgressLines;
use progress::{Event, EventKind, Progress, ResyncCounts};

/// Scrub every mirror of the stack; without a mirror, read the whole device so
/// that every checksum, authentication tag and compressed unit is verified
/// (nothing to repair from, so any bad block is unrepairable). A stack with
/// none of these has nothing to verify: refused. One scrub at a time (`run`).
pub fn scrub(stack: &Stack, run: &ScrubRun, progress: &mut ProgressLines) -> Value {
    let plan = stack.plan();
    let mirrors: Vec<String> = plan
        .layers
        .iter()
        .filter(|l| matches!(l.spec, LayerSpec::Mirror(_)))
        .map(|l| l.name.clone())
        .collect();
    let verifies = plan.layers.iter().any(|l| {
        matches!(
            l.spec,
            LayerSpec::Checksum(_) | LayerSpec::Crypt(_) | LayerSpec::Compress(_)
        )
    });
    if mirrors.is_empty() && !verifies {
        return json!({"ok": false, "error": format!(
            "device \"{}\" has no mirror, checksum, crypt or compress layer: nothing to verify",
            plan.device.name
        )});
    }
    let (ctx, exec) = match (IoCtx::new(0, 64), Executor::new()) {
        (Ok(ctx), Ok(exec)) => (ctx, exec),
        (Err(e), _) | (_, Err(e)) => return json!({"ok": false, "error": e.to_string()}),
    };
    let total = if mirrors.is_empty() {
        stack.size()
    } else {
        let mirror_size = |name: &String| stack.mirror(name).map_or(0, |m| m.size());
        mirrors.iter().map(mirror_size).sum()
    };
    if let Err(e) = run.begin(total) {
        return json!({"ok": false, "error": e});
    }
    let mut step_done = |report: &ScrubReport| {
        run.advance(report);
        progress.offer(|| line(run.event(EventKind::Progress)));
    };
    let result = if mirrors.is_empty() {
        read_everything(stack, &ctx, &exec, &mut step_done);
        Ok(())
    } else {
        mirrors
            .iter()
            .try_for_each(|name| match stack.mirror(name) {
                Some(mirror) => scrub_mirror(name, mirror, &ctx, &exec, &mut step_done),
                None => Ok(()),
            })
    };
    run.end(result.as_ref().err().cloned());
    let done = run.event(EventKind::Done);
    tracing::info!(?done, "scrub finished");
    match (result, line(done)) {
        (Ok(()), Some(mut reply)) => {
            reply["ok"] = json!(true);
            reply["mirrors"] = json!(mirrors);
            reply
        }
        (Err(e), _) => json!({"ok": false, "error": e}),
        (Ok(()), None) => json!({"ok": false, "error": "the scrub left no record"}),
    }
}

/// A progress line as JSON.
fn line<C: serde::Serialize>(event: Option<Event<C>>) -> Option<Value> {
    serde_json::to_value(event?).ok()
}

fn scrub_mirror(
    name: &str,
    mirror: &Mirror,
    ctx: &IoCtx,
    exec: &Executor,
    step_done: &mut dyn FnMut(&ScrubReport),
) -> Result<(), String> {
    let steps = mirror.scrub_steps();
    let mut last_logged = 0;
    for step in 0..steps {
        match exec.block_on(ctx, mirror.scrub_step(ctx, step)) {
            Ok(report) => step_done(&report),
            Err(e) => return Err(format!("mirror \"{name}\": {e}")),
        }
        let percent = (step + 1) * 100 / steps.max(1);
        if percent >= last_logged + 10 {
            last_logged = percent;
            tracing::info!(mirror = %name, "scrub {percent}%");
        }
    }
    Ok(())
}

/// Read the device block by block where a 1 MiB read fails, counting the
/// blocks that fail verification.
fn read_everything(
    stack: &Stack,
    ctx: &IoCtx,
    exec: &Executor,
    step_done: &mut dyn FnMut(&ScrubReport),
) {
    let block = u64::from(stack.block_size());
    let chunk = (1u64 << 20).min(stack.size());
    let mut buf = vec![0u8; chunk as usize];
    let mut offset = 0;
    while offset < stack.size() {
        let n = chunk.min(stack.size() - offset);
        let mut report = ScrubReport {
            bytes_checked: n,
            ..ScrubReport::default()
        };
        let res = exec.block_on(
            ctx,
            stack.top().read_bytes(ctx, offset, &mut buf[..n as usize]),
        );
        if res.is_err() {
            for at in (offset..offset + n).step_by(block as usize) {
                let one = &mut buf[..block as usize];
                if let Err(e) = exec.block_on(ctx, stack.top().read_bytes(ctx, at, one)) {
                    report.unrepairable += 1;
                    if !matches!(e, Error::Corrupt { .. }) {
                        tracing::error!(offset = at, "scrub: read failed: {e}");
                    }
                }
            }
        }
        step_done(&report);
        offset += n;
    }
}

/// Put leg `leg` of mirror `layer` back and rebuild it in the background; with
/// `wait`, answer once the rebuild is over (sending its progress meanwhile).
pub fn readd(
    stack: &Arc<Stack>,
    layer: &str,
    leg: usize,
    wait: bool,
    progress: &mut ProgressLines,
) -> Value {
    let Some(mirror) = stack.mirror(layer) else {
        return json!({"ok": false, "error": format!("no mirror named \"{layer}\"")});
    };
    let (ctx, exec) = match (IoCtx::new(0, 16), Executor::new()) {
        (Ok(ctx), Ok(exec)) => (ctx, exec),
        (Err(e), _) | (_, Err(e)) => return json!({"ok": false, "error": e.to_string()}),
    };
    let started = Instant::now();
    let (copied_before, unreadable_before) = resync_counters(mirror);
    if let Err(e) = exec.block_on(&ctx, mirror.readd(&ctx, leg)) {
        return json!({"ok": false, "error": e});
    }
    let resync = resume_resync(stack.clone());
    if !wait {
        return json!({"ok": true, "mirror": layer, "leg": leg});
    }
    let Some(resync) = resync else {
        return json!({"ok": false, "error": "cannot start the rebuild's thread"});
    };
    let event = |event, done, total| Event {
        event,
        progress: Progress::new(done, total, started.elapsed()),
        counts: ResyncCounts {
            unreadable_blocks: resync_counters(mirror).1.saturating_sub(unreadable_before),
        },
    };
    while !resync.is_finished() {
        if let Some(now) = mirror.resync_progress() {
            let line = event(EventKind::Progress, now.done_bytes, now.total_bytes);
            progress.offer(|| serde_json::to_value(line).ok());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let outcome = match resync.join() {
        Ok(outcomes) => outcomes.into_iter().find(|(name, _)| name == layer),
        Err(_) => Some((
            layer.to_string(),
            Err("the rebuild's thread panicked".into()),
        )),
    };
    if let Some((_, Err(e))) = outcome {
        return json!({"ok": false, "error": format!("the rebuild stopped: {e}")});
    }
    if mirror.health(leg) != Some(Health::Ok) {
        return json!({"ok": false, "error": format!(
            "leg {leg} failed during the rebuild; it stays failed (see the daemon's log)"
        )});
    }
    let copied = resync_counters(mirror).0.saturating_sub(copied_before);
    match serde_json::to_value(event(EventKind::Done, copied, copied)) {
        Ok(mut reply) => {
            reply["ok"] = json!(true);
            reply["mirror"] = json!(layer);
            reply["leg"] = json!(leg);
            reply
        }
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    }
}

/// The mirror's counters of bytes copied and blocks left unreadable by its
/// rebuilds since the device started.
fn resync_counters(mirror: &Mirror) -> (u64, u64) {
    match AsyncLayer::report(mirror) {
        LayerReport::Mirror(r) => (r.resync_bytes, r.resync_unreadable_blocks),
        _ => (0, 0),
    }
}

/// How each mirror's rebuild ended, by the mirror's name.
type ResyncOutcomes = Vec<(String, Result<(), String>)>;

/// Drive the rebuild of every mirror that has a leg rebuilding (after `readd`,
/// or after a restart during a rebuild), on a thread of its own, which returns
/// how each mirror's rebuild ended. `None` when the thread could not start.
pub fn resume_resync(stack: Arc<Stack>) -> Option<JoinHandle<ResyncOutcomes>> {
    let spawned = std::thread::Builder::new()
        .name("resync".into())
        .spawn(move || {
            let (Ok(ctx), Ok(exec)) = (IoCtx::new(0, 16), Executor::new()) else {
                tracing::error!("resync: cannot set up io_uring");
                return Vec::new();
            };
            let mut outcomes = Vec::new();
            let names: Vec<String> = stack.plan().layers.iter().map(|l| l.name.clone()).collect();
            for name in names {
                let Some(mirror) = stack.mirror(&name) else {
                    continue;
                };
                if !mirror.is_rebuilding() {
                    continue;
                }
                tracing::info!(mirror = %name, "resync started");
                let outcome = loop {
                    match exec.block_on(&ctx, mirror.resync_step(&ctx)) {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::info!(mirror = %name, "resync complete");
                            break Ok(());
                        }
                        Err(e) => {
                            tracing::error!(mirror = %name, "resync stopped: {e}");
                            break Err(e);
                        }
                    }
                };
                outcomes.push((name, outcome));
            }
            outcomes
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::error!("resync: cannot start its thread: {e}");
            None
        }
    }
}
