//! The consumer groups' offsets in Kafka. Funnel's own offsets live in PostgreSQL with the
//! rows; the ones it commits to Kafka afterwards (for lag tooling) carry [`commit_metadata`],
//! so an offset committed without it was set by another tool (`kafka-consumer-groups
//! --reset-offsets`), which a pipeline refuses to start on rather than follow or ignore.

use std::collections::BTreeMap;
use std::time::Duration;

use funnel_runtime::db::ident;
use funnel_runtime::kafka::{consumer_config, partitions_of, REQUEST_TIMEOUT};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use sqlx::PgPool;

use super::ReplayError;
use crate::generation;
use crate::settings::Settings;

pub const COMMIT_METADATA_PREFIX: &str = "funnel-processor generation=";

/// The metadata of the processor's Kafka offset commits.
pub fn commit_metadata(generation: i32) -> String {
    format!("{COMMIT_METADATA_PREFIX}{generation}")
}

/// A consumer of `group` for offset and watermark requests (blocking calls).
pub(super) fn consumer(settings: &Settings, group: &str) -> Result<BaseConsumer, ReplayError> {
    Ok(consumer_config(&settings.kafka, group)?.create()?)
}

/// [`committed`], retried while the group coordinator is not available (a new cluster
/// creates `__consumer_offsets` on the first group's request), for up to two minutes.
fn committed_when_available(
    c: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, (i64, bool)>, ReplayError> {
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
pub(super) fn committed(
    c: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, (i64, bool)>, ReplayError> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let got = c.committed_offsets(tpl, REQUEST_TIMEOUT)?;
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
pub(super) async fn stored_offsets(
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
fn foreign_commits(
    c: &BaseConsumer,
    topic: &str,
    group: &str,
    partitions: &[i32],
    sink: &BTreeMap<i32, i64>,
) -> Result<Vec<ForeignCommit>, ReplayError> {
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
/// its consumer group (`group`): Funnel neither follows such a reset silently nor ignores it.
/// The live generation's pipeline also checks `also_group`, the configured group, when a later
/// generation consumes under another name: the old group is deleted at the switch, so any
/// offset in it was set by hand.
pub async fn check_kafka_offsets(
    settings: &Settings,
    group: &str,
    also_group: Option<&str>,
    pool: &PgPool,
) -> Result<(), ReplayError> {
    let topic = settings.kafka.topic_messages.clone();
    let sink: BTreeMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>(
        "SELECT partition, next_offset FROM funnel_sink_offsets WHERE consumer_group = $1 AND topic = $2",
    )
    .bind(group)
    .bind(&topic)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let (settings2, group2, base) = (
        settings.clone(),
        group.to_string(),
        also_group.map(str::to_string),
    );
    let found = tokio::task::spawn_blocking(move || -> Result<Vec<ForeignCommit>, ReplayError> {
        let c = consumer(&settings2, &group2)?;
        let parts = partitions_of(&c, &topic)?;
        let mut found = foreign_commits(&c, &topic, &group2, &parts, &sink)?;
        if let Some(base) = base.filter(|b| *b != group2) {
            let c = consumer(&settings2, &base)?;
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
    Err(ReplayError::ForeignOffsets(
        found.iter().map(|f| describe(f, group)).collect(),
    ))
}

fn describe(f: &ForeignCommit, group: &str) -> String {
    match f.sink {
        Some(s) => format!(
            "group {} partition {}: Kafka says {}, the sink (PostgreSQL) is at {s}",
            f.group, f.partition, f.kafka
        ),
        None if f.group == group => format!(
            "group {} partition {}: Kafka says {}, the sink has not written it yet",
            f.group, f.partition, f.kafka
        ),
        None => format!(
            "group {} partition {}: Kafka says {}, but no generation consumes as {} any more \
             (the live one is {group})",
            f.group, f.partition, f.kafka, f.group
        ),
    }
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

/// The live generation's consumer group and its offsets per partition.
pub async fn offsets(
    settings: &Settings,
    pool: &PgPool,
) -> Result<(String, Vec<OffsetsRow>), ReplayError> {
    let live = generation::live(pool).await?;
    let group = live.consumer_group(&settings.consumer_group);
    let topic = settings.kafka.topic_messages.clone();
    let sink = stored_offsets(pool, &live.schema, &group, &topic).await?;
    let (settings2, group2) = (settings.clone(), group.clone());
    let rows = tokio::task::spawn_blocking(move || -> Result<Vec<OffsetsRow>, ReplayError> {
        let c = consumer(&settings2, &group2)?;
        let parts = partitions_of(&c, &topic)?;
        let kafka = committed(&c, &topic, &parts)?;
        parts
            .iter()
            .map(|p| {
                let (low, high) = c.fetch_watermarks(&topic, *p, REQUEST_TIMEOUT)?;
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
) -> Result<Vec<OffsetsRow>, ReplayError> {
    let live = generation::live(pool).await?;
    let (group, rows) = offsets(settings, pool).await?;
    let mut groups = vec![group.clone()];
    if group != settings.consumer_group {
        groups.push(settings.consumer_group.clone());
    }
    for g in groups {
        let n = members(settings, &g).await?;
        if n > 0 {
            return Err(ReplayError::GroupBusy {
                group: g,
                members: n,
            });
        }
        let mut tpl = TopicPartitionList::new();
        let metadata = commit_metadata(live.number);
        for r in &rows {
            let mut e = tpl.add_partition(&settings.kafka.topic_messages, r.partition);
            e.set_offset(Offset::Offset(r.sink.unwrap_or(r.low)))?;
            e.set_metadata(&metadata);
        }
        let settings2 = settings.clone();
        tokio::task::spawn_blocking(move || -> Result<(), ReplayError> {
            consumer(&settings2, &g)?.commit(&tpl, CommitMode::Sync)?;
            Ok(())
        })
        .await??;
    }
    offsets(settings, pool).await.map(|(_, r)| r)
}

/// How many processors are consuming as a group (members of the Kafka consumer group).
pub async fn members(settings: &Settings, group: &str) -> Result<usize, ReplayError> {
    let (settings, group) = (settings.clone(), group.to_string());
    tokio::task::spawn_blocking(move || -> Result<usize, ReplayError> {
        let c = consumer(&settings, &format!("{group}-probe"))?;
        let list = c.fetch_group_list(Some(&group), REQUEST_TIMEOUT)?;
        Ok(list.groups().iter().map(|g| g.members().len()).sum())
    })
    .await?
}

/// Deletes consumer groups of generations that no longer exist (best effort: lag tooling
/// would otherwise list them for ever).
pub(super) async fn delete_groups(settings: &Settings, groups: &[String]) {
    if groups.is_empty() {
        return;
    }
    let Ok(config) = funnel_runtime::kafka::client_config(&settings.kafka) else {
        return;
    };
    let admin: Result<AdminClient<DefaultClientContext>, _> = config.create();
    let Ok(admin) = admin else { return };
    let names: Vec<&str> = groups.iter().map(String::as_str).collect();
    match admin
        .delete_groups(
            &names,
            &AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT)),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_commits_are_described_by_what_the_sink_knows() {
        let f = |group: &str, sink| ForeignCommit {
            group: group.into(),
            partition: 2,
            kafka: 40,
            sink,
        };
        assert_eq!(
            describe(&f("g", Some(50)), "g"),
            "group g partition 2: Kafka says 40, the sink (PostgreSQL) is at 50"
        );
        assert!(describe(&f("g", None), "g").contains("has not written it yet"));
        assert!(describe(&f("old", None), "g.gen-2").contains("no generation consumes as old"));
        assert!(commit_metadata(3).starts_with(COMMIT_METADATA_PREFIX));
    }
}
