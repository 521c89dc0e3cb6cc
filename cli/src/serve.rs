//! `ticklab exchange|trader|recorder|capture|mirror --config F`: the services as
//! they run in a pod, from the configuration the operator renders, in the one
//! binary the container image ships. Run until SIGTERM; JSON logs by default.

use std::path::PathBuf;

use anyhow::Context;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Clone)]
pub struct ServeArgs {
    /// Service configuration (YAML).
    #[arg(
        long,
        required_unless_present = "config_json",
        conflicts_with = "config_json"
    )]
    pub config: Option<PathBuf>,
    /// Service configuration as one JSON argument (for containers that cannot
    /// mount a file, such as the mirror added to a running pod).
    #[arg(long)]
    pub config_json: Option<String>,
    /// Write the final counts as JSON to this file on exit.
    #[arg(long)]
    pub results_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,
}

fn read_config<T: DeserializeOwned>(args: &ServeArgs) -> anyhow::Result<T> {
    let (origin, text) = match (&args.config, &args.config_json) {
        (Some(path), _) => (
            path.display().to_string(),
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        (None, Some(json)) => ("--config-json".to_string(), json.clone()),
        (None, None) => anyhow::bail!("--config or --config-json is required"),
    };
    // YAML is a superset of JSON: one parser for both.
    serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(&text))
        .map_err(|e| anyhow::anyhow!("{origin}: {}: {}", e.path(), e.inner()))
}

fn init_logs(args: &ServeArgs) {
    let format = if args.log_format == "text" {
        ticklab_admin::LogFormat::Text
    } else {
        ticklab_admin::LogFormat::Json
    };
    ticklab_admin::init_tracing(ticklab_admin::LogFormat::from_env_or(format), "info");
}

fn write_results(path: &Option<PathBuf>, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(value)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

pub async fn trader(args: ServeArgs) -> anyhow::Result<()> {
    init_logs(&args);
    let mut config: ticklab_trader::TraderConfig = read_config(&args)?;
    if let Ok(uri) = std::env::var("MONGODB_URI") {
        config.mongodb_uri = Some(uri);
    }
    let shutdown = CancellationToken::new();
    ticklab_admin::cancel_on_signal(shutdown.clone());
    let registry = ticklab_admin::experiment_registry("trader", &config.experiment)?;
    let handle = ticklab_trader::start(config, registry, shutdown).await?;
    let results = handle.join().await?;
    write_results(&args.results_file, &results)
}

pub async fn exchange(args: ServeArgs) -> anyhow::Result<()> {
    init_logs(&args);
    let config: ticklab_exchange::ExchangeConfig = read_config(&args)?;
    let shutdown = CancellationToken::new();
    ticklab_admin::cancel_on_signal(shutdown.clone());
    let registry = ticklab_admin::experiment_registry("exchange", &config.experiment)?;
    let handle = ticklab_exchange::start(config, registry, shutdown).await?;
    let report = handle.join().await?;
    write_results(&args.results_file, &report)
}

pub async fn recorder(args: ServeArgs) -> anyhow::Result<()> {
    init_logs(&args);
    let config: ticklab_recorder::RecorderConfig = read_config(&args)?;
    let shutdown = CancellationToken::new();
    ticklab_admin::cancel_on_signal(shutdown.clone());
    let registry = ticklab_recorder::metrics::registry(&config.experiment, &config.recording)?;
    let handle = ticklab_recorder::start(config, registry, shutdown).await?;
    let status = handle.join().await?;
    write_results(&args.results_file, &status)
}

pub async fn capture(args: ServeArgs) -> anyhow::Result<()> {
    init_logs(&args);
    let config: ticklab_capture_service::CaptureConfig = read_config(&args)?;
    let shutdown = CancellationToken::new();
    ticklab_admin::cancel_on_signal(shutdown.clone());
    let registry = ticklab_capture_service::registry(&config.experiment, &config.session)?;
    let handle = ticklab_capture_service::start(config, registry, shutdown).await?;
    let report = handle.join().await?;
    write_results(&args.results_file, &report)
}

pub async fn mirror(args: ServeArgs) -> anyhow::Result<()> {
    init_logs(&args);
    let config: ticklab_mirror::MirrorConfig = read_config(&args)?;
    let shutdown = CancellationToken::new();
    ticklab_admin::cancel_on_signal(shutdown.clone());
    let registry = ticklab_mirror::registry(&config.experiment, &config.session)?;
    let handle = ticklab_mirror::start(config, registry, shutdown).await?;
    let report = handle.join().await?;
    write_results(&args.results_file, &report)
}
