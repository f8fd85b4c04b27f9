/// mimalloc instead of glibc's allocator: the processor allocates per message (decoded
/// strings, contact states), and glibc's malloc was a tenth of its time (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// The dead-letter topic: list entries, or send them back to their source topic
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Show dead letters: where they came from, why, and whether they were redriven
    List {
        /// Show at most this many entries
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Send every dead letter not redriven yet back to its source topic (after fixing the cause)
    Redrive {
        /// Only count what would be redriven
        #[arg(long)]
        dry_run: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let provider = funnel_processor::telemetry::init("funnel-processor")?;
    // Crash-test hooks (docs/exactly-once.md): inert unless FAILPOINTS names some.
    let _failpoints = std::env::var_os("FAILPOINTS").map(|v| {
        tracing::warn!(failpoints = ?v, "FAILPOINTS is set: this process will crash on purpose");
        fail::FailScenario::setup()
    });
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let token = CancellationToken::new();
            funnel_processor::telemetry::shutdown_on_signal(token.clone());
            funnel_processor::run(cli.settings, token).await
        }
        Command::Dlq { action } => dlq(&cli.settings, action).await,
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

async fn dlq(settings: &funnel_processor::Settings, action: DlqAction) -> anyhow::Result<()> {
    use funnel_processor::dlq;
    match action {
        DlqAction::List { limit, json } => {
            let entries = dlq::list(settings, limit).await?;
            if json {
                for e in &entries {
                    println!("{}", serde_json::to_string(e)?);
                }
                return Ok(());
            }
            println!(
                "{:<14} {:<24} {:<40} {:<9} error",
                "dlq p/offset", "dead-lettered at", "source topic/p/offset", "redriven"
            );
            for e in &entries {
                let at = e
                    .timestamp_ms
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_default();
                let source = format!(
                    "{}/{}/{}",
                    e.source_topic,
                    e.source_partition.map_or("?".into(), |p| p.to_string()),
                    e.source_offset.map_or("?".into(), |o| o.to_string())
                );
                println!(
                    "{:<14} {:<24} {:<40} {:<9} {}",
                    format!("{}/{}", e.partition, e.offset),
                    at,
                    source,
                    if e.redriven { "yes" } else { "no" },
                    e.error
                );
            }
            println!("{} dead letter(s) shown (at most {limit})", entries.len());
        }
        DlqAction::Redrive { dry_run } => {
            let report = dlq::redrive(settings, dry_run).await?;
            let total: u64 = report.redriven.values().sum();
            for (topic, n) in &report.redriven {
                println!("{topic}: {n}");
            }
            if report.skipped > 0 {
                println!("skipped (no source topic header): {}", report.skipped);
            }
            if dry_run {
                println!("{total} dead letter(s) would be redriven (dry run: nothing sent)");
            } else {
                println!("{total} dead letter(s) redriven");
            }
        }
    }
    Ok(())
}
