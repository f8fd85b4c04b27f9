/// mimalloc instead of glibc's allocator: ingest allocates per message (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Funnel's HTTP API: accepts chat messages into Kafka, and serves the funnel's contacts,
/// reports and rules.
#[derive(Parser)]
#[command(name = "funnel-ingest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: funnel_http::Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default)
    Serve,
    /// Manage API tokens (stored hashed in PostgreSQL)
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it once
    Create {
        /// The tenant the token acts for
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Comma-separated scopes: ingest, read, admin
        #[arg(long, value_delimiter = ',', required = true)]
        scope: Vec<funnel_http::queries::tokens::Scope>,
        /// What the token is for
        #[arg(long)]
        description: Option<String>,
    },
    /// List tokens (never their secrets)
    List,
    /// Revoke a token by its id
    Revoke {
        /// The token's id (`tok_...`, as `token list` shows it)
        id: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let provider = funnel_runtime::telemetry::init("funnel-ingest")?;
            let token = CancellationToken::new();
            funnel_runtime::telemetry::shutdown_on_signal(token.clone());
            let result = funnel_http::run(cli.settings, token).await;
            if let Some(p) = provider {
                let _ = p.shutdown();
            }
            if let Err(e) = &result {
                tracing::error!(error = %format!("{e:#}"), "funnel-ingest failed");
            }
            result
        }
        Command::Token { command } => {
            use funnel_http::queries::tokens as auth;
            let pool = funnel_http::connect(&cli.settings).await?;
            match command {
                TokenCommand::Create {
                    tenant,
                    scope,
                    description,
                } => {
                    let (id, token) =
                        auth::create(&pool, &tenant, &scope, description.as_deref()).await?;
                    eprintln!("created {id} for tenant {tenant}; the token is shown once:");
                    println!("{token}");
                }
                TokenCommand::List => {
                    println!(
                        "{:<18} {:<16} {:<20} {:<26} {:<8} DESCRIPTION",
                        "ID", "TENANT", "SCOPES", "CREATED", "STATE"
                    );
                    for t in auth::list(&pool).await? {
                        println!(
                            "{:<18} {:<16} {:<20} {:<26} {:<8} {}",
                            t.id,
                            t.tenant,
                            t.scopes.join(","),
                            t.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                            if t.revoked_at.is_some() {
                                "revoked"
                            } else {
                                "active"
                            },
                            t.description.unwrap_or_default()
                        );
                    }
                }
                TokenCommand::Revoke { id } => {
                    if !auth::revoke(&pool, &id).await? {
                        anyhow::bail!("no token with id {id}; see `funnel-ingest token list`");
                    }
                    println!("revoked {id}");
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn configuration_reference_is_current() {
        funnel_runtime::clidoc::check("funnel-ingest", &Cli::command())
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn flags_may_follow_a_subcommand() {
        let cli = Cli::try_parse_from([
            "funnel-ingest",
            "token",
            "list",
            "--database-url",
            "postgres://x/y",
        ])
        .expect("parses");
        assert_eq!(cli.settings.database.url, "postgres://x/y");
    }
}
