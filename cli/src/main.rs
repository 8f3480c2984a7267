//! `dms2delta`: replicate AWS DMS output into Delta Lake tables from the command line.
//!
//! This file only parses the command line and hands over; each command lives in its module.

mod common;
mod demo;
mod query;
mod reprocess;
mod run;
mod status;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use common::CliResult;

/// Replicate AWS DMS output (CSV or Parquet files on S3) into Delta Lake tables.
///
/// Start with `dms2delta demo`: it needs no AWS account and shows the whole pipeline in seconds.
#[derive(Debug, Parser)]
#[command(name = "dms2delta", version, propagate_version = true)]
struct Cli {
    /// Log what the pipeline does on stderr (RUST_LOG overrides the filter, e.g. RUST_LOG=debug).
    #[arg(long, short, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate DMS output, replicate it into a local Delta lake and check the result (no AWS,
    /// no server).
    Demo(demo::DemoArgs),
    /// Replicate every DMS file under a folder or S3 prefix into the lake, once or with --watch.
    ///
    /// Files are decoded full-load files first, then CDC files, each group by key; then every
    /// table with pending changes is committed. Files already applied (same key and ETag) are
    /// not decoded again, so running twice changes nothing. Files that can never be decoded are
    /// set aside with a report (see `status`) and do not stop the others.
    Run(run::RunArgs),
    /// Show each table's version, rows, last applied file, lag, pending change sets and
    /// quarantined files.
    Status(status::StatusArgs),
    /// Run a read-only SQL query over the lake's tables (DataFusion) and print the result.
    #[command(after_help = query::AFTER_HELP)]
    Query(query::QueryArgs),
    /// Find and finish what was missed: decode DMS files no commit applied (lost events), try
    /// quarantined files again (after a configuration fix), commit tables with change sets
    /// waiting. The reprocess function does the same on AWS. Safe to run at any time.
    Reprocess(reprocess::ReprocessArgs),
}

/// dms2delta's own events at info and nothing else: the Delta engine logs harmless conditions
/// (such as a table without a log yet) as errors. RUST_LOG replaces this filter.
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("off,dms2delta=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

async fn dispatch(command: &Command, out: &mut dyn Write) -> CliResult<()> {
    match command {
        Command::Demo(a) => demo::execute(a, out).await,
        Command::Run(a) => run::execute(a, out).await,
        Command::Status(a) => status::execute(a, out).await,
        Command::Query(a) => query::execute(a, out).await,
        Command::Reprocess(a) => reprocess::execute(a, out).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.verbose {
        init_logging();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = runtime.block_on(dispatch(&cli.command, &mut out));
    let _ = out.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn interval_needs_watch() {
        let e = Cli::try_parse_from(["dms2delta", "run", "--source", "x", "--interval", "5"]).unwrap_err();
        assert!(e.to_string().contains("--watch"), "{e}");
        let ok = Cli::try_parse_from(["dms2delta", "run", "--source", "x", "--watch", "--interval", "5"]).unwrap();
        match ok.command {
            Command::Run(a) => assert_eq!((a.watch, a.interval), (true, 5)),
            other => panic!("{other:?}"),
        }
    }
}
