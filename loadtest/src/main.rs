use clap::{Parser, Subcommand};

/// Funnel's traffic tool.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send the demo conversation of N contacts to the ingest API
    Demo {
        /// Base URL of funnel-ingest
        #[arg(
            long,
            env = "FUNNEL_INGEST_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        url: String,
        /// Bearer token with the `ingest` scope
        #[arg(long, env = "FUNNEL_TOKEN")]
        token: String,
        #[arg(long, default_value_t = 24)]
        contacts: u32,
    },
    /// Closed-loop HTTP load for benchmarks; prints a JSON report
    HttpBench {
        /// Full URL to POST to (…/v1/messages or …/v1/messages/batch)
        #[arg(long)]
        url: String,
        #[arg(long, env = "FUNNEL_TOKEN")]
        token: Option<String>,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds
        #[arg(long, default_value_t = 15)]
        duration: u64,
        /// Messages per request (1: single-message bodies)
        #[arg(long, default_value_t = 1)]
        batch: usize,
    },
    /// The baseline endpoint: parses the same JSON, answers 202, no Kafka
    BareEndpoint {
        #[arg(long, default_value = "127.0.0.1:18080")]
        addr: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo {
            url,
            token,
            contacts,
        } => {
            let start = chrono::Utc::now() - chrono::Duration::days(3);
            let client = reqwest::Client::new();
            let (mut ok, mut failed) = (0, 0);
            for m in funnel_loadtest::demo(contacts, start) {
                let res = client
                    .post(format!("{url}/v1/messages"))
                    .bearer_auth(&token)
                    .json(&m)
                    .send()
                    .await?;
                if res.status() == reqwest::StatusCode::ACCEPTED {
                    ok += 1;
                } else {
                    failed += 1;
                    eprintln!(
                        "{} {}: {}",
                        m.event_id,
                        res.status(),
                        res.text().await.unwrap_or_default()
                    );
                }
            }
            println!("demo traffic: {ok} accepted, {failed} failed");
            if failed > 0 {
                anyhow::bail!("{failed} demo messages were not accepted");
            }
        }
        Command::HttpBench {
            url,
            token,
            concurrency,
            duration,
            batch,
        } => {
            let report = funnel_loadtest::bench::run(
                url,
                token,
                concurrency,
                std::time::Duration::from_secs(duration),
                batch,
            )
            .await?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::BareEndpoint { addr } => funnel_loadtest::bench::bare_endpoint(addr).await?,
    }
    Ok(())
}
