//! `ticklab`: the command a new user runs first. `ticklab run FILE.yaml` runs a
//! LatencyExperiment on this machine (exchange and trader on loopback) and prints a
//! latency report; `ticklab validate FILE.yaml` checks a file the way the API server
//! would. Bad input gets one line naming the problem and a non-zero exit.

#![forbid(unsafe_code)]

mod bench;
mod local_run;
mod ports;
mod progress;
mod report;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "ticklab", version, about = "A latency lab for trading feeds")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a LatencyExperiment on this machine and report what was measured.
    Run(RunArgs),
    /// Measure the feed and the writer (figures for BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Run the exchange service from a rendered configuration (as in a pod).
    Exchange(serve::ServeArgs),
    /// Run the trader service from a rendered configuration (as in a pod).
    Trader(serve::ServeArgs),
    /// Check a manifest the way the API server would, without running it: every
    /// LatencyExperiment, RecordingSession and MirrorSession in the file.
    Validate {
        /// YAML with one or more ticklab resources (`---` separated).
        file: PathBuf,
    },
}

#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// LatencyExperiment YAML (the same file `kubectl apply` takes).
    pub file: PathBuf,
    /// Report format.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Store received trades in this MongoDB (else they are kept in memory).
    #[arg(long, env = "MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,
    /// Run this long instead of the file's `spec.duration` (e.g. 30s, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Port of the trader's REST and metrics endpoint (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub trader_port: u16,
    /// Port of the exchange's metrics endpoint (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub exchange_port: u16,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    ticklab_crd::experiment_file::parse_duration(text)
}

/// Exit codes: what a script running `ticklab run` in CI can tell apart.
pub mod exit {
    /// The experiment ran and met its SLO (or had none).
    pub const OK: u8 = 0;
    /// Something failed while running (a port in use, MongoDB unreachable, ...).
    pub const RUNTIME: u8 = 1;
    /// The input is wrong (file unreadable, invalid experiment, bad flag).
    pub const BAD_INPUT: u8 = 2;
    /// The experiment ran but breached its SLO.
    pub const SLO_BREACHED: u8 = 3;
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("ticklab: cannot start the async runtime: {e}");
            ExitCode::from(exit::RUNTIME)
        })
}

/// Runs a command's future; any error is one line and exit code 1.
fn block_on(future: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ticklab: {e:#}");
            ExitCode::from(exit::RUNTIME)
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::BAD_INPUT
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Validate { file } => match ticklab_crd::load_manifests(&file) {
            Ok(manifests) => {
                for manifest in manifests {
                    println!(
                        "{}: valid {} {:?}",
                        file.display(),
                        manifest.kind(),
                        manifest.name()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ticklab: {e}");
                ExitCode::from(exit::BAD_INPUT)
            }
        },
        Command::Bench(command) => block_on(bench::run(command)),
        Command::Exchange(args) => block_on(serve::exchange(args)),
        Command::Trader(args) => block_on(serve::trader(args)),
        Command::Run(args) => {
            let experiment = match ticklab_crd::load_experiment(&args.file) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("ticklab: {e}");
                    return ExitCode::from(exit::BAD_INPUT);
                }
            };
            // Logs only when asked for (RUST_LOG): the terminal belongs to the
            // progress bar and the report.
            if std::env::var_os("RUST_LOG").is_some() {
                ticklab_admin::init_tracing(
                    ticklab_admin::LogFormat::from_env_or(ticklab_admin::LogFormat::Text),
                    "warn",
                );
            }
            match runtime().map(|rt| rt.block_on(local_run::run(experiment, args))) {
                Ok(Ok(code)) => ExitCode::from(code),
                Ok(Err(e)) => {
                    eprintln!("ticklab: {e:#}");
                    ExitCode::from(exit::RUNTIME)
                }
                Err(code) => code,
            }
        }
    }
}
