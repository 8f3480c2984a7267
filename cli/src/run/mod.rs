//! `dms2delta run`: replicate every DMS file under a folder or S3 prefix into the lake, once or
//! watching for new files.
//!
//! One pass ([`run_once`]) lists the source, decodes the files not applied yet (full-load files
//! first, then CDC files, each group by key), commits every table with pending change sets and
//! reports per table. A file is "applied" when a commit of its table recorded the change set of
//! that exact object version (bucket, key and ETag) in the Delta log, so a second pass over the
//! same files decodes nothing; with `--force` everything is decoded again and the commit's
//! sequence guard refuses every change the table already has.

mod pass;
mod render;
mod source;
mod watch;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::sync::Notify;

use crate::common::{config_required, load_config, pipeline, CliResult};

pub use pass::{run_once, RunReport, RunState};
pub use render::{pass_status, render, summary_table, write_quarantine};
pub use source::attach_source;
pub use watch::{watch, WatchOptions};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where DMS writes its files: a local folder standing for the configured source bucket(s)
    /// (object keys are paths below it), or s3://bucket[/prefix] (one of the configured buckets).
    #[arg(long, value_name = "DIR|S3_URI")]
    pub source: String,

    /// Where the Delta tables live; overrides `lake` in the configuration.
    #[arg(long, value_name = "DIR|S3_URI")]
    pub lake: Option<String>,

    /// The configuration: sources, tables, staging and quarantine locations (local path or
    /// s3://bucket/key). Required.
    #[arg(long, value_name = "FILE")]
    pub config: Option<String>,

    /// Keep running: look for new files every --interval seconds and apply them (Ctrl-C stops
    /// after the current pass).
    #[arg(long)]
    pub watch: bool,

    /// Seconds between two passes in --watch mode.
    #[arg(long, value_name = "SECS", default_value_t = 10, requires = "watch")]
    pub interval: u64,

    /// Stop after this many passes in --watch mode (default: until Ctrl-C).
    #[arg(long, value_name = "N", requires = "watch")]
    pub max_polls: Option<u64>,

    /// Decode every file again, even those already applied. Safe: changes the tables already
    /// have are refused by the sequence guard, so only missing changes are applied.
    #[arg(long)]
    pub force: bool,
}

/// `dms2delta run`.
pub async fn execute(args: &RunArgs, out: &mut dyn Write) -> CliResult<()> {
    let Some(config_path) = &args.config else {
        return Err(config_required("run"));
    };
    let mut config = load_config(config_path, args.lake.as_deref()).await?;
    let source = attach_source(&mut config, &args.source)?;
    let pipeline = pipeline(config)?;
    if args.watch {
        let stop = Arc::new(Notify::new());
        let on_signal = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_signal.notify_one();
            }
        });
        let opts = WatchOptions {
            interval: Duration::from_secs(args.interval),
            max_polls: args.max_polls,
            force: args.force,
        };
        // The exit status is the last pass's.
        let mut last = Ok(());
        watch(&pipeline, &source, &opts, stop, out, |_, report| {
            last = pass_status(report)
        })
        .await?;
        last
    } else {
        let report = run_once(&pipeline, &source, &mut RunState::default(), args.force).await?;
        render(out, &report, &source)?;
        pass_status(&report)
    }
}

#[cfg(test)]
mod tests;
