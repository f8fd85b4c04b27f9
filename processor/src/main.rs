/// mimalloc instead of glibc's allocator: the processor allocates per message (decoded
/// strings, contact states), and glibc's malloc was a tenth of its time (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use funnel_processor::replay::{self as r, ReplayFrom, Waiting};
use funnel_processor::Settings;
use tokio_util::sync::CancellationToken;

/// Funnel's stream processor: chat messages in, one funnel row per contact out, exactly once.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Consume and process (the default)
    Run,
    /// Apply the database migrations of sql/ and exit (as the database owner: the services'
    /// roles may not create anything, docs/security.md)
    Migrate,
    /// The dead-letter topic: list entries, or send them back to their source topic
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Classify history again under the current rules into a new generation beside the live
    /// one, then switch to it (docs/replay.md)
    Replay(ReplayArgs),
    /// The live generation's offsets: the sink's (PostgreSQL) and Kafka's
    Offsets {
        #[command(subcommand)]
        action: OffsetsAction,
    },
    /// Conversions sent back to Meta (docs/channels.md): list them, or retry parked ones
    Conversions {
        #[command(subcommand)]
        action: ConversionsAction,
    },
}

#[derive(Subcommand)]
enum ConversionsAction {
    /// The newest conversions: state (pending, sent, parked), attempts and the last error
    List {
        /// Only those in this state: pending, sent or parked
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// One JSON object per line instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Send parked conversions again (the given ids, or every parked one), attempts counted
    /// afresh
    Retry {
        /// Conversion ids (`cv_...`); none: every parked conversion
        ids: Vec<String>,
    },
}

// `--from` and its options go with `replay` itself, not with a subcommand: checked in
// `replay`, since clap's `args_conflicts_with_subcommands` would also refuse the global flags
// before a subcommand.
#[derive(clap::Args)]
struct ReplayArgs {
    #[command(subcommand)]
    action: Option<ReplayAction>,
    /// Where classification starts again: `earliest` (all of the topic), an RFC 3339 time
    /// (records that reached Kafka from then on; earlier ones keep their classification), or
    /// `kafka` (the offsets another tool committed for the consumer group)
    #[arg(long)]
    from: Option<ReplayFrom>,
    /// Print the plan (partitions, offsets) and what the current rules would change, then stop
    #[arg(long)]
    dry_run: bool,
    /// Build the new generation and print the comparison, but leave the switch to
    /// `replay switch` (or `replay abandon`)
    #[arg(long)]
    review: bool,
    /// Phones to show per kind of change
    #[arg(long, default_value_t = 5)]
    samples: i64,
}

#[derive(Subcommand)]
enum ReplayAction {
    /// The generations, and the progress of the one being built
    Status,
    /// What the replay changed: contacts and revenue per stage and lead channel, live against
    /// new, and phones that moved
    Diff {
        /// Phones to show per kind of change
        #[arg(long, default_value_t = 10)]
        samples: i64,
        /// One JSON document instead of tables
        #[arg(long)]
        json: bool,
    },
    /// Switch to the generation being built once it has caught up (waits for it)
    Switch,
    /// Give up the generation being built: drop its tables and consumer group
    Abandon,
}

#[derive(Subcommand)]
enum OffsetsAction {
    /// Per partition: the log, the sink's offset and the consumer group's offset in Kafka
    Show,
    /// Overwrite the consumer group's offsets in Kafka with the sink's (after a reset made
    /// with another tool that should be undone); the processors must be stopped
    Sync,
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
    let provider = funnel_runtime::telemetry::init("funnel-processor")?;
    // Crash-test hooks (docs/exactly-once.md): inert unless FAILPOINTS names some.
    let _failpoints = std::env::var_os("FAILPOINTS").map(|v| {
        tracing::warn!(failpoints = ?v, "FAILPOINTS is set: this process will crash on purpose");
        fail::FailScenario::setup()
    });
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let token = CancellationToken::new();
            funnel_runtime::telemetry::shutdown_on_signal(token.clone());
            funnel_processor::run(cli.settings, token).await
        }
        Command::Dlq { action } => dlq(&cli.settings, action).await,
        Command::Replay(args) => replay(&cli.settings, args).await,
        Command::Offsets { action } => offsets(&cli.settings, action).await,
        Command::Conversions { action } => conversions(&cli.settings, action).await,
        Command::Migrate => migrate(&cli.settings).await,
    };
    if let Some(p) = provider {
        let _ = p.shutdown();
    }
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "funnel-processor failed");
    }
    result
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let pool = settings
        .database
        .connect(1, std::time::Duration::from_secs(10))
        .await?;
    funnel_runtime::db::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}

async fn conversions(settings: &Settings, action: ConversionsAction) -> anyhow::Result<()> {
    use funnel_processor::conversions::store;
    let pool = funnel_processor::connect(settings).await?;
    match action {
        ConversionsAction::List { state, limit, json } => {
            if let Some(s) = &state {
                anyhow::ensure!(
                    ["pending", "sent", "parked"].contains(&s.as_str()),
                    "--state {s}: expected pending, sent or parked"
                );
            }
            let rows = store::list(&pool, state.as_deref(), limit).await?;
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
                return Ok(());
            }
            println!(
                "{:<36} {:<8} {:<13} {:<22} {:>14} {:<8} {:>8} last error",
                "id", "state", "event", "event time", "value", "tenant", "attempts"
            );
            for r in &rows {
                println!(
                    "{:<36} {:<8} {:<13} {:<22} {:>14} {:<8} {:>8} {}",
                    r.conversion_id,
                    r.state,
                    r.event_name,
                    r.event_time.format("%Y-%m-%dT%H:%M:%SZ"),
                    r.value.map(|v| v.to_string()).unwrap_or_default(),
                    r.tenant,
                    r.attempts,
                    r.last_error.as_deref().unwrap_or("")
                );
            }
        }
        ConversionsAction::Retry { ids } => {
            let n = store::unpark(&pool, &ids).await?;
            println!("{n} parked conversion(s) to be sent again");
        }
    }
    Ok(())
}

async fn dlq(settings: &Settings, action: DlqAction) -> anyhow::Result<()> {
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

async fn replay(settings: &Settings, args: ReplayArgs) -> anyhow::Result<()> {
    if args.action.is_some() && (args.from.is_some() || args.dry_run || args.review) {
        anyhow::bail!(
            "--from, --dry-run and --review start a replay (`funnel-processor replay --from ...`); \
             they do not go with status, diff, switch or abandon"
        );
    }
    let pool = funnel_processor::connect(settings).await?;
    match args.action {
        Some(ReplayAction::Status) => status(settings, &pool).await,
        Some(ReplayAction::Diff { samples, json }) => {
            let d = r::diff(settings, &pool, samples).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print_diff(&d);
            }
            Ok(())
        }
        Some(ReplayAction::Switch) => switch(settings, &pool).await,
        Some(ReplayAction::Abandon) => {
            let g = r::abandon(settings, &pool).await?;
            println!(
                "generation {} abandoned: its tables and consumer group are dropped; the live generation is unchanged",
                g.number
            );
            Ok(())
        }
        None => {
            let Some(from) = args.from.clone() else {
                anyhow::bail!(
                    "say where to classify again from: --from earliest, --from <RFC 3339 time> or --from kafka \
                     (or use a subcommand: status, diff, switch, abandon)"
                );
            };
            replay_from(settings, &pool, &from, &args).await
        }
    }
}

/// `replay --from`: plan, then a dry run or the whole replay up to the switch (or the review).
async fn replay_from(
    settings: &Settings,
    pool: &sqlx::PgPool,
    from: &ReplayFrom,
    args: &ReplayArgs,
) -> anyhow::Result<()> {
    let plan = r::plan(settings, pool, from).await?;
    print_plan(&plan);
    if args.dry_run {
        let c = r::changes(settings, pool, &plan).await?;
        println!(
            "under the current rules, {} of the {} records from the boundaries on would be classified differently \
             ({} poison records not compared); {} of the {} contacts with records there would change",
            c.changed_records, c.records, c.poison, c.contacts_changed, c.contacts_in_range
        );
        for (kind, n) in &c.by_change {
            println!("  {kind:<20} {n:>10} records");
        }
        println!("dry run: nothing was created");
        return Ok(());
    }
    let by = format!(
        "funnel-processor replay --from {from} ({})",
        std::env::var("USER").unwrap_or_else(|_| "unknown user".into())
    );
    let g = r::create(settings, pool, &plan, &by).await?;
    println!(
        "generation {} created (schema {}, consumer group {}); the running processors build it now",
        g.number,
        g.schema,
        g.consumer_group(&settings.consumer_group)
    );
    if *from == ReplayFrom::Kafka {
        r::sync_kafka_offsets(settings, pool).await?;
        println!(
            "the consumer group's offsets in Kafka are Funnel's again; start the processors to build generation {}",
            g.number
        );
    }
    r::wait_until_caught_up(settings, pool, g.number, print_waiting).await?;
    if let Some(took) = r::complete(pool).await? {
        print_waiting(Waiting::Completed {
            generation: g.number,
            took,
        });
    }
    print_diff(&r::diff(settings, pool, args.samples).await?);
    if args.review {
        println!(
            "generation {} has caught up and waits for review: `funnel-processor replay switch` makes it live, \
             `funnel-processor replay abandon` drops it",
            g.number
        );
        return Ok(());
    }
    switch(settings, pool).await
}

fn print_plan(plan: &r::Plan) {
    println!(
        "replay plan: topic {}, from {}; live generation {} (schema {}, group {})",
        plan.topic, plan.from, plan.live_generation, plan.live_schema, plan.live_group
    );
    println!(
        "{:>9} {:>12} {:>12} {:>12} {:>15} {:>14}",
        "partition", "log start", "log end", "sink at", "classify from", "reclassified"
    );
    for p in &plan.partitions {
        println!(
            "{:>9} {:>12} {:>12} {:>12} {:>15} {:>14}",
            p.partition,
            p.low,
            p.high,
            p.live_offset.map_or("-".into(), |o| o.to_string()),
            p.reclassify_from,
            (p.high - p.reclassify_from).max(0)
        );
    }
    println!(
        "the new generation re-reads {} records and classifies {} of them under the current rules; \
         the others keep the classification the live generation committed",
        plan.records(),
        plan.reclassified()
    );
}

fn print_waiting(w: Waiting<'_>) {
    match w {
        Waiting::Progress(p, took) => println!(
            "generation {}: {} of {} records read, {} behind the live generation ({:.0} s)",
            p.building_generation,
            p.read(),
            p.end(),
            p.behind_live(),
            took.as_secs_f64()
        ),
        Waiting::NoBuilder { generation, group } => println!(
            "no funnel-processor is building generation {generation} (none consumes as {group}): the running \
             processors build it; start one (make up), or stop here and come back with `replay status`"
        ),
        Waiting::CaughtUp(p, took) => println!(
            "generation {} has caught up: {} records read in {:.1} s",
            p.building_generation,
            p.read(),
            took.as_secs_f64()
        ),
        Waiting::Completed { generation, took } => println!(
            "generation {generation}: indexes, funnel_daily and its triggers built in {:.1} s",
            took.as_secs_f64()
        ),
        Waiting::Busy => println!("the views or the live sink are busy; trying again"),
    }
}

/// Waits for the generation being built, completes it and switches to it.
async fn switch(settings: &Settings, pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let (s, group_deleted) = r::wait_and_switch(settings, pool, print_waiting).await?;
    println!(
        "switched: generation {} is live (the views funnel_contacts, funnel_stage_events and funnel_daily \
         point at it); generation {} is retired and its schema is kept until the next replay",
        s.to, s.from
    );
    if !group_deleted {
        println!(
            "note: a processor still consumes as {}; its consumer group was not deleted",
            s.from_group
        );
    }
    Ok(())
}

async fn status(settings: &Settings, pool: &sqlx::PgPool) -> anyhow::Result<()> {
    println!(
        "{:>10} {:<16} {:<10} {:<28} {:<22} {:<22}",
        "generation", "schema", "state", "replay from", "created", "switched"
    );
    let t = |x: &Option<chrono::DateTime<chrono::Utc>>| {
        x.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| "-".into())
    };
    for g in r::generations(pool).await? {
        println!(
            "{:>10} {:<16} {:<10} {:<28} {:<22} {:<22}",
            g.generation,
            g.schema_name,
            g.state,
            g.replay_from.as_deref().unwrap_or("-"),
            t(&g.created_at),
            t(&g.switched_at)
        );
    }
    if let Some(p) = r::progress(settings, pool).await? {
        println!(
            "generation {} is being built: {} of {} records read, {} behind live generation {}{}",
            p.building_generation,
            p.read(),
            p.end(),
            p.behind_live(),
            p.live_generation,
            if p.caught_up() {
                " (caught up: `replay diff`, then `replay switch` or `replay abandon`)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn print_diff(d: &r::Diff) {
    println!(
        "generation {} (live) against generation {} (new){}",
        d.live_generation,
        d.new_generation,
        if d.caught_up {
            ""
        } else {
            " - the new one has not caught up yet: contacts it has not read count as missing"
        }
    );
    println!(
        "{:<12} {:<16} {:>12} {:>12} {:>10} {:>20} {:>20} {:>18}",
        "stage", "lead channel", "contacts", "new", "change", "revenue", "new revenue", "change"
    );
    for r in &d.stages {
        println!(
            "{:<12} {:<16} {:>12} {:>12} {:>+10} {:>20} {:>20} {:>18}",
            r.stage,
            r.channel.as_deref().unwrap_or("(no lead)"),
            r.live_contacts,
            r.new_contacts,
            r.new_contacts - r.live_contacts,
            r.live_revenue,
            r.new_revenue,
            r.new_revenue - r.live_revenue
        );
    }
    if d.moved.is_empty() {
        println!("no contact's funnel changed");
    }
    for m in &d.moved {
        println!(
            "{:<28} {:>10} contacts  e.g. {}",
            m.change,
            m.contacts,
            m.samples.join(", ")
        );
    }
}

async fn offsets(settings: &Settings, action: OffsetsAction) -> anyhow::Result<()> {
    let pool = funnel_processor::connect(settings).await?;
    let (group, rows) = match action {
        OffsetsAction::Show => r::offsets(settings, &pool).await?,
        OffsetsAction::Sync => {
            let rows = r::sync_kafka_offsets(settings, &pool).await?;
            println!("the consumer group's offsets in Kafka now equal the sink's");
            (String::new(), rows)
        }
    };
    if !group.is_empty() {
        println!(
            "consumer group {group}, topic {}",
            settings.kafka.topic_messages
        );
    }
    println!(
        "{:>9} {:>12} {:>12} {:>12} {:>12} {:<10}",
        "partition", "log start", "log end", "sink at", "kafka at", "kafka set by"
    );
    for o in &rows {
        println!(
            "{:>9} {:>12} {:>12} {:>12} {:>12} {:<10}",
            o.partition,
            o.low,
            o.high,
            o.sink.map_or("-".into(), |x| x.to_string()),
            o.kafka.map_or("-".into(), |x| x.to_string()),
            if o.kafka.is_none() {
                "-"
            } else if o.kafka_by_funnel {
                "funnel"
            } else {
                "another tool"
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn configuration_reference_is_current() {
        funnel_runtime::clidoc::check("funnel-processor", &Cli::command())
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn flags_may_follow_a_subcommand() {
        let cli = Cli::try_parse_from([
            "funnel-processor",
            "replay",
            "--database-url",
            "postgres://x/y",
            "status",
            "--consumer-group",
            "g",
        ])
        .expect("parses");
        assert_eq!(cli.settings.database.url, "postgres://x/y");
        assert_eq!(cli.settings.consumer_group, "g");
        assert!(matches!(
            cli.command,
            Some(Command::Replay(ReplayArgs {
                action: Some(ReplayAction::Status),
                ..
            }))
        ));
    }
}
