//! Repairs a running device: `scrub` (read every copy, verify, rewrite bad ones
//! from good ones) and `readd` (put a failed mirror leg back and rebuild it in
//! the background). Both run on daemon threads with their own io_uring, beside
//! the queues, which keep serving I/O.

use std::sync::Arc;
use std::time::{Duration, Instant};

use layers::mirror::ScrubReport;
use layers::plan::LayerSpec;
use layers::{Error, Executor, IoCtx, Stack};
use serde_json::{json, Value};

use super::control;

/// Scrub every mirror of the stack; without a mirror, read the whole device so
/// that every checksum and authentication tag is verified (nothing to repair
/// from, so any bad block is unrepairable).
pub fn scrub(stack: &Stack) -> Value {
    let started = Instant::now();
    let (ctx, exec) = match (IoCtx::new(0, 64), Executor::new()) {
        (Ok(ctx), Ok(exec)) => (ctx, exec),
        (Err(e), _) | (_, Err(e)) => return json!({"ok": false, "error": e.to_string()}),
    };
    let mirrors: Vec<String> = stack
        .plan()
        .layers
        .iter()
        .filter(|l| matches!(l.spec, LayerSpec::Mirror(_)))
        .map(|l| l.name.clone())
        .collect();
    let mut total = ScrubReport::default();
    for name in &mirrors {
        let Some(mirror) = stack.mirror(name) else {
            continue;
        };
        let steps = mirror.scrub_steps();
        let mut last_shown = 0;
        for step in 0..steps {
            match exec.block_on(&ctx, mirror.scrub_step(&ctx, step)) {
                Ok(report) => total.add(&report),
                Err(e) => return json!({"ok": false, "error": format!("mirror \"{name}\": {e}")}),
            }
            let percent = (step + 1) * 100 / steps.max(1);
            if percent >= last_shown + 10 {
                last_shown = percent;
                tracing::info!(mirror = %name, "scrub {percent}%");
            }
        }
    }
    if mirrors.is_empty() {
        total = read_everything(stack, &ctx, &exec);
    }
    tracing::info!(?total, "scrub finished");
    json!({
        "ok": true,
        "mirrors": mirrors,
        "bytes_checked": total.bytes_checked,
        "repaired": total.repaired,
        "mismatched": total.mismatched,
        "unrepairable": total.unrepairable,
        "seconds": started.elapsed().as_secs_f64(),
    })
}

/// Read the device block by block where a 1 MiB read fails, counting the
/// blocks that fail verification.
fn read_everything(stack: &Stack, ctx: &IoCtx, exec: &Executor) -> ScrubReport {
    let mut report = ScrubReport::default();
    let block = u64::from(stack.block_size());
    let chunk = (1u64 << 20).min(stack.size());
    let mut buf = vec![0u8; chunk as usize];
    let mut offset = 0;
    while offset < stack.size() {
        let n = chunk.min(stack.size() - offset);
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
        report.bytes_checked += n;
        offset += n;
    }
    report
}

/// Put leg `leg` of mirror `layer` back and rebuild it in the background.
pub fn readd(stack: &Arc<Stack>, layer: &str, leg: usize) -> Value {
    let Some(mirror) = stack.mirror(layer) else {
        return json!({"ok": false, "error": format!("no mirror named \"{layer}\"")});
    };
    let (ctx, exec) = match (IoCtx::new(0, 16), Executor::new()) {
        (Ok(ctx), Ok(exec)) => (ctx, exec),
        (Err(e), _) | (_, Err(e)) => return json!({"ok": false, "error": e.to_string()}),
    };
    if let Err(e) = exec.block_on(&ctx, mirror.readd(&ctx, leg)) {
        return json!({"ok": false, "error": e});
    }
    resume_resync(stack.clone());
    json!({"ok": true, "mirror": layer, "leg": leg})
}

/// Drive the rebuild of every mirror that has a leg rebuilding (after `readd`,
/// or after a restart during a rebuild), on a thread of its own.
pub fn resume_resync(stack: Arc<Stack>) {
    let spawned = std::thread::Builder::new()
        .name("resync".into())
        .spawn(move || {
            let (Ok(ctx), Ok(exec)) = (IoCtx::new(0, 16), Executor::new()) else {
                tracing::error!("resync: cannot set up io_uring");
                return;
            };
            let names: Vec<String> = stack.plan().layers.iter().map(|l| l.name.clone()).collect();
            for name in names {
                let Some(mirror) = stack.mirror(&name) else {
                    continue;
                };
                if !mirror.is_rebuilding() {
                    continue;
                }
                tracing::info!(mirror = %name, "resync started");
                loop {
                    match exec.block_on(&ctx, mirror.resync_step(&ctx)) {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::info!(mirror = %name, "resync complete");
                            break;
                        }
                        Err(e) => {
                            tracing::error!(mirror = %name, "resync stopped: {e}");
                            break;
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("resync: cannot start its thread: {e}");
    }
}

/// `ublk-stack scrub NAME`: exit 0 when clean or repaired, 1 when anything was
/// unrepairable or the scrub failed.
pub fn scrub_command(name: &str) -> u8 {
    let reply = match ask(
        name,
        json!({"cmd": "scrub"}),
        Duration::from_secs(24 * 3600),
    ) {
        Ok(reply) => reply,
        Err(e) => {
            eprintln!("ublk-stack: {name}: {e}");
            return 1;
        }
    };
    println!(
        "{name}: scrubbed {} bytes in {:.1}s: {} repaired, {} mismatched copies rewritten, {} unrepairable",
        reply["bytes_checked"], reply["seconds"].as_f64().unwrap_or(0.0), reply["repaired"],
        reply["mismatched"], reply["unrepairable"]
    );
    u8::from(reply["unrepairable"].as_u64() != Some(0))
}

/// `ublk-stack readd NAME MIRROR LEG`.
pub fn readd_command(name: &str, mirror: &str, leg: usize) -> u8 {
    let request = json!({"cmd": "readd", "layer": mirror, "leg": leg});
    match ask(name, request, Duration::from_secs(60)) {
        Ok(_) => {
            println!(
                "{name}: leg {leg} of mirror \"{mirror}\" re-added; rebuilding (see `status`)"
            );
            0
        }
        Err(e) => {
            eprintln!("ublk-stack: {name}: {e}");
            1
        }
    }
}

fn ask(name: &str, request: Value, timeout: Duration) -> Result<Value, String> {
    let socket = control::find(name)?;
    let reply = control::request_value(&socket, &request, timeout)
        .map_err(|e| control::unreachable(name, &socket, &e))?;
    if reply["ok"] == json!(true) {
        Ok(reply)
    } else {
        Err(reply["error"].as_str().unwrap_or("failed").to_string())
    }
}
