//! `ticklab`: the command a new user runs first. `ticklab run FILE.yaml` runs a
//! LatencyExperiment on this machine (exchange and trader on loopback) and prints a
//! latency report; `ticklab validate FILE.yaml` checks a file the way the API server
//! would. Bad input gets one line naming the problem and a non-zero exit.

#![forbid(unsafe_code)]

mod bench;
mod local_mirror;
mod local_run;
mod ports;
mod progress;
mod recording;
mod report;
mod serve;
mod wire;

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
    /// Run the recorder service from a rendered configuration (as in a pod).
    Recorder(serve::ServeArgs),
    /// Run the capture service (VXLAN in, wire latency out) from a rendered
    /// configuration (as in a pod).
    Capture(serve::ServeArgs),
    /// Run the mirror (AF_PACKET capture forwarded in VXLAN; needs NET_RAW) from a
    /// rendered configuration (as in a pod).
    Mirror(serve::ServeArgs),
    /// Print the wire latency report of a capture file: feed latency and
    /// tick-to-trade from the wire, decode errors by kind (TLS decrypted with a key
    /// log).
    Decode(wire::DecodeArgs),
    /// Replay a recorded feed (pcap, pcapng or JSON lines) into a local trader and
    /// report its latency beside the recording's own.
    Replay(ReplayArgs),
    /// Recorded files.
    #[command(subcommand)]
    Recordings(RecordingsCommand),
    /// Check a manifest the way the API server would, without running it: every
    /// LatencyExperiment, RecordingSession and MirrorSession in the file.
    Validate {
        /// YAML with one or more ticklab resources (`---` separated).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum RecordingsCommand {
    /// Print a recording directory's index: files, sequence ranges, counts, times.
    Ls {
        /// A recording directory (e.g. ./recordings/NAME).
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    Udp,
    Tcp,
    Websocket,
}

#[derive(clap::Args, Clone)]
pub struct ReplayArgs {
    /// The recording: pcap, pcapng (any capture holding ticklab feed packets) or
    /// JSON lines written by a recorder.
    pub file: PathBuf,
    /// Speed multiplier against the recording's timing, 0.1 to 100.
    #[arg(long, default_value = "1", value_parser = recording::parse_speed, conflicts_with = "top_speed")]
    pub speed: f64,
    /// As fast as possible, no schedule.
    #[arg(long)]
    pub top_speed: bool,
    /// Start again after the last packet (until --duration or Ctrl-C).
    #[arg(long = "loop")]
    pub looped: bool,
    /// How the replayed feed reaches the trader.
    #[arg(long, value_enum, default_value_t = TransportArg::Udp)]
    pub transport: TransportArg,
    /// Stop after this long (e.g. 30s); default: one pass (looped: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Report format.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Experiment name in the report and on the metrics.
    #[arg(long, default_value = "replay")]
    pub name: String,
    /// Port of the trader's REST and metrics endpoint (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub trader_port: u16,
    /// Port of the exchange's metrics endpoint (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub exchange_port: u16,
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
    /// Where RecordingSessions in the file record (each into DIR/NAME/), and where
    /// an experiment's `exchange.replay` finds its file (DIR/RECORDING/FILE).
    #[arg(long, default_value = "recordings")]
    pub recordings_dir: PathBuf,
    /// Port of the first recorder's HTTP endpoint (files, toggle, metrics; 0: any).
    #[arg(long, default_value_t = 0)]
    pub recorder_port: u16,
    /// Also append the trader's TLS key log (with spec.tls.keyLog) to FILE, NSS key
    /// log format.
    #[arg(long, value_name = "FILE", env = "SSLKEYLOGFILE")]
    pub keylog: Option<PathBuf>,
    /// With a MirrorSession: port of the capture's HTTP endpoint (report, metrics;
    /// 0: any).
    #[arg(long, default_value_t = 0)]
    pub capture_port: u16,
    /// With a MirrorSession: port of the mirror's metrics (0: any).
    #[arg(long, default_value_t = 0)]
    pub mirror_port: u16,
    /// With a MirrorSession: write what the mirror captured as pcapng files here
    /// (nanosecond timestamps, the TLS key log embedded, so Wireshark opens them
    /// decrypted).
    #[arg(long, value_name = "DIR")]
    pub capture_dir: Option<PathBuf>,
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
        Command::Recorder(args) => block_on(serve::recorder(args)),
        Command::Capture(args) => block_on(serve::capture(args)),
        Command::Mirror(args) => block_on(serve::mirror(args)),
        Command::Decode(args) => match wire::decode(&args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ticklab: {e:#}");
                ExitCode::from(exit::BAD_INPUT)
            }
        },
        Command::Recordings(RecordingsCommand::Ls { dir }) => match recording::list(&dir) {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ticklab: {e:#}");
                ExitCode::from(exit::BAD_INPUT)
            }
        },
        Command::Replay(args) => {
            let (experiment, run_args, replay) = match local_run::replay_run(&args) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("ticklab: {e:#}");
                    return ExitCode::from(exit::BAD_INPUT);
                }
            };
            match runtime().map(|rt| {
                rt.block_on(local_run::run(
                    experiment,
                    Vec::new(),
                    Vec::new(),
                    run_args,
                    Some(replay),
                ))
            }) {
                Ok(Ok(code)) => ExitCode::from(code),
                Ok(Err(e)) => {
                    eprintln!("ticklab: {e:#}");
                    // A file that cannot be replayed is bad input, not a failure.
                    let bad_file = matches!(
                        e.downcast_ref::<ticklab_exchange::Error>(),
                        Some(ticklab_exchange::Error::Replay(_))
                    );
                    ExitCode::from(if bad_file {
                        exit::BAD_INPUT
                    } else {
                        exit::RUNTIME
                    })
                }
                Err(code) => code,
            }
        }
        Command::Run(args) => {
            let (experiment, sessions, mirrors) = match local_run::load_run_file(&args.file) {
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
            match runtime()
                .map(|rt| rt.block_on(local_run::run(experiment, sessions, mirrors, args, None)))
            {
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
