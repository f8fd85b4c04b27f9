use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, FixedOffset};
use clap::{Parser, Subcommand, ValueEnum};
use funnel_loadtest::generate::{self, GenConfig};
use funnel_loadtest::send::{SendOptions, Target};
use funnel_runtime::settings::{DatabaseSettings, KafkaSettings};

/// Funnel's traffic tool: realistic chat traffic, the funnel rows it must produce, and the
/// check that the tables hold them.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// POST /v1/messages, one message per request
    Http,
    /// POST /v1/messages/batch
    Batch,
    /// Produce straight to Kafka (the API's validation, Avro, registry and partitioner)
    Kafka,
}

#[derive(clap::Args)]
struct GenArgs {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Contacts per tenant
    #[arg(long, default_value_t = 1000)]
    contacts: u32,
    #[arg(long, default_value_t = 1)]
    tenants: u32,
    /// First day of event times (RFC 3339); default: a fixed date, so a seed always gives
    /// the same traffic
    #[arg(long)]
    start: Option<DateTime<FixedOffset>>,
    /// Days over which contacts first write
    #[arg(long, default_value_t = 14)]
    days: u32,
    /// Invalid bodies, as a share of the valid messages
    #[arg(long, default_value_t = 0.02)]
    invalid_share: f64,
    /// Valid messages sent again 1 to 3 more times
    #[arg(long, default_value_t = 0.05)]
    duplicate_share: f64,
    /// Valid messages held back to the end of the traffic
    #[arg(long, default_value_t = 0.03)]
    late_share: f64,
}

impl GenArgs {
    fn config(&self) -> GenConfig {
        let d = GenConfig::default();
        GenConfig {
            seed: self.seed,
            contacts: self.contacts,
            tenants: self.tenants,
            start: self.start.unwrap_or(d.start),
            days: self.days,
            invalid_share: self.invalid_share,
            duplicate_share: self.duplicate_share,
            late_share: self.late_share,
        }
    }
}

/// The generated records of the processor benchmark (the same flags give the same records).
#[derive(clap::Args)]
struct BenchDataArgs {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Records in the topic, copies included
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    #[arg(long, default_value_t = 1_000_000)]
    contacts: u64,
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Records that are a second copy of the one before (same event id)
    #[arg(long, default_value_t = 0.02)]
    duplicate_share: f64,
}

impl BenchDataArgs {
    fn data(&self) -> funnel_loadtest::procbench::BenchData {
        funnel_loadtest::procbench::BenchData {
            seed: self.seed,
            messages: self.messages,
            contacts: self.contacts,
            tenant: self.tenant.clone(),
            duplicate_share: self.duplicate_share,
            days: 14,
        }
    }
}

async fn pool(url: &str) -> anyhow::Result<sqlx::PgPool> {
    let options = sqlx::postgres::PgPoolOptions::new().max_connections(2);
    Ok(funnel_runtime::db::connect(url, options).await?)
}

/// A pool on the live generation's tables, as the processor writes them (the public names are
/// views on them: docs/replay.md).
async fn live_pool(url: &str) -> anyhow::Result<sqlx::PgPool> {
    let schema: String = sqlx::query_scalar("SELECT funnel_live_schema()")
        .fetch_one(&pool(url).await?)
        .await
        .context("looking up the live generation (are the migrations applied?)")?;
    let options = sqlx::postgres::PgPoolOptions::new().max_connections(2);
    Ok(funnel_runtime::db::connect_in_schema(url, &schema, options).await?)
}

#[derive(clap::Args)]
struct SendArgs {
    #[arg(long, value_enum, default_value = "batch")]
    mode: Mode,
    /// Base URL of funnel-ingest
    #[arg(
        long,
        env = "FUNNEL_INGEST_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// Bearer token for every tenant (scope `ingest`)
    #[arg(long, env = "FUNNEL_TOKEN")]
    token: Option<String>,
    /// Bearer token of one tenant, as TENANT=TOKEN (repeatable)
    #[arg(long = "tenant-token")]
    tenant_tokens: Vec<String>,
    /// Messages per batch request
    #[arg(long, default_value_t = 200)]
    batch_size: usize,
    /// Requests per second (0: as fast as the concurrency allows)
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Stop starting requests after this many seconds
    #[arg(long)]
    duration: Option<u64>,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Retries of a request answered 503 or not answered
    #[arg(long, default_value_t = 10)]
    retries: u32,
    /// Where Kafka and its registry are, for `--mode kafka`
    #[command(flatten)]
    kafka: KafkaSettings,
}

impl SendArgs {
    fn options(&self) -> anyhow::Result<SendOptions> {
        let mut tokens = BTreeMap::new();
        if let Some(t) = &self.token {
            tokens.insert("*".to_string(), t.clone());
        }
        for tt in &self.tenant_tokens {
            let (tenant, token) = tt
                .split_once('=')
                .with_context(|| format!("--tenant-token {tt:?}: expected TENANT=TOKEN"))?;
            tokens.insert(tenant.to_string(), token.to_string());
        }
        let target = match self.mode {
            Mode::Http => Target::Http {
                url: self.url.clone(),
            },
            Mode::Batch => Target::Batch {
                url: self.url.clone(),
                size: self.batch_size,
            },
            Mode::Kafka => Target::Kafka(Box::new(self.kafka.clone())),
        };
        if !matches!(self.mode, Mode::Kafka) && tokens.is_empty() {
            anyhow::bail!("sending over HTTP needs --token or --tenant-token (scope ingest)");
        }
        Ok(SendOptions {
            target,
            tokens,
            rate: self.rate,
            duration: self.duration.map(Duration::from_secs),
            concurrency: self.concurrency,
            retries: self.retries,
            progress: std::io::stderr().is_terminal(),
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Write a dataset: traffic.jsonl (in send order), rules.csv, expected.jsonl and
    /// expected-stages.json (the reference fold's rows), config.json
    Generate {
        #[command(flatten)]
        gen: GenArgs,
        /// Rules the texts are classified with (contract CSV); default: the rule set every
        /// new database starts with
        #[arg(long)]
        rules: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Send a dataset's traffic; prints rates, latency percentiles and status counts
    Send {
        #[arg(long)]
        dataset: PathBuf,
        #[command(flatten)]
        send: SendArgs,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Compare funnel_contacts and funnel_stage_events with a dataset's expected rows; exits
    /// non-zero on any difference
    Verify {
        #[arg(long)]
        dataset: PathBuf,
        #[command(flatten)]
        database: DatabaseSettings,
        /// Keep comparing for up to this many seconds while the processor catches up
        #[arg(long, default_value_t = 0)]
        wait: u64,
        /// Differences to print
        #[arg(long, default_value_t = 20)]
        show: usize,
    },
    /// Generate recent traffic for N contacts and send it to the ingest API (`make up`)
    Demo {
        #[arg(
            long,
            env = "FUNNEL_INGEST_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        url: String,
        /// Bearer token with the `ingest` scope
        #[arg(long, env = "FUNNEL_TOKEN")]
        token: String,
        #[arg(long, default_value_t = 200)]
        contacts: u32,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Where the dataset is written (for `verify`)
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the funnel report (`GET /v1/reports/funnel`) as a table
    Report {
        #[arg(
            long,
            env = "FUNNEL_INGEST_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        url: String,
        /// Bearer token with the `read` scope
        #[arg(long, env = "FUNNEL_TOKEN")]
        token: String,
        /// hour, day, week, month, channel or campaign
        #[arg(long, default_value = "week")]
        group_by: String,
        /// First day, YYYY-MM-DD (default: 29 days before `to`)
        #[arg(long)]
        from: Option<String>,
        /// Last day, YYYY-MM-DD, included (default: today)
        #[arg(long)]
        to: Option<String>,
        /// IANA time zone (default: the tenant's)
        #[arg(long)]
        tz: Option<String>,
        /// Count conversions only within this many days of the lead
        #[arg(long)]
        window_days: Option<u32>,
    },
    /// Closed-loop HTTP load for benchmarks; prints a JSON report
    HttpBench {
        /// Full URL to POST to (…/v1/messages or …/v1/messages/batch)
        #[arg(long)]
        url: String,
        #[arg(long, env = "FUNNEL_TOKEN")]
        token: Option<String>,
        /// Post Meta-shaped WhatsApp payloads of `--batch` messages to a channel's webhook
        /// (`--url`), signed with this app secret, instead of chat message bodies
        #[arg(long, requires = "phone_number_id")]
        whatsapp_app_secret: Option<String>,
        /// The channel's phone number id, for `--whatsapp-app-secret`
        #[arg(long)]
        phone_number_id: Option<String>,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds
        #[arg(long, default_value_t = 15)]
        duration: u64,
        /// Messages per request (1: single-message bodies)
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Distinct phones the messages cycle over (0: a new phone for every message)
        #[arg(long, default_value_t = 50_000)]
        contacts: u64,
    },
    /// Processor benchmark: produce generated records to a topic; prints a JSON report
    BenchPrefill {
        #[command(flatten)]
        data: BenchDataArgs,
        #[command(flatten)]
        kafka: KafkaSettings,
    },
    /// Processor benchmark, the ceiling for writing: the same rows in batched UNNEST upserts
    /// straight into PostgreSQL; prints a JSON report
    BenchUpsert {
        #[command(flatten)]
        data: BenchDataArgs,
        #[command(flatten)]
        database: DatabaseSettings,
        /// Records per transaction (the processor's FUNNEL_BATCH_MAX)
        #[arg(long, default_value_t = 2000)]
        batch: usize,
    },
    /// Processor benchmark, the seeds' way: one upsert and one offset commit per message;
    /// prints a JSON report
    BenchNaive {
        #[command(flatten)]
        kafka: KafkaSettings,
        #[command(flatten)]
        database: DatabaseSettings,
        #[arg(long)]
        group: String,
        /// Seconds to run, from the first message
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = u64::MAX)]
        limit: u64,
    },
    /// Processor benchmark: compare the tenant's totals in the tables with what the records
    /// must produce; exits non-zero on any difference
    BenchCheck {
        #[command(flatten)]
        data: BenchDataArgs,
        #[command(flatten)]
        database: DatabaseSettings,
    },
    /// The baseline endpoint: parses the same JSON, answers 202, no Kafka
    BareEndpoint {
        #[arg(long, default_value = "127.0.0.1:18080")]
        addr: String,
    },
}

async fn send_dataset(
    dataset: &std::path::Path,
    opts: &SendOptions,
    json: bool,
) -> anyhow::Result<()> {
    let traffic = funnel_loadtest::read_traffic(dataset)?;
    let report = funnel_loadtest::send::send(&traffic, opts).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.summary());
    }
    if report.failed > 0 || report.unexpected > 0 {
        anyhow::bail!(
            "{} messages failed and {} were not answered as the dataset expects",
            report.failed,
            report.unexpected
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Generate { gen, rules, out } => {
            let rules = match rules {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
                None => generate::DEFAULT_RULES_CSV.to_string(),
            };
            let traffic = generate::generate(&gen.config());
            let expected = funnel_loadtest::write_dataset(&out, &traffic, &rules)?;
            println!(
                "{}: {} messages ({} to be refused) for {} contacts of {} tenant(s); expected rows in {}",
                out.display(),
                traffic.messages.len(),
                traffic
                    .messages
                    .iter()
                    .filter(|m| m.expect == generate::Expect::Reject)
                    .count(),
                expected.rows.len(),
                gen.tenants,
                funnel_loadtest::EXPECTED_FILE
            );
        }
        Command::Send {
            dataset,
            send,
            json,
        } => send_dataset(&dataset, &send.options()?, json).await?,
        Command::Verify {
            dataset,
            database,
            wait,
            show,
        } => {
            let expected = funnel_loadtest::read_expected(&dataset)?;
            let tenants = funnel_loadtest::tenants(&funnel_loadtest::read_traffic(&dataset)?);
            let pool = pool(&database.url).await?;
            let deadline = std::time::Instant::now() + Duration::from_secs(wait);
            loop {
                let actual = funnel_loadtest::verify::load(&pool, &tenants).await?;
                let report = funnel_loadtest::verify::compare(&expected, &actual);
                if report.is_equal() || std::time::Instant::now() >= deadline {
                    print!("{}", report.render(show));
                    if !report.is_equal() {
                        std::process::exit(1);
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Command::Demo {
            url,
            token,
            contacts,
            seed,
            out,
        } => {
            // Recent dates, so the funnel shows this month; every event (bookings and payments
            // come up to two weeks after the first message) stays in the past.
            // The start (and the seed) move by whole days, so `make up` twice on one day sends
            // the same events.
            let days = 14;
            let today = chrono::Utc::now().date_naive();
            let start = (today - chrono::Days::new(u64::from(days) + 14))
                .and_time(chrono::NaiveTime::MIN)
                .and_utc()
                .fixed_offset();
            let config = GenConfig {
                seed: seed.wrapping_add(chrono::Datelike::num_days_from_ce(&today) as u64),
                contacts,
                start,
                days,
                invalid_share: 0.0,
                ..GenConfig::default()
            };
            let traffic = generate::generate(&config);
            let dir = out.unwrap_or_else(|| std::env::temp_dir().join("funnel-demo"));
            funnel_loadtest::write_dataset(&dir, &traffic, generate::DEFAULT_RULES_CSV)?;
            let opts = SendOptions {
                target: Target::Http { url },
                tokens: BTreeMap::from([("*".to_string(), token)]),
                rate: 0.0,
                duration: None,
                concurrency: 8,
                retries: 10,
                progress: std::io::stderr().is_terminal(),
            };
            print!("demo traffic ({}): ", dir.display());
            send_dataset(&dir, &opts, false).await?;
        }
        Command::Report {
            url,
            token,
            group_by,
            from,
            to,
            tz,
            window_days,
        } => {
            let text =
                funnel_loadtest::report::fetch_and_render(&funnel_loadtest::report::ReportArgs {
                    url: &url,
                    token: &token,
                    group_by: &group_by,
                    from: from.as_deref(),
                    to: to.as_deref(),
                    tz: tz.as_deref(),
                    window_days,
                })
                .await?;
            print!("{text}");
        }
        Command::HttpBench {
            url,
            token,
            whatsapp_app_secret,
            phone_number_id,
            concurrency,
            duration,
            batch,
            contacts,
        } => {
            use funnel_loadtest::bench::Target;
            let target = match (whatsapp_app_secret, phone_number_id) {
                (Some(app_secret), Some(phone_number_id)) => Target::WhatsApp {
                    app_secret,
                    phone_number_id,
                },
                _ => Target::Api { token },
            };
            let report = funnel_loadtest::bench::run(
                url,
                target,
                concurrency,
                std::time::Duration::from_secs(duration),
                batch,
                contacts,
            )
            .await?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::BenchPrefill { data, kafka } => {
            let report = funnel_loadtest::procbench::prefill(&data.data(), &kafka).await?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::BenchUpsert {
            data,
            database,
            batch,
        } => {
            let pool = live_pool(&database.url).await?;
            let report =
                funnel_loadtest::procbench::bare_upsert(&data.data(), &pool, batch).await?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::BenchNaive {
            kafka,
            database,
            group,
            seconds,
            limit,
        } => {
            let pool = live_pool(&database.url).await?;
            let report = funnel_loadtest::procbench::naive_consumer(
                &kafka,
                &group,
                &pool,
                Duration::from_secs(seconds),
                limit,
            )
            .await?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::BenchCheck { data, database } => {
            let data = data.data();
            let expected = funnel_loadtest::procbench::tally(
                &data,
                &funnel_loadtest::procbench::default_classifier()?,
            );
            let actual =
                funnel_loadtest::procbench::table_totals(&pool(&database.url).await?, &data.tenant)
                    .await?;
            let diffs = funnel_loadtest::procbench::compare(&expected, &actual);
            println!(
                "{}",
                serde_json::json!({"expected": expected, "actual": actual, "equal": diffs.is_empty()})
            );
            if !diffs.is_empty() {
                anyhow::bail!("the tables differ from the records: {}", diffs.join("; "));
            }
        }
        Command::BareEndpoint { addr } => funnel_loadtest::bench::bare_endpoint(addr).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn configuration_reference_is_current() {
        funnel_runtime::clidoc::check("funnel-loadtest", &Cli::command())
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
