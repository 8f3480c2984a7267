//! Watching: passes repeated as new files arrive.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use dms2delta::pipeline::Pipeline;
use tokio::sync::Notify;

use super::pass::{run_once, RunReport, RunState};
use super::render::render;
use super::source::Source;
use crate::common::CliResult;

/// How a watch loop is bounded.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub interval: Duration,
    pub max_polls: Option<u64>,
    pub force: bool,
}

/// Passes until `stop` is notified or `max_polls` passes are done. `after_pass` runs after each
/// pass with its number (tests add files there). A pass that fails in a way a retry may fix is
/// reported and the loop goes on.
pub async fn watch(
    pipeline: &Pipeline,
    source: &Source,
    opts: &WatchOptions,
    stop: Arc<Notify>,
    out: &mut dyn Write,
    mut after_pass: impl FnMut(u64, &RunReport),
) -> CliResult<u64> {
    let mut state = RunState::default();
    let mut polls = 0u64;
    loop {
        polls += 1;
        let now = chrono::Utc::now().format("%H:%M:%S");
        // --force applies to the first pass only; later passes look at new files.
        match run_once(pipeline, source, &mut state, opts.force && polls == 1).await {
            Ok(report) => {
                if polls == 1 || report.decoded > 0 {
                    writeln!(out, "[{now}] pass {polls}")?;
                    render(out, &report, source)?;
                    writeln!(
                        out,
                        "Watching {} for new files every {}s (Ctrl-C to stop)…",
                        source.shown,
                        opts.interval.as_secs()
                    )?;
                }
                after_pass(polls, &report);
            }
            Err(e) if e.retryable => {
                eprintln!("[{now}] pass {polls} failed, will try again: {e}");
            }
            Err(e) => return Err(e),
        }
        out.flush()?;
        if opts.max_polls.is_some_and(|m| polls >= m) {
            return Ok(polls);
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.interval) => {}
            _ = stop.notified() => {
                writeln!(out, "Stopped after {polls} pass{}.", if polls == 1 { "" } else { "es" })?;
                return Ok(polls);
            }
        }
    }
}
