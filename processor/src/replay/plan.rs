//! A replay's plan: per partition, the log's range, where the live sink stands and where
//! records are classified again; or every reason the replay cannot go ahead.

use std::collections::BTreeMap;

use chrono::Utc;
use funnel_runtime::kafka::{partitions_of, REQUEST_TIMEOUT};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use sqlx::PgPool;

use super::offsets::{committed, consumer, stored_offsets};
use super::{ReplayError, ReplayFrom};
use crate::generation::{self, Boundaries};
use crate::settings::Settings;

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

/// What Kafka says about the input topic, per partition.
#[derive(Debug, Default)]
struct Log {
    /// (first offset still in the log, end of the log)
    watermarks: BTreeMap<i32, (i64, i64)>,
    /// The live group's committed offset, and whether Funnel committed it.
    committed: BTreeMap<i32, (i64, bool)>,
    /// For `--from <time>`: the first offset at or after the time.
    at_time: BTreeMap<i32, i64>,
}

/// Plans a replay: where each partition is re-read from (its start) and where it is
/// classified again. Refuses, naming every offending partition, when the log no longer holds
/// what the live generation applied, when a Kafka reset would skip records, or when a replay
/// is already under way.
pub async fn plan(
    settings: &Settings,
    pool: &PgPool,
    from: &ReplayFrom,
) -> Result<Plan, ReplayError> {
    if let Some(b) = generation::building(pool).await? {
        return Err(ReplayError::UnderWay(b.number));
    }
    if let ReplayFrom::Time(t) = from {
        if *t > Utc::now() {
            return Err(ReplayError::Refused(vec![format!(
                "--from {} is in the future: nothing after it has been processed yet",
                t.to_rfc3339()
            )]));
        }
    }
    let live = generation::live(pool).await?;
    let group = live.consumer_group(&settings.consumer_group);
    let topic = settings.kafka.topic_messages.clone();
    let stored = stored_offsets(pool, &live.schema, &group, &topic).await?;
    let log = read_log(settings, &group, &topic, from).await?;
    let partitions = partition_plans(from, &group, &log, &stored).map_err(ReplayError::Refused)?;
    Ok(Plan {
        live_generation: live.number,
        live_schema: live.schema,
        live_group: group,
        topic,
        from: from.to_string(),
        partitions,
    })
}

async fn read_log(
    settings: &Settings,
    group: &str,
    topic: &str,
    from: &ReplayFrom,
) -> Result<Log, ReplayError> {
    let (settings, group, topic, from) = (
        settings.clone(),
        group.to_string(),
        topic.to_string(),
        from.clone(),
    );
    tokio::task::spawn_blocking(move || -> Result<Log, ReplayError> {
        let c = consumer(&settings, &group)?;
        let parts = partitions_of(&c, &topic)?;
        let mut log = Log {
            committed: committed(&c, &topic, &parts)?,
            ..Log::default()
        };
        for p in &parts {
            log.watermarks
                .insert(*p, c.fetch_watermarks(&topic, *p, REQUEST_TIMEOUT)?);
        }
        if let ReplayFrom::Time(t) = &from {
            let mut tpl = TopicPartitionList::new();
            for p in &parts {
                tpl.add_partition_offset(&topic, *p, Offset::Offset(t.timestamp_millis()))?;
            }
            for e in c.offsets_for_times(tpl, REQUEST_TIMEOUT)?.elements() {
                // No record at or after the time: the end of the partition.
                let high = log.watermarks.get(&e.partition()).map_or(0, |w| w.1);
                let o = e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(high);
                log.at_time.insert(e.partition(), o);
            }
        }
        Ok(log)
    })
    .await?
}

/// The plan of every partition, or every reason the replay cannot go ahead. `stored`: the
/// live generation's offsets, partition -> (next offset, first offset applied).
fn partition_plans(
    from: &ReplayFrom,
    group: &str,
    log: &Log,
    stored: &BTreeMap<i32, (i64, Option<i64>)>,
) -> Result<Vec<PartitionPlan>, Vec<String>> {
    let mut problems = Vec::new();
    let mut partitions = Vec::new();
    for (&p, &(low, high)) in &log.watermarks {
        let (live_offset, live_first) = match stored.get(&p) {
            Some((n, f)) => (Some(*n), Some(f.unwrap_or(0))),
            None => (None, None),
        };
        let (kafka_offset, kafka_ours) = match log.committed.get(&p) {
            Some((o, ours)) => (Some(*o), *ours),
            None => (None, true),
        };
        if let Some(first) = live_first.filter(|first| low > *first) {
            problems.push(format!(
                "partition {p}: the log starts at offset {low}, but the live generation applied records from \
                 offset {first}: {} records have expired (topic retention) and cannot be read again",
                low - first
            ));
        }
        let reclassify_from = match from {
            ReplayFrom::Earliest => low,
            ReplayFrom::Time(_) => log.at_time.get(&p).copied().unwrap_or(high),
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
            partition: p,
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
    if problems.is_empty() {
        Ok(partitions)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn log(partitions: &[(i32, i64, i64)]) -> Log {
        Log {
            watermarks: partitions.iter().map(|(p, l, h)| (*p, (*l, *h))).collect(),
            ..Log::default()
        }
    }

    #[test]
    fn boundaries_per_kind_of_from() {
        let mut l = log(&[(0, 0, 100), (1, 0, 50)]);
        let stored = [(0, (80, Some(0)))].into_iter().collect();
        let earliest = partition_plans(&ReplayFrom::Earliest, "g", &l, &stored).expect("plan");
        assert_eq!(earliest[0].reclassify_from, 0);
        assert_eq!(earliest[0].live_offset, Some(80));
        assert_eq!(earliest[1].live_offset, None);
        l.at_time = [(0, 60)].into_iter().collect();
        let at = partition_plans(&ReplayFrom::Time(Utc::now()), "g", &l, &stored).expect("plan");
        assert_eq!(
            (at[0].reclassify_from, at[1].reclassify_from),
            (60, 50),
            "no record at or after the time: the end of the log"
        );
        l.committed = [(0, (30, false))].into_iter().collect();
        let kafka = partition_plans(&ReplayFrom::Kafka, "g", &l, &stored).expect("plan");
        assert_eq!(kafka[0].reclassify_from, 30);
        assert_eq!(kafka[1].reclassify_from, 0, "not reset: where the sink is");
    }

    #[test]
    fn refusals_name_each_partition() {
        let mut l = log(&[(0, 10, 100), (1, 0, 50), (2, 5, 50)]);
        let stored = [(0, (80, Some(0))), (1, (20, Some(0)))]
            .into_iter()
            .collect();
        l.committed = [(1, (40, false)), (2, (1, false))].into_iter().collect();
        let problems = partition_plans(&ReplayFrom::Kafka, "g", &l, &stored).expect_err("refused");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("partition 0: the log starts at offset 10"));
        assert!(problems[1].starts_with("partition 1: Kafka's offset 40 is ahead of the sink's 20"));
        assert!(problems[2].starts_with("partition 2: Kafka's offset 1 is before the start"));
        let untouched = log(&[(0, 0, 10)]);
        let problems = partition_plans(&ReplayFrom::Kafka, "g", &untouched, &BTreeMap::new())
            .expect_err("refused");
        assert!(problems[0].contains("nothing was reset"), "{problems:?}");
    }
}
