//! The `channel` and `webhook-secret` subcommands of `funnel-ingest` (docs/channels.md): the
//! same stores as `/v1/channels` and the signed-webhook check read.

use std::path::PathBuf;

use anyhow::Context;
use funnel_runtime::seal::Sealer;
use sqlx::PgPool;

use crate::queries::channels::{self, NewChannel};
use crate::queries::tenants::check_name;
use crate::queries::webhooks;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ChannelKind {
    /// A WhatsApp Cloud API phone number
    Whatsapp,
}

#[derive(clap::Subcommand)]
pub enum ChannelCommand {
    /// Register a channel; prints one JSON object with `channel_id` and `webhook_path`
    Add {
        kind: ChannelKind,
        /// The tenant whose contacts the channel's messages are
        #[arg(long)]
        tenant: String,
        /// The number's id in the Meta app (`metadata.phone_number_id` of its webhooks)
        #[arg(long)]
        phone_number_id: String,
        /// A file holding the Meta app's secret (the key of X-Hub-Signature-256)
        #[arg(long)]
        app_secret_file: PathBuf,
        /// The verify token entered in the app's webhook settings
        #[arg(long)]
        verify_token: String,
        /// The WhatsApp Business Account id (needed for conversions)
        #[arg(long)]
        waba_id: Option<String>,
        /// The dataset conversions are sent to (Conversions API for Business Messaging)
        #[arg(long, requires = "access_token_file")]
        dataset_id: Option<String>,
        /// A file holding an access token that may post to the dataset
        #[arg(long, requires = "dataset_id")]
        access_token_file: Option<PathBuf>,
    },
    /// The active channels, one JSON object a line (never their secrets)
    List {
        /// Only this tenant's
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Remove a channel: its webhook answers 404 within a few seconds
    Remove {
        /// The channel's id (`ch_...`)
        id: String,
    },
}

#[derive(clap::Subcommand)]
pub enum WebhookSecretCommand {
    /// Make a Standard Webhooks secret for a tenant and print it once (`whsec_...`); several
    /// may be active at once, for rotation
    Create {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// What the secret is for (the sender)
        #[arg(long)]
        description: Option<String>,
        /// The secret stops working this long after creation (`90d`)
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// The secrets (never their values)
    List,
    /// Revoke a secret by its id (`whs_...`): signatures by it are refused within a few seconds
    Revoke { id: String },
}

/// A secret read from a file, without the line break an editor leaves at its end.
fn read_secret(path: &PathBuf) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let text = text.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(!text.is_empty(), "{} is empty", path.display());
    Ok(text)
}

pub async fn channel(pool: &PgPool, command: ChannelCommand) -> anyhow::Result<()> {
    match command {
        ChannelCommand::Add {
            kind: ChannelKind::Whatsapp,
            tenant,
            phone_number_id,
            app_secret_file,
            verify_token,
            waba_id,
            dataset_id,
            access_token_file,
        } => {
            check_name(&tenant).map_err(anyhow::Error::msg)?;
            let new = NewChannel {
                tenant,
                phone_number_id,
                waba_id,
                app_secret: read_secret(&app_secret_file)?,
                verify_token,
                dataset_id,
                access_token: access_token_file.as_ref().map(read_secret).transpose()?,
            };
            let sealer = Sealer::load(pool, "channel_key").await?;
            let c = channels::add(pool, &sealer, &new).await?;
            let mut doc = serde_json::to_value(&c)?;
            doc["webhook_path"] = c.webhook_path().into();
            println!("{doc}");
        }
        ChannelCommand::List { tenant } => {
            for c in channels::list(pool, tenant.as_deref()).await? {
                let mut doc = serde_json::to_value(&c)?;
                doc["webhook_path"] = c.webhook_path().into();
                println!("{doc}");
            }
        }
        ChannelCommand::Remove { id } => {
            anyhow::ensure!(
                channels::remove(pool, &id, None).await?,
                "no active channel {id}"
            );
            println!("removed {id}");
        }
    }
    Ok(())
}

pub async fn webhook_secret(pool: &PgPool, command: WebhookSecretCommand) -> anyhow::Result<()> {
    match command {
        WebhookSecretCommand::Create {
            tenant,
            description,
            expires_in,
        } => {
            check_name(&tenant).map_err(anyhow::Error::msg)?;
            let expires_at = expires_in
                .map(chrono::Duration::from_std)
                .transpose()?
                .map(|d| chrono::Utc::now() + d);
            let sealer = Sealer::load(pool, "channel_key").await?;
            let (id, secret) =
                webhooks::create(pool, &sealer, &tenant, description.as_deref(), expires_at)
                    .await?;
            eprintln!("created {id} for tenant {tenant}; the secret is shown once:");
            println!("{secret}");
        }
        WebhookSecretCommand::List => {
            let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or("-".to_string(), |t| {
                    t.format("%Y-%m-%d %H:%M UTC").to_string()
                })
            };
            println!(
                "{:<22} {:<16} {:<20} {:<20} {:<8} description",
                "id", "tenant", "created", "expires", "state"
            );
            for s in webhooks::list(pool).await? {
                let state = match (s.revoked_at, s.expires_at) {
                    (Some(_), _) => "revoked",
                    (None, Some(e)) if e <= chrono::Utc::now() => "expired",
                    _ => "active",
                };
                println!(
                    "{:<22} {:<16} {:<20} {:<20} {:<8} {}",
                    s.secret_id,
                    s.tenant,
                    at(Some(s.created_at)),
                    at(s.expires_at),
                    state,
                    s.description.unwrap_or_default()
                );
            }
        }
        WebhookSecretCommand::Revoke { id } => {
            anyhow::ensure!(webhooks::revoke(pool, &id).await?, "no webhook secret {id}");
            println!("revoked {id}");
        }
    }
    Ok(())
}
