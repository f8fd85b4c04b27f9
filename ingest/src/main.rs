/// mimalloc instead of glibc's allocator: ingest allocates per message (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::num::NonZeroU32;

use clap::{Parser, Subcommand};
use funnel_http::queries::tenants::check_name;
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
    /// Manage tenants' settings
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage intake channels (WhatsApp Cloud API numbers; docs/channels.md)
    Channel {
        #[command(subcommand)]
        command: funnel_http::commands::ChannelCommand,
    },
    /// Manage Standard Webhooks secrets of senders that sign instead of holding a token
    WebhookSecret {
        #[command(subcommand)]
        command: funnel_http::commands::WebhookSecretCommand,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Store a tenant's rate limits (running services apply them within 5 s); limits not given
    /// keep their stored value, and unstored ones are the services' defaults
    Limits {
        /// The tenant
        #[arg(long)]
        tenant: String,
        /// Messages per second on the ingest endpoints (a batch counts its messages)
        #[arg(long)]
        messages_per_second: Option<NonZeroU32>,
        /// Messages at once over the rate (default: twice the rate)
        #[arg(long)]
        burst: Option<NonZeroU32>,
        /// Requests per second on the read and admin endpoints
        #[arg(long)]
        reads_per_second: Option<NonZeroU32>,
        /// Forget the tenant's stored limits: back to the services' defaults
        #[arg(long, conflicts_with_all = ["messages_per_second", "burst", "reads_per_second"])]
        clear: bool,
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
        /// The token stops working this long after creation (`90d`, `12h`, `1y`); by default
        /// it works until revoked
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
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
            let pool = funnel_http::connect(&cli.settings).await?;
            token(&pool, command).await
        }
        Command::Tenant { command } => {
            let pool = funnel_http::connect(&cli.settings).await?;
            tenant(&pool, command).await
        }
        Command::Channel { command } => {
            let pool = funnel_http::connect(&cli.settings).await?;
            funnel_http::commands::channel(&pool, command).await
        }
        Command::WebhookSecret { command } => {
            let pool = funnel_http::connect(&cli.settings).await?;
            funnel_http::commands::webhook_secret(&pool, command).await
        }
    }
}

async fn token(pool: &sqlx::PgPool, command: TokenCommand) -> anyhow::Result<()> {
    use funnel_http::queries::tokens as auth;
    let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("-".to_string(), |t| {
            t.format("%Y-%m-%d %H:%M UTC").to_string()
        })
    };
    match command {
        TokenCommand::Create {
            tenant,
            scope,
            description,
            expires_in,
        } => {
            check_name(&tenant).map_err(anyhow::Error::msg)?;
            let expires_at = expires_in
                .map(|d| chrono::Duration::from_std(d).map(|d| chrono::Utc::now() + d))
                .transpose()
                .map_err(|_| anyhow::anyhow!("--expires-in is too long"))?;
            let (id, token) =
                auth::create_expiring(pool, &tenant, &scope, description.as_deref(), expires_at)
                    .await?;
            eprintln!(
                "created {id} for tenant {tenant} (expires: {}); the token is shown once:",
                at(expires_at)
            );
            println!("{token}");
        }
        TokenCommand::List => {
            println!(
                "{:<18} {:<16} {:<18} {:<20} {:<20} {:<20} {:<8} DESCRIPTION",
                "ID", "TENANT", "SCOPES", "CREATED", "LAST USED", "EXPIRES", "STATE"
            );
            let now = chrono::Utc::now();
            for t in auth::list(pool).await? {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else if t.expires_at.is_some_and(|e| e <= now) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<18} {:<16} {:<18} {:<20} {:<20} {:<20} {:<8} {}",
                    t.id,
                    t.tenant,
                    t.scopes.join(","),
                    at(Some(t.created_at)),
                    at(t.last_used_at),
                    at(t.expires_at),
                    state,
                    t.description.unwrap_or_default()
                );
            }
        }
        TokenCommand::Revoke { id } => {
            if !auth::revoke(pool, &id).await? {
                anyhow::bail!("no token with id {id}; see `funnel-ingest token list`");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

async fn tenant(pool: &sqlx::PgPool, command: TenantCommand) -> anyhow::Result<()> {
    use funnel_http::queries::tenants::{clear_limits, set_limits, StoredLimits};
    let TenantCommand::Limits {
        tenant,
        messages_per_second,
        burst,
        reads_per_second,
        clear,
    } = command;
    check_name(&tenant).map_err(anyhow::Error::msg)?;
    if clear {
        let had = clear_limits(pool, &tenant).await?;
        println!(
            "tenant {tenant}: {}",
            if had {
                "stored limits cleared; the services' defaults apply"
            } else {
                "had no stored limits; the services' defaults apply"
            }
        );
        return Ok(());
    }
    let signed = |v: Option<NonZeroU32>| v.map(|v| i32::try_from(v.get())).transpose();
    let given = StoredLimits {
        messages_per_second: signed(messages_per_second)?,
        burst: signed(burst)?,
        reads_per_second: signed(reads_per_second)?,
    };
    let now = set_limits(pool, &tenant, given).await?;
    let show = |v: Option<i32>| v.map_or("default".to_string(), |v| v.to_string());
    println!(
        "tenant {tenant}: messages_per_second={} burst={} reads_per_second={}",
        show(now.messages_per_second),
        show(now.burst),
        show(now.reads_per_second)
    );
    Ok(())
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
