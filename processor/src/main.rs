use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Funnel's stream processor: chat messages in, one funnel row per contact out, exactly once.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: funnel_processor::Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Consume and process (the default)
    Run,
    /// Apply the database migrations of sql/ and exit
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let provider = funnel_processor::telemetry::init("funnel-processor")?;
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let token = CancellationToken::new();
            funnel_processor::telemetry::shutdown_on_signal(token.clone());
            funnel_processor::run(cli.settings, token).await
        }
        Command::Migrate => {
            let pool = funnel_processor::connect(&cli.settings.database_url).await?;
            funnel_processor::MIGRATOR.run(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
    };
    if let Some(p) = provider {
        let _ = p.shutdown();
    }
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "funnel-processor failed");
    }
    result
}
