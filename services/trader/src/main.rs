//! `trader --config FILE`: runs the trader from a rendered configuration (the
//! operator mounts it from a ConfigMap) until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ticklab_admin::LogFormat;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "ticklab trader: feed handler, latency measurement, strategy, persistence"
)]
struct Args {
    /// Trader configuration (YAML).
    #[arg(long, env = "TICKLAB_TRADER_CONFIG")]
    config: PathBuf,
    /// MongoDB connection string (overrides the file).
    #[arg(long, env = "MONGODB_URI", hide_env_values = true)]
    mongodb_uri: Option<String>,
    /// Log format.
    #[arg(long, default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let format = if args.log_format == "text" {
        LogFormat::Text
    } else {
        LogFormat::Json
    };
    ticklab_admin::init_tracing(LogFormat::from_env_or(format), "info");
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trader: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.config.display()))?;
    let mut config: ticklab_trader::TraderConfig = serde_path_to_error::deserialize(
        serde_yaml::Deserializer::from_str(&text),
    )
    .map_err(|e| anyhow::anyhow!("{}: {}: {}", args.config.display(), e.path(), e.inner()))?;
    if args.mongodb_uri.is_some() {
        config.mongodb_uri = args.mongodb_uri;
    }
    let shutdown = CancellationToken::new();
    ticklab_admin::cancel_on_signal(shutdown.clone());
    let handle = ticklab_trader::start(config, prometheus::Registry::new(), shutdown).await?;
    let results = handle.join().await?;
    tracing::info!(results = %serde_json::to_string(&results).unwrap_or_default(), "trader stopped");
    Ok(())
}
