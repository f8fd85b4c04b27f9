//! `funnel-processor replay` (docs/replay.md): classify history again under the current rules
//! into a new generation beside the live one, compare the two, and switch the public views to
//! the new one in one transaction. The running processors do the work: each serves every
//! generation that is live or building. This module plans, creates, watches, compares,
//! switches and abandons; it also checks the live consumer group's Kafka offsets for resets
//! made by other tools.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;

use crate::generation::{self, ident, Boundaries, Generation};
use crate::pipeline::{commit_metadata, COMMIT_METADATA_PREFIX};
use crate::settings::Settings;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Where a replay starts classifying again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayFrom {
    /// Every record still in the topic.
    Earliest,
    /// Records from the offsets another tool committed for the live consumer group
    /// (`kafka-consumer-groups --reset-offsets`).
    Kafka,
    /// Records that reached Kafka at or after this time (their Kafka timestamp).
    Time(DateTime<Utc>),
}

impl FromStr for ReplayFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "earliest" => Ok(Self::Earliest),
            "kafka" => Ok(Self::Kafka),
            _ => DateTime::parse_from_rfc3339(s)
                .map(|t| Self::Time(t.with_timezone(&Utc)))
                .map_err(|e| {
                    format!(
                        "expected `earliest`, `kafka` or an RFC 3339 time such as 2026-11-20T00:00:00+07:00 ({e})"
                    )
                }),
        }
    }
}

impl std::fmt::Display for ReplayFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Earliest => f.write_str("earliest"),
            Self::Kafka => f.write_str("kafka"),
            Self::Time(t) => f.write_str(&t.to_rfc3339()),
        }
    }
}

/// One partition of a replay plan.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionPlan {
    pub partition: i32,
    /// The first offset still in the log, and the end of the log, when planned.
    pub low: i64,
    pub high: i64,
    /// Where the live generation's sink stands (None: it never wrote this partition), and the
    /// first offset it applied.
    pub live_offset: Option<i64>,
    pub live_first: Option<i64>,
    /// The live consumer group's committed offset in Kafka, and whether Funnel committed it.
    pub kafka_offset: Option<i64>,
    pub kafka_ours: bool,
    /// From this offset on, records are classified under the current rules.
    pub reclassify_from: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub live_generation: i32,
    pub live_schema: String,
    pub live_group: String,
    pub topic: String,
    pub from: String,
    pub partitions: Vec<PartitionPlan>,
}

impl Plan {
    /// Records the new generation reads: all of the log.
    pub fn records(&self) -> i64 {
        self.partitions.iter().map(|p| p.high - p.low).sum()
    }

    /// Records classified under the current rules.
    pub fn reclassified(&self) -> i64 {
        self.partitions
            .iter()
            .map(|p| (p.high - p.reclassify_from).max(0))
            .sum()
    }

    pub fn boundaries(&self) -> Boundaries {
        Boundaries {
            topic: self.topic.clone(),
            reclassify_from: self
                .partitions
                .iter()
                .map(|p| (p.partition, p.reclassify_from))
                .collect(),
            dead_letters_from: self
                .partitions
                .iter()
                .map(|p| (p.partition, p.live_offset.unwrap_or(p.low)))
                .collect(),
        }
    }
}

fn client_config(settings: &Settings, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.kafka_brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed");
    c
}

fn partitions_of(c: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let md = c
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|e| anyhow::anyhow!("cannot read the metadata of topic {topic}: {e}"))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!("input topic {topic} does not exist (FUNNEL_TOPIC_MESSAGES)")
        })?;
    let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ps.sort_unstable();
    Ok(ps)
}

/// [`committed`], retried while the group coordinator is not available (a new cluster
/// creates `__consumer_offsets` on the first group's request), for up to two minutes.
fn committed_when_available(
    c: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<BTreeMap<i32, (i64, bool)>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut backoff = Duration::from_millis(200);
    loop {
        match committed(c, topic, partitions) {
            Ok(r) => return Ok(r),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "the committed offsets are not available yet; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A group's committed offsets: partition -> (offset, whether Funnel committed it).
fn committed(
    c: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<BTreeMap<i32, (i64, bool)>> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let got = c
        .committed_offsets(tpl, TIMEOUT)
        .map_err(|e| anyhow::anyhow!("cannot read the committed offsets: {e}"))?;
    let mut out = BTreeMap::new();
    for e in got.elements() {
        if let Some(o) = e.offset().to_raw().filter(|o| *o >= 0) {
            out.insert(
                e.partition(),
                (o, e.metadata().starts_with(COMMIT_METADATA_PREFIX)),
            );
        }
    }
    Ok(out)
}

/// A generation's stored offsets: partition -> (next offset, first offset applied).
async fn stored_offsets(
    pool: &PgPool,
    schema: &str,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<i32, (i64, Option<i64>)>, sqlx::Error> {
    let rows: Vec<(i32, i64, Option<i64>)> = sqlx::query_as(&format!(
        "SELECT partition, next_offset, first_offset FROM {}.funnel_sink_offsets
          WHERE consumer_group = $1 AND topic = $2",
        ident(schema)
    ))
    .bind(group)
    .bind(topic)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(p, n, f)| (p, (n, f))).collect())
}

/// Plans a replay: where each partition is re-read from (its start) and where it is
/// classified again. Refuses, naming every offending partition, when the log no longer holds
/// what the live generation applied, when a Kafka reset would skip records, or when a replay
/// is already under way.
pub async fn plan(settings: &Settings, pool: &PgPool, from: &ReplayFrom) -> anyhow::Result<Plan> {
    if let Some(b) = generation::building(pool).await? {
        anyhow::bail!(
            "a replay is already under way: generation {} is being built. `funnel-processor replay status` \
             shows its progress; `funnel-processor replay switch` or `funnel-processor replay abandon` ends it",
            b.number
        );
    }
    if let ReplayFrom::Time(t) = from {
        anyhow::ensure!(
            *t <= Utc::now(),
            "--from {} is in the future: nothing after it has been processed yet",
            t.to_rfc3339()
        );
    }
    let live = generation::live(pool).await?;
    let group = live.consumer_group(&settings.consumer_group);
    let topic = settings.topic_messages.clone();
    let stored = stored_offsets(pool, &live.schema, &group, &topic).await?;
    let (from2, settings2, group2, topic2) =
        (from.clone(), settings.clone(), group.clone(), topic.clone());
    #[allow(clippy::type_complexity)]
    let (parts, kafka, watermarks, times): (
        Vec<i32>,
        BTreeMap<i32, (i64, bool)>,
        BTreeMap<i32, (i64, i64)>,
        BTreeMap<i32, i64>,
    ) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let c: BaseConsumer = client_config(&settings2, &group2).create()?;
        let parts = partitions_of(&c, &topic2)?;
        let kafka = committed(&c, &topic2, &parts)?;
        let mut watermarks = BTreeMap::new();
        for p in &parts {
            watermarks.insert(*p, c.fetch_watermarks(&topic2, *p, TIMEOUT)?);
        }
        let mut times = BTreeMap::new();
        if let ReplayFrom::Time(t) = &from2 {
            let mut tpl = TopicPartitionList::new();
            for p in &parts {
                tpl.add_partition_offset(&topic2, *p, Offset::Offset(t.timestamp_millis()))?;
            }
            for e in c.offsets_for_times(tpl, TIMEOUT)?.elements() {
                // No record at or after the time: the end of the partition.
                let high = watermarks.get(&e.partition()).map_or(0, |w| w.1);
                let o = e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(high);
                times.insert(e.partition(), o);
            }
        }
        Ok((parts, kafka, watermarks, times))
    })
    .await??;

    let mut problems = Vec::new();
    let mut partitions = Vec::new();
    for p in &parts {
        let (low, high) = watermarks[p];
        let (live_offset, live_first) = match stored.get(p) {
            Some((n, f)) => (Some(*n), Some(f.unwrap_or(0))),
            None => (None, None),
        };
        let (kafka_offset, kafka_ours) = match kafka.get(p) {
            Some((o, ours)) => (Some(*o), *ours),
            None => (None, true),
        };
        if let Some(first) = live_first {
            if low > first {
                problems.push(format!(
                    "partition {p}: the log starts at offset {low}, but the live generation applied records from \
                     offset {first}: {} records have expired (topic retention) and cannot be read again",
                    low - first
                ));
            }
        }
        let reclassify_from = match from {
            ReplayFrom::Earliest => low,
            ReplayFrom::Time(_) => times.get(p).copied().unwrap_or(high),
            ReplayFrom::Kafka => match (kafka_offset, kafka_ours) {
                (Some(k), false) => {
                    let sink = live_offset.unwrap_or(low);
                    if k > sink {
                        problems.push(format!(
                            "partition {p}: Kafka's offset {k} is ahead of the sink's {sink}: a reset forward would skip \
                             records the sink never applied, and Funnel does not skip accepted messages; \
                             run `funnel-processor offsets sync` to undo it"
                        ));
                    } else if k < low {
                        problems.push(format!(
                            "partition {p}: Kafka's offset {k} is before the start of the log ({low})"
                        ));
                    }
                    k
                }
                _ => live_offset.unwrap_or(low),
            },
        };
        partitions.push(PartitionPlan {
            partition: *p,
            low,
            high,
            live_offset,
            live_first,
            kafka_offset,
            kafka_ours,
            reclassify_from,
        });
    }
    if *from == ReplayFrom::Kafka && partitions.iter().all(|p| p.kafka_ours) {
        problems.push(format!(
            "the committed offsets of consumer group {group} in Kafka are Funnel's own: nothing was reset. \
             Use --from earliest or --from <RFC 3339 time>"
        ));
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "replay refused:\n  - {}\n(docs/replay.md says what the topic must retain)",
            problems.join("\n  - ")
        );
    }
    Ok(Plan {
        live_generation: live.number,
        live_schema: live.schema,
        live_group: group,
        topic,
        from: from.to_string(),
        partitions,
    })
}

/// What the current rules would change among the records a plan classifies again, compared
/// with what the live generation committed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Changes {
    /// Records read (from the boundaries to the end of the log).
    pub records: u64,
    /// Records that do not decode (they are dead letters; not compared).
    pub poison: u64,
    /// Records classified differently: another set of stages, or another amount.
    pub changed_records: u64,
    /// Distinct contacts with records in the range, and those with a changed record.
    pub contacts_in_range: u64,
    pub contacts_changed: u64,
    /// Changed records by what changed: "lead gained", "transaction lost", "amount changed", ...
    pub by_change: BTreeMap<String, u64>,
}

/// Reads the records a plan classifies again, classifies them under the current rules and
/// compares with the stage events the live generation committed for them (`--dry-run`).
pub async fn changes(settings: &Settings, pool: &PgPool, plan: &Plan) -> anyhow::Result<Changes> {
    let rules = crate::rulebook::Rulebook::load(pool).await?;
    let mut registry = crate::registry::SchemaCache::new(&settings.schema_registry_url)?;
    let consumer: StreamConsumer =
        client_config(settings, &format!("{}-replay-plan", plan.live_group))
            .set("auto.offset.reset", "earliest")
            .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
    for p in &plan.partitions {
        if p.reclassify_from < p.high {
            tpl.add_partition_offset(&plan.topic, p.partition, Offset::Offset(p.reclassify_from))?;
            pending.insert(p.partition, p.high);
        }
    }
    let mut out = Changes::default();
    if pending.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let mut contacts: BTreeSet<(String, String)> = BTreeSet::new();
    let mut changed: BTreeSet<(String, String)> = BTreeSet::new();
    let mut chunk: Vec<funnel_schemas::ChatMessage> = Vec::new();
    loop {
        let done = pending.is_empty();
        if !done {
            let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "no record from {} for 30 s while reading the range",
                        plan.topic
                    )
                })??;
            let Some(&end) = pending.get(&m.partition()) else {
                continue;
            };
            if m.offset() >= end {
                pending.remove(&m.partition());
                continue;
            }
            if m.offset() + 1 >= end {
                pending.remove(&m.partition());
            }
            out.records += 1;
            let decoded = match m.payload().map(funnel_schemas::split_frame) {
                Some(Ok((id, payload))) => match registry.decoder(id).await {
                    Ok(d) => d.decode(payload).ok(),
                    Err(crate::registry::RegistryError::Unknown { .. }) => None,
                    Err(e) => return Err(e.into()),
                },
                _ => None,
            };
            match decoded.filter(|d| crate::pipeline::validate(d, m.key()).is_ok()) {
                Some(d) => chunk.push(d),
                None => out.poison += 1,
            }
        }
        if chunk.len() >= 2000 || (done && !chunk.is_empty()) {
            compare_chunk(
                pool,
                plan,
                &rules,
                &chunk,
                &mut out,
                &mut contacts,
                &mut changed,
            )
            .await?;
            chunk.clear();
        }
        if done {
            break;
        }
    }
    out.contacts_in_range = contacts.len() as u64;
    out.contacts_changed = changed.len() as u64;
    Ok(out)
}

async fn compare_chunk(
    pool: &PgPool,
    plan: &Plan,
    rules: &crate::rulebook::Rulebook,
    chunk: &[funnel_schemas::ChatMessage],
    out: &mut Changes,
    contacts: &mut BTreeSet<(String, String)>,
    changed: &mut BTreeSet<(String, String)>,
) -> anyhow::Result<()> {
    let keys: Vec<(&str, &str, &str)> = chunk
        .iter()
        .map(|m| (m.tenant.as_str(), m.phone.as_str(), m.event_id.as_str()))
        .collect();
    let recorded = crate::sink::recorded_hits(pool, Some(&plan.live_schema), &keys).await?;
    for m in chunk {
        contacts.insert((m.tenant.clone(), m.phone.clone()));
        let now: BTreeMap<&'static str, Decimal> = rules
            .for_tenant(&m.tenant)
            .classify(&m.text, &m.channel, m.direction)
            .iter()
            .map(|h| (h.stage.as_str(), h.value))
            .collect();
        let before: BTreeMap<&'static str, Decimal> = recorded
            .get(&(m.tenant.clone(), m.event_id.clone()))
            .map(|(hits, _)| hits.iter().map(|h| (h.stage.as_str(), h.value)).collect())
            .unwrap_or_default();
        if now == before {
            continue;
        }
        out.changed_records += 1;
        changed.insert((m.tenant.clone(), m.phone.clone()));
        for stage in ["lead", "booking", "transaction"] {
            let kind = match (before.get(stage), now.get(stage)) {
                (None, Some(_)) => format!("{stage} gained"),
                (Some(_), None) => format!("{stage} lost"),
                (Some(a), Some(b)) if a != b => "amount changed".to_string(),
                _ => continue,
            };
            *out.by_change.entry(kind).or_default() += 1;
        }
    }
    Ok(())
}

/// Creates the generation a plan describes: its empty tables (copies of the live ones) and
/// its row, state `building`. The running processors start building it on their next look at
/// `funnel_generations`. Schemas of retired generations are dropped first.
pub async fn create(
    settings: &Settings,
    pool: &PgPool,
    plan: &Plan,
    by: &str,
) -> anyhow::Result<Generation> {
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE funnel_generations IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let live: i32 =
        sqlx::query_scalar("SELECT generation FROM funnel_generations WHERE state = 'live'")
            .fetch_one(&mut *tx)
            .await?;
    anyhow::ensure!(
        live == plan.live_generation,
        "the live generation changed since the plan (now {live}); plan again"
    );
    let busy: Option<i32> =
        sqlx::query_scalar("SELECT generation FROM funnel_generations WHERE state = 'building'")
            .fetch_optional(&mut *tx)
            .await?;
    anyhow::ensure!(
        busy.is_none(),
        "a replay is already under way (generation {busy:?})"
    );
    let retired: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT generation, schema_name, group_suffix FROM funnel_generations WHERE state = 'retired'",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (n, schema, _) in &retired {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(schema)))
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE funnel_generations SET state = 'dropped' WHERE generation = $1")
            .bind(n)
            .execute(&mut *tx)
            .await?;
    }
    let n: i32 =
        sqlx::query_scalar("SELECT coalesce(max(generation), 0) + 1 FROM funnel_generations")
            .fetch_one(&mut *tx)
            .await?;
    let schema = format!("funnel_gen_{n}");
    let suffix = format!(".gen-{n}");
    sqlx::query("SELECT funnel_create_generation_tables($1, $2)")
        .bind(&schema)
        .bind(&plan.live_schema)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO funnel_generations (generation, schema_name, state, group_suffix, source_generation,
                                         replay_from, boundaries, created_by, tables_complete)
         VALUES ($1, $2, 'building', $3, $4, $5, $6, $7, false)",
    )
    .bind(n)
    .bind(&schema)
    .bind(&suffix)
    .bind(plan.live_generation)
    .bind(&plan.from)
    .bind(sqlx::types::Json(plan.boundaries()))
    .bind(by)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let groups: Vec<String> = retired
        .iter()
        .map(|(_, _, s)| format!("{}{s}", settings.consumer_group))
        .filter(|g| *g != plan.live_group)
        .collect();
    delete_groups(settings, &groups).await;
    generation::active(pool)
        .await?
        .into_iter()
        .find(|g| g.number == n)
        .ok_or_else(|| anyhow::anyhow!("generation {n} vanished after its creation"))
}

/// Deletes consumer groups of generations that no longer exist (best effort: lag tooling
/// would otherwise list them for ever).
async fn delete_groups(settings: &Settings, groups: &[String]) {
    if groups.is_empty() {
        return;
    }
    let admin: Result<AdminClient<DefaultClientContext>, _> = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_brokers)
        .create();
    let Ok(admin) = admin else { return };
    let names: Vec<&str> = groups.iter().map(String::as_str).collect();
    match admin
        .delete_groups(&names, &AdminOptions::new().request_timeout(Some(TIMEOUT)))
        .await
    {
        Ok(results) => {
            for r in results {
                if let Err((g, e)) = r {
                    tracing::debug!(group = %g, error = %e, "consumer group not deleted");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not delete old consumer groups"),
    }
}

/// Gives the building generation the indexes, `funnel_daily` rows and triggers it was built
/// without (copies of the live generation's), once it has caught up. Returns how long that
/// took, or None when they were already there. The processors' writes to it wait meanwhile.
pub async fn complete(pool: &PgPool) -> anyhow::Result<Option<Duration>> {
    let started = std::time::Instant::now();
    let mut attempt = 1;
    loop {
        match complete_once(pool).await {
            Ok(done) => return Ok(done.then(|| started.elapsed())),
            Err(e) if attempt < 5 && e.downcast_ref::<sqlx::Error>().is_some_and(is_contention) => {
                tracing::warn!(attempt, error = %e, "completing the tables met a lock; trying again");
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One attempt: true when it completed the tables, false when they already were.
async fn complete_once(pool: &PgPool) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '120s'")
        .execute(&mut *tx)
        .await?;
    let row: Option<(i32, String, bool)> = sqlx::query_as(
        "SELECT generation, schema_name, tables_complete FROM funnel_generations
          WHERE state = 'building' FOR UPDATE",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some((n, schema, done)) = row else {
        anyhow::bail!("no replay is under way");
    };
    if done {
        return Ok(false);
    }
    sqlx::query("SELECT funnel_complete_generation_tables($1, funnel_live_schema())")
        .bind(&schema)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE funnel_generations SET tables_complete = true WHERE generation = $1")
        .bind(n)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// A building generation's progress against the live one.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub live_generation: i32,
    pub building_generation: i32,
    /// Per partition: (end of the log, live offset, building offset).
    pub partitions: BTreeMap<i32, (i64, Option<i64>, Option<i64>)>,
}

impl Progress {
    /// Records the building generation still has to read to reach the live one.
    pub fn behind_live(&self) -> i64 {
        self.partitions
            .values()
            .map(|(_, l, b)| (l.unwrap_or(0) - b.unwrap_or(0)).max(0))
            .sum()
    }

    pub fn read(&self) -> i64 {
        self.partitions
            .values()
            .map(|(_, _, b)| b.unwrap_or(0))
            .sum()
    }

    pub fn end(&self) -> i64 {
        self.partitions.values().map(|(h, _, _)| *h).sum()
    }

    /// Whether the building generation has applied at least what the live one has, in every
    /// partition: then no contact is missing from it.
    pub fn caught_up(&self) -> bool {
        self.behind_live() == 0
    }
}

pub async fn progress(settings: &Settings, pool: &PgPool) -> anyhow::Result<Option<Progress>> {
    let Some(b) = generation::building(pool).await? else {
        return Ok(None);
    };
    let live = generation::live(pool).await?;
    let topic = settings.topic_messages.clone();
    let lo = stored_offsets(
        pool,
        &live.schema,
        &live.consumer_group(&settings.consumer_group),
        &topic,
    )
    .await?;
    let bo = stored_offsets(
        pool,
        &b.schema,
        &b.consumer_group(&settings.consumer_group),
        &topic,
    )
    .await?;
    let (settings2, topic2, group) = (
        settings.clone(),
        topic.clone(),
        b.consumer_group(&settings.consumer_group),
    );
    let ends: BTreeMap<i32, i64> = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let c: BaseConsumer = client_config(&settings2, &group).create()?;
        let mut ends = BTreeMap::new();
        for p in partitions_of(&c, &topic2)? {
            ends.insert(p, c.fetch_watermarks(&topic2, p, TIMEOUT)?.1);
        }
        Ok(ends)
    })
    .await??;
    Ok(Some(Progress {
        live_generation: live.number,
        building_generation: b.number,
        partitions: ends
            .into_iter()
            .map(|(p, h)| (p, (h, lo.get(&p).map(|x| x.0), bo.get(&p).map(|x| x.0))))
            .collect(),
    }))
}

/// How many processors are consuming as a group (members of the Kafka consumer group).
pub async fn members(settings: &Settings, group: &str) -> anyhow::Result<usize> {
    let (settings, group) = (settings.clone(), group.to_string());
    tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let c: BaseConsumer = client_config(&settings, &format!("{group}-probe")).create()?;
        let list = c.fetch_group_list(Some(&group), TIMEOUT)?;
        Ok(list.groups().iter().map(|g| g.members().len()).sum())
    })
    .await?
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch {
    /// The views point at the new generation; `from_group` is the retired one's consumer
    /// group.
    Switched {
        from: i32,
        to: i32,
        from_group: String,
    },
    /// The building generation has not applied everything the live one has yet.
    Behind(i64),
    /// A lock was not granted in time (a long query on the views, or the sink mid-batch).
    Busy,
}

/// Switches the public views to the building generation, if it has caught up with the live
/// one. The live generation's offsets table is locked against writes in the same transaction,
/// so the live sink cannot move ahead between the check and the switch: a reader never sees
/// the contact count go back.
pub async fn switch(settings: &Settings, pool: &PgPool) -> anyhow::Result<Switch> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    let locked = async {
        sqlx::query("LOCK TABLE funnel_generations IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let gens: Vec<(i32, String, String, String, bool)> = sqlx::query_as(
            "SELECT generation, schema_name, state, group_suffix, tables_complete FROM funnel_generations
              WHERE state IN ('live', 'building')",
        )
        .fetch_all(&mut *tx)
        .await?;
        Ok::<_, sqlx::Error>(gens)
    }
    .await;
    let gens = match locked {
        Ok(g) => g,
        Err(e) if is_contention(&e) => return Ok(Switch::Busy),
        Err(e) => return Err(e.into()),
    };
    let live = gens.iter().find(|g| g.2 == "live");
    let building = gens.iter().find(|g| g.2 == "building");
    let (Some(live), Some(building)) = (live, building) else {
        anyhow::bail!("no replay is under way: nothing to switch to");
    };
    anyhow::ensure!(
        building.4,
        "generation {} lacks its indexes and funnel_daily (they are built once it has caught up)",
        building.0
    );
    if let Err(e) = sqlx::query(&format!(
        "LOCK TABLE {}.funnel_sink_offsets IN SHARE ROW EXCLUSIVE MODE",
        ident(&live.1)
    ))
    .execute(&mut *tx)
    .await
    {
        return if is_contention(&e) {
            Ok(Switch::Busy)
        } else {
            Err(e.into())
        };
    }
    let topic = &settings.topic_messages;
    let offsets = |schema: &str| {
        format!(
            "SELECT partition, next_offset FROM {}.funnel_sink_offsets WHERE consumer_group = $1 AND topic = $2",
            ident(schema)
        )
    };
    let lo: Vec<(i32, i64)> = sqlx::query_as(&offsets(&live.1))
        .bind(format!("{}{}", settings.consumer_group, live.3))
        .bind(topic)
        .fetch_all(&mut *tx)
        .await?;
    let bo: HashMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>(&offsets(&building.1))
        .bind(format!("{}{}", settings.consumer_group, building.3))
        .bind(topic)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    let behind: i64 = lo
        .iter()
        .map(|(p, l)| (l - bo.get(p).copied().unwrap_or(0)).max(0))
        .sum();
    if behind > 0 {
        tx.rollback().await?;
        return Ok(Switch::Behind(behind));
    }
    let pointed = sqlx::query("SELECT funnel_point_views($1)")
        .bind(&building.1)
        .execute(&mut *tx)
        .await;
    match pointed {
        Err(e) if is_contention(&e) => return Ok(Switch::Busy),
        r => {
            r?;
        }
    }
    sqlx::query(
        "UPDATE funnel_generations SET state = 'retired', ended_at = now() WHERE generation = $1",
    )
    .bind(live.0)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE funnel_generations SET state = 'live', switched_at = now() WHERE generation = $1",
    )
    .bind(building.0)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Switch::Switched {
        from: live.0,
        to: building.0,
        from_group: format!("{}{}", settings.consumer_group, live.3),
    })
}

/// Lock contention that a later attempt gets past: 55P03 lock_not_available (lock_timeout)
/// and 40P01 deadlock_detected (PostgreSQL aborted this side of a deadlock).
fn is_contention(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03" || c == "40P01")
}

/// Gives up the building generation: marks it abandoned (the processors stop building it),
/// waits for them to leave its consumer group, then drops its schema and group.
pub async fn abandon(settings: &Settings, pool: &PgPool) -> anyhow::Result<Generation> {
    let Some(b) = generation::building(pool).await? else {
        anyhow::bail!("no replay is under way: nothing to abandon");
    };
    sqlx::query("UPDATE funnel_generations SET state = 'abandoned', ended_at = now() WHERE generation = $1 AND state = 'building'")
        .bind(b.number)
        .execute(pool)
        .await?;
    let group = b.consumer_group(&settings.consumer_group);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while members(settings, &group).await.unwrap_or(0) > 0 && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '60s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        ident(&b.schema)
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    delete_groups(settings, &[group]).await;
    Ok(b)
}

/// After a switch: waits (up to a minute) for the processors to stop the retired generation's
/// pipeline, then deletes its consumer group, so that any offset later committed under that
/// name was set by hand and is noticed.
pub async fn retire_group(settings: &Settings, group: &str) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while members(settings, group).await? > 0 {
        if tokio::time::Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    delete_groups(settings, &[group.to_string()]).await;
    Ok(true)
}

/// One row of `replay diff`: contacts that reached a stage, by lead channel, in both
/// generations, and their revenue.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StageDiff {
    pub stage: String,
    /// Lead channel; None: contacts without a lead.
    pub channel: Option<String>,
    pub live_contacts: i64,
    pub new_contacts: i64,
    pub live_revenue: Decimal,
    pub new_revenue: Decimal,
}

/// Contacts whose funnel the replay changed, by kind of change, with a few phones each.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Moved {
    pub change: String,
    pub contacts: i64,
    /// `tenant phone`, the first few by phone.
    pub samples: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub live_generation: i32,
    pub new_generation: i32,
    /// Whether the new generation has caught up with the live one (else contacts the live one
    /// has and the new one has not read yet count as moved).
    pub caught_up: bool,
    pub stages: Vec<StageDiff>,
    pub moved: Vec<Moved>,
}

/// Compares the live generation with the one being built (or, when none is, the live one
/// with the one it replaced, while that one's schema is kept).
pub async fn diff(settings: &Settings, pool: &PgPool, samples: i64) -> anyhow::Result<Diff> {
    let live = generation::live(pool).await?;
    let (old, new, caught_up) = match generation::building(pool).await? {
        Some(b) => {
            let caught = progress(settings, pool)
                .await?
                .is_some_and(|p| p.caught_up());
            (
                (live.number, live.schema.clone()),
                (b.number, b.schema),
                caught,
            )
        }
        None => {
            let retired: Option<(i32, String)> = sqlx::query_as(
                "SELECT generation, schema_name FROM funnel_generations WHERE state = 'retired'
                  ORDER BY generation DESC LIMIT 1",
            )
            .fetch_optional(pool)
            .await?;
            let Some(r) = retired else {
                anyhow::bail!(
                    "no replay to compare: none is under way, and no replaced generation is kept"
                );
            };
            (r, (live.number, live.schema.clone()), true)
        }
    };
    let per_stage = |schema: &str| {
        format!(
            "SELECT s.stage, c.channel, count(*)::bigint, coalesce(sum(c.transaction_value), 0)::numeric(20,2)
               FROM {}.funnel_contacts c
              CROSS JOIN LATERAL (VALUES ('lead', c.lead_at), ('booking', c.booking_at),
                                         ('transaction', c.transaction_at)) AS s(stage, at)
              WHERE s.at IS NOT NULL
              GROUP BY 1, 2",
            ident(schema)
        )
    };
    type StageRow = (String, Option<String>, i64, Decimal);
    let a: Vec<StageRow> = sqlx::query_as(&per_stage(&old.1)).fetch_all(pool).await?;
    let b: Vec<StageRow> = sqlx::query_as(&per_stage(&new.1)).fetch_all(pool).await?;
    let mut rows: BTreeMap<(u8, Option<String>), StageDiff> = BTreeMap::new();
    let order = |s: &str| match s {
        "lead" => 0u8,
        "booking" => 1,
        _ => 2,
    };
    for (side, list) in [(0, a), (1, b)] {
        for (stage, channel, n, revenue) in list {
            let r = rows
                .entry((order(&stage), channel.clone()))
                .or_insert_with(|| StageDiff {
                    stage: stage.clone(),
                    channel: channel.clone(),
                    ..Default::default()
                });
            if side == 0 {
                r.live_contacts = n;
                r.live_revenue = revenue;
            } else {
                r.new_contacts = n;
                r.new_revenue = revenue;
            }
        }
    }
    let moved: Vec<(String, i64, Vec<String>)> = sqlx::query_as(&format!(
        "WITH j AS (
             SELECT coalesce(a.tenant, b.tenant) AS tenant, coalesce(a.phone, b.phone) AS phone,
                    a.phone IS NOT NULL AS in_a, b.phone IS NOT NULL AS in_b,
                    a.lead_at IS NOT NULL AS la, b.lead_at IS NOT NULL AS lb,
                    a.booking_at IS NOT NULL AS ba, b.booking_at IS NOT NULL AS bb,
                    a.transaction_at IS NOT NULL AS ta, b.transaction_at IS NOT NULL AS tb,
                    a.channel AS ca, b.channel AS cb,
                    a.transaction_value AS va, b.transaction_value AS vb
               FROM {}.funnel_contacts a
               FULL JOIN {}.funnel_contacts b ON a.tenant = b.tenant AND a.phone = b.phone
         ), k AS (
             SELECT tenant, phone, v.change, v.ord
               FROM j CROSS JOIN LATERAL (VALUES
                    (1, 'lead gained', in_a AND in_b AND lb AND NOT la),
                    (2, 'lead lost', in_a AND in_b AND la AND NOT lb),
                    (3, 'booking gained', in_a AND in_b AND bb AND NOT ba),
                    (4, 'booking lost', in_a AND in_b AND ba AND NOT bb),
                    (5, 'transaction gained', in_a AND in_b AND tb AND NOT ta),
                    (6, 'transaction lost', in_a AND in_b AND ta AND NOT tb),
                    (7, 'lead channel changed', in_a AND in_b AND la AND lb AND ca IS DISTINCT FROM cb),
                    (8, 'revenue changed', in_a AND in_b AND va <> vb),
                    (9, 'only in the live generation', in_a AND NOT in_b),
                    (10, 'only in the new generation', in_b AND NOT in_a)) AS v(ord, change, hit)
              WHERE v.hit
         )
         SELECT change, count(*)::bigint,
                (array_agg(tenant || ' ' || phone ORDER BY phone))[1:$1]
           FROM k GROUP BY change, ord ORDER BY ord",
        ident(&old.1),
        ident(&new.1)
    ))
    .bind(samples.max(0) as i32)
    .fetch_all(pool)
    .await?;
    Ok(Diff {
        live_generation: old.0,
        new_generation: new.0,
        caught_up,
        stages: rows.into_values().collect(),
        moved: moved
            .into_iter()
            .map(|(change, contacts, samples)| Moved {
                change,
                contacts,
                samples,
            })
            .collect(),
    })
}

/// A partition whose committed offset in Kafka was set by another tool and differs from the
/// sink's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignCommit {
    pub group: String,
    pub partition: i32,
    pub kafka: i64,
    pub sink: Option<i64>,
}

/// The partitions of `group` whose Kafka offset was committed by something other than
/// funnel-processor and is not where the sink stands (`sink`: the stored offsets of the
/// generation consuming as `group`; empty for a group no generation uses).
pub fn foreign_commits(
    c: &BaseConsumer,
    topic: &str,
    group: &str,
    partitions: &[i32],
    sink: &BTreeMap<i32, i64>,
) -> anyhow::Result<Vec<ForeignCommit>> {
    Ok(committed_when_available(c, topic, partitions)?
        .into_iter()
        .filter(|(p, (o, ours))| !ours && sink.get(p) != Some(o))
        .map(|(p, (o, _))| ForeignCommit {
            group: group.to_string(),
            partition: p,
            kafka: o,
            sink: sink.get(&p).copied(),
        })
        .collect())
}

/// Refuses to start a generation's pipeline when another tool reset the committed offsets of
/// its consumer group: Funnel neither follows such a reset silently nor ignores it. The live
/// generation's pipeline also checks `also_group`, the configured group, when a later
/// generation consumes under another name: the old group is deleted at the switch, so any
/// offset in it was set by hand.
pub async fn check_kafka_offsets(
    settings: &Settings,
    also_group: Option<&str>,
    pool: &PgPool,
) -> anyhow::Result<()> {
    let topic = settings.topic_messages.clone();
    let group = settings.consumer_group.clone();
    let sink: BTreeMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>(
        "SELECT partition, next_offset FROM funnel_sink_offsets WHERE consumer_group = $1 AND topic = $2",
    )
    .bind(&group)
    .bind(&topic)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let (settings2, base) = (settings.clone(), also_group.map(str::to_string));
    let found = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<ForeignCommit>> {
        let c: BaseConsumer = client_config(&settings2, &group).create()?;
        let parts = partitions_of(&c, &topic)?;
        let mut found = foreign_commits(&c, &topic, &group, &parts, &sink)?;
        if let Some(base) = base.filter(|b| *b != group) {
            let c: BaseConsumer = client_config(&settings2, &base).create()?;
            found.extend(foreign_commits(
                &c,
                &topic,
                &base,
                &parts,
                &BTreeMap::new(),
            )?);
        }
        Ok(found)
    })
    .await??;
    if found.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = found
        .iter()
        .map(|f| match f.sink {
            Some(s) => format!(
                "group {} partition {}: Kafka says {}, the sink (PostgreSQL) is at {s}",
                f.group, f.partition, f.kafka
            ),
            None if f.group == settings.consumer_group => format!(
                "group {} partition {}: Kafka says {}, the sink has not written it yet",
                f.group, f.partition, f.kafka
            ),
            None => format!(
                "group {} partition {}: Kafka says {}, but no generation consumes as {} any more \
                 (the live one is {})",
                f.group, f.partition, f.kafka, f.group, settings.consumer_group
            ),
        })
        .collect();
    anyhow::bail!(
        "the committed offsets in Kafka were changed by another tool (kafka-consumer-groups --reset-offsets?):\n  - {}\n\
         Funnel keeps its offsets in PostgreSQL with the rows, and does not follow or ignore such a change silently. \
         To process those messages again under the current rules, run `funnel-processor replay --from kafka` \
         (or --from earliest|<RFC 3339 time>); to go on from where the sink stands, run `funnel-processor offsets sync`. \
         See docs/replay.md",
        lines.join("\n  - ")
    )
}

/// Per partition of the live generation: the log, the sink's offset and Kafka's.
#[derive(Debug, Clone, Serialize)]
pub struct OffsetsRow {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
    pub sink: Option<i64>,
    pub kafka: Option<i64>,
    pub kafka_by_funnel: bool,
}

pub async fn offsets(
    settings: &Settings,
    pool: &PgPool,
) -> anyhow::Result<(String, Vec<OffsetsRow>)> {
    let live = generation::live(pool).await?;
    let group = live.consumer_group(&settings.consumer_group);
    let topic = settings.topic_messages.clone();
    let sink = stored_offsets(pool, &live.schema, &group, &topic).await?;
    let (settings2, group2) = (settings.clone(), group.clone());
    let rows = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<OffsetsRow>> {
        let c: BaseConsumer = client_config(&settings2, &group2).create()?;
        let parts = partitions_of(&c, &topic)?;
        let kafka = committed(&c, &topic, &parts)?;
        parts
            .iter()
            .map(|p| {
                let (low, high) = c.fetch_watermarks(&topic, *p, TIMEOUT)?;
                Ok(OffsetsRow {
                    partition: *p,
                    low,
                    high,
                    sink: sink.get(p).map(|x| x.0),
                    kafka: kafka.get(p).map(|x| x.0),
                    kafka_by_funnel: kafka.get(p).is_none_or(|x| x.1),
                })
            })
            .collect()
    })
    .await??;
    Ok((group, rows))
}

/// Overwrites the live consumer group's committed offsets in Kafka with the sink's (and the
/// configured group's, when a later generation is live, with the live generation's), as
/// Funnel's own commits. Kafka accepts this only while no processor is in the group.
pub async fn sync_kafka_offsets(
    settings: &Settings,
    pool: &PgPool,
) -> anyhow::Result<Vec<OffsetsRow>> {
    let live = generation::live(pool).await?;
    let (group, rows) = offsets(settings, pool).await?;
    let mut groups = vec![group.clone()];
    if group != settings.consumer_group {
        groups.push(settings.consumer_group.clone());
    }
    for g in groups {
        let n = members(settings, &g).await?;
        anyhow::ensure!(
            n == 0,
            "{n} processor(s) are consuming as group {g}: stop them first (Kafka only takes offsets for an idle group)"
        );
        let mut tpl = TopicPartitionList::new();
        let metadata = commit_metadata(live.number);
        for r in &rows {
            let mut e = tpl.add_partition(&settings.topic_messages, r.partition);
            e.set_offset(Offset::Offset(r.sink.unwrap_or(r.low)))?;
            e.set_metadata(&metadata);
        }
        let settings2 = settings.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let c: BaseConsumer = client_config(&settings2, &g).create()?;
            c.commit(&tpl, CommitMode::Sync)
                .map_err(|e| anyhow::anyhow!("committing offsets for group {g}: {e}"))?;
            Ok(())
        })
        .await??;
    }
    offsets(settings, pool).await.map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_parses() {
        assert_eq!("earliest".parse::<ReplayFrom>(), Ok(ReplayFrom::Earliest));
        assert_eq!("kafka".parse::<ReplayFrom>(), Ok(ReplayFrom::Kafka));
        let t = "2026-11-20T00:00:00+07:00"
            .parse::<ReplayFrom>()
            .expect("time");
        assert_eq!(
            t,
            ReplayFrom::Time(
                DateTime::parse_from_rfc3339("2026-11-19T17:00:00Z")
                    .expect("utc")
                    .with_timezone(&Utc)
            )
        );
        assert_eq!(t.to_string(), "2026-11-19T17:00:00+00:00");
        let e = "yesterday".parse::<ReplayFrom>().expect_err("refused");
        assert!(e.contains("earliest") && e.contains("RFC 3339"), "{e}");
    }

    fn part(p: i32, low: i64, high: i64, live: Option<i64>, from: i64) -> PartitionPlan {
        PartitionPlan {
            partition: p,
            low,
            high,
            live_offset: live,
            live_first: live.map(|_| low),
            kafka_offset: None,
            kafka_ours: true,
            reclassify_from: from,
        }
    }

    #[test]
    fn plan_sums_and_boundaries() {
        let plan = Plan {
            live_generation: 1,
            live_schema: "funnel_gen_1".into(),
            live_group: "g".into(),
            topic: "t".into(),
            from: "earliest".into(),
            partitions: vec![part(0, 0, 100, Some(90), 40), part(1, 5, 5, None, 5)],
        };
        assert_eq!(plan.records(), 100);
        assert_eq!(plan.reclassified(), 60);
        let b = plan.boundaries();
        assert_eq!(b.reclassify_from.get(&0), Some(&40));
        assert_eq!(b.dead_letters_from.get(&0), Some(&90));
        assert_eq!(
            b.dead_letters_from.get(&1),
            Some(&5),
            "unwritten partitions: from the log start"
        );
    }

    #[test]
    fn progress_catches_up_only_when_every_partition_has() {
        let mut p = Progress {
            live_generation: 1,
            building_generation: 2,
            partitions: [
                (0, (100, Some(100), Some(100))),
                (1, (50, Some(50), Some(20))),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(p.behind_live(), 30);
        assert!(!p.caught_up());
        p.partitions.insert(1, (60, Some(50), Some(55)));
        assert!(p.caught_up(), "ahead of the live generation is caught up");
        assert_eq!(p.read(), 155);
        assert_eq!(p.end(), 160);
    }
}
