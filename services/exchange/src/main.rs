//! `exchange --config FILE`: runs the exchange from a rendered configuration until
//! SIGTERM (`ticklab exchange` is the same in the all-in-one binary).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ticklab_admin::LogFormat;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "ticklab exchange: trade generator, feed publisher, retransmission, order API"
)]
struct Args {
    /// Exchange configuration (YAML).
    #[arg(long, env = "TICKLAB_EXCHANGE_CONFIG")]
    config: PathBuf,
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
            eprintln!("exchange: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.config.display()))?;
    let config: ticklab_exchange::ExchangeConfig = serde_path_to_error::deserialize(
        serde_yaml::Deserializer::from_str(&text),
    )
    .map_err(|e| anyhow::anyhow!("{}: {}: {}", args.config.display(), e.path(), e.inner()))?;
    let shutdown = CancellationToken::new();
    ticklab_admin::cancel_on_signal(shutdown.clone());
    let handle = ticklab_exchange::start(config, prometheus::Registry::new(), shutdown).await?;
    let report = handle.join().await?;
    tracing::info!(report = %serde_json::to_string(&report).unwrap_or_default(), "exchange stopped");
    Ok(())
}
