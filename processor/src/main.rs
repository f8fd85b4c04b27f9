/// mimalloc instead of glibc's allocator: the processor allocates per message (decoded
/// strings, contact states), and glibc's malloc was a tenth of its time (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

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
    /// Classify history again under the current rules into a new generation beside the live
    /// one, then switch to it (docs/replay.md)
    Replay(ReplayArgs),
    /// The live generation's offsets: the sink's (PostgreSQL) and Kafka's
    Offsets {
        #[command(subcommand)]
        action: OffsetsAction,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct ReplayArgs {
    #[command(subcommand)]
    action: Option<ReplayAction>,
    /// Where classification starts again: `earliest` (all of the topic), an RFC 3339 time
    /// (records that reached Kafka from then on; earlier ones keep their classification), or
    /// `kafka` (the offsets another tool committed for the consumer group)
    #[arg(long)]
    from: Option<funnel_processor::replay::ReplayFrom>,
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
        Command::Replay(args) => replay(&cli.settings, args).await,
        Command::Offsets { action } => offsets(&cli.settings, action).await,
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

async fn replay_pool(settings: &funnel_processor::Settings) -> anyhow::Result<sqlx::PgPool> {
    let pool = funnel_processor::connect(&settings.database_url).await?;
    funnel_processor::MIGRATOR.run(&pool).await?;
    Ok(pool)
}

async fn replay(settings: &funnel_processor::Settings, args: ReplayArgs) -> anyhow::Result<()> {
    use funnel_processor::replay as r;
    let pool = replay_pool(settings).await?;
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
        Some(ReplayAction::Switch) => wait_and_switch(settings, &pool).await,
        Some(ReplayAction::Abandon) => {
            let g = r::abandon(settings, &pool).await?;
            println!(
                "generation {} abandoned: its tables and consumer group are dropped; the live generation is unchanged",
                g.number
            );
            Ok(())
        }
        None => {
            let Some(from) = args.from else {
                anyhow::bail!(
                    "say where to classify again from: --from earliest, --from <RFC 3339 time> or --from kafka \
                     (or use a subcommand: status, diff, switch, abandon)"
                );
            };
            let plan = r::plan(settings, &pool, &from).await?;
            print_plan(&plan);
            if args.dry_run {
                let c = r::changes(settings, &pool, &plan).await?;
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
            let g = r::create(settings, &pool, &plan, &by).await?;
            println!(
                "generation {} created (schema {}, consumer group {}); the running processors build it now",
                g.number,
                g.schema,
                g.consumer_group(&settings.consumer_group)
            );
            if from == r::ReplayFrom::Kafka {
                r::sync_kafka_offsets(settings, &pool).await?;
                println!(
                    "the consumer group's offsets in Kafka are Funnel's again; start the processors to build generation {}",
                    g.number
                );
            }
            wait_until_caught_up(settings, &pool, g.number).await?;
            complete(&pool, g.number).await?;
            let d = r::diff(settings, &pool, args.samples).await?;
            print_diff(&d);
            if args.review {
                println!(
                    "generation {} has caught up and waits for review: `funnel-processor replay switch` makes it live, \
                     `funnel-processor replay abandon` drops it",
                    g.number
                );
                return Ok(());
            }
            wait_and_switch(settings, &pool).await
        }
    }
}

fn print_plan(plan: &funnel_processor::replay::Plan) {
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

async fn wait_until_caught_up(
    settings: &funnel_processor::Settings,
    pool: &sqlx::PgPool,
    number: i32,
) -> anyhow::Result<()> {
    use funnel_processor::replay as r;
    let started = std::time::Instant::now();
    let group = format!("{}.gen-{number}", settings.consumer_group);
    let mut last_print: Option<std::time::Instant> = None;
    let mut idle_since: Option<std::time::Instant> = None;
    loop {
        let Some(p) = r::progress(settings, pool).await? else {
            anyhow::bail!(
                "generation {number} is no longer being built (switched or abandoned elsewhere)"
            );
        };
        if p.caught_up() {
            println!(
                "generation {number} has caught up: {} records read in {:.1} s",
                p.read(),
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if r::members(settings, &group).await.unwrap_or(0) == 0 {
            let since = *idle_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > Duration::from_secs(20)
                && last_print.is_none_or(|t| t.elapsed() > Duration::from_secs(5))
            {
                println!(
                    "no funnel-processor is building generation {number} (none consumes as {group}): the running \
                     processors build it; start one (make up), or stop here and come back with `replay status`"
                );
            }
        } else {
            idle_since = None;
        }
        if last_print.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            println!(
                "generation {number}: {} of {} records read, {} behind the live generation ({:.0} s)",
                p.read(),
                p.end(),
                p.behind_live(),
                started.elapsed().as_secs_f64()
            );
            last_print = Some(std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn complete(pool: &sqlx::PgPool, number: i32) -> anyhow::Result<()> {
    if let Some(took) = funnel_processor::replay::complete(pool).await? {
        println!(
            "generation {number}: indexes, funnel_daily and its triggers built in {:.1} s",
            took.as_secs_f64()
        );
    }
    Ok(())
}

async fn wait_and_switch(
    settings: &funnel_processor::Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    use funnel_processor::replay as r;
    let Some(building) = funnel_processor::generation::building(pool).await? else {
        anyhow::bail!("no replay is under way: nothing to switch to");
    };
    wait_until_caught_up(settings, pool, building.number).await?;
    complete(pool, building.number).await?;
    loop {
        match r::switch(settings, pool).await? {
            r::Switch::Switched {
                from,
                to,
                from_group,
            } => {
                println!(
                    "switched: generation {to} is live (the views funnel_contacts, funnel_stage_events and funnel_daily \
                     point at it); generation {from} is retired and its schema is kept until the next replay"
                );
                let old_group = from_group;
                if !r::retire_group(settings, &old_group).await? {
                    println!(
                        "note: a processor still consumes as {old_group}; its consumer group was not deleted"
                    );
                }
                return Ok(());
            }
            r::Switch::Behind(n) => {
                tracing::debug!(behind = n, "live generation moved on; waiting");
            }
            r::Switch::Busy => println!("the views or the live sink are busy; trying again"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn status(settings: &funnel_processor::Settings, pool: &sqlx::PgPool) -> anyhow::Result<()> {
    type Time = Option<chrono::DateTime<chrono::Utc>>;
    let rows: Vec<(i32, String, String, Option<String>, Time, Time)> = sqlx::query_as(
        "SELECT generation, schema_name, state, replay_from, created_at, switched_at
               FROM funnel_generations ORDER BY generation",
    )
    .fetch_all(pool)
    .await?;
    println!(
        "{:>10} {:<16} {:<10} {:<28} {:<22} {:<22}",
        "generation", "schema", "state", "replay from", "created", "switched"
    );
    let t = |x: &Option<chrono::DateTime<chrono::Utc>>| {
        x.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| "-".into())
    };
    for (n, schema, state, from, created, switched) in &rows {
        println!(
            "{:>10} {:<16} {:<10} {:<28} {:<22} {:<22}",
            n,
            schema,
            state,
            from.as_deref().unwrap_or("-"),
            t(created),
            t(switched)
        );
    }
    if let Some(p) = funnel_processor::replay::progress(settings, pool).await? {
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

fn print_diff(d: &funnel_processor::replay::Diff) {
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

async fn offsets(
    settings: &funnel_processor::Settings,
    action: OffsetsAction,
) -> anyhow::Result<()> {
    use funnel_processor::replay as r;
    let pool = replay_pool(settings).await?;
    let (group, rows) = match action {
        OffsetsAction::Show => r::offsets(settings, &pool).await?,
        OffsetsAction::Sync => {
            let rows = r::sync_kafka_offsets(settings, &pool).await?;
            println!("the consumer group's offsets in Kafka now equal the sink's");
            (String::new(), rows)
        }
    };
    if !group.is_empty() {
        println!("consumer group {group}, topic {}", settings.topic_messages);
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
