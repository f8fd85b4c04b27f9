use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Funnel's ingest API: validates chat messages and produces them to Kafka.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    settings: funnel_ingest::Settings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let provider = funnel_ingest::telemetry::init("funnel-ingest")?;
    let token = CancellationToken::new();
    funnel_ingest::telemetry::shutdown_on_signal(token.clone());
    let result = funnel_ingest::run(cli.settings, token).await;
    if let Some(p) = provider {
        let _ = p.shutdown();
    }
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "funnel-ingest failed");
    }
    result
}
