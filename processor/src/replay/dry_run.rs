//! `replay --dry-run`: the records a plan classifies again, read from the topic, classified
//! under the current rules and compared with the stage events the live generation committed
//! for them. Nothing is created.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use funnel_runtime::kafka::consumer_config;
use funnel_runtime::sink::recorded_hits;
use funnel_schemas::rules::{Stage, StageHit};
use funnel_schemas::ChatMessage;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;

use super::{Plan, ReplayError};
use crate::decode::RecordDecoder;
use crate::rulebook::Rulebook;
use crate::settings::Settings;

/// Records compared with the live generation's classification at a time.
const CHUNK: usize = 2000;

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
/// compares with the stage events the live generation committed for them.
pub async fn changes(
    settings: &Settings,
    pool: &PgPool,
    plan: &Plan,
) -> Result<Changes, ReplayError> {
    let rules = Rulebook::load(pool).await?;
    let mut decoder = RecordDecoder::new(&settings.kafka)?;
    let consumer: StreamConsumer =
        consumer_config(&settings.kafka, &format!("{}-replay-plan", plan.live_group))?
            .set("auto.offset.reset", "earliest")
            .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
    for p in plan
        .partitions
        .iter()
        .filter(|p| p.reclassify_from < p.high)
    {
        tpl.add_partition_offset(&plan.topic, p.partition, Offset::Offset(p.reclassify_from))?;
        pending.insert(p.partition, p.high);
    }
    let mut tally = Tally::default();
    if pending.is_empty() {
        return Ok(tally.out);
    }
    consumer.assign(&tpl)?;
    let mut chunk: Vec<ChatMessage> = Vec::new();
    while !pending.is_empty() {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .map_err(|_| ReplayError::Read {
                topic: plan.topic.clone(),
                detail: "no record for 30 s while reading the range".into(),
            })??;
        let Some(&end) = pending.get(&m.partition()) else {
            continue;
        };
        if m.offset() + 1 >= end {
            pending.remove(&m.partition());
        }
        if m.offset() >= end {
            continue;
        }
        tally.out.records += 1;
        match decoder.decode(m.key(), m.payload()).await? {
            Ok(msg) => chunk.push(msg),
            Err(_) => tally.out.poison += 1,
        }
        if chunk.len() >= CHUNK {
            tally
                .compare(&chunk, pool, &plan.live_schema, &rules)
                .await?;
            chunk.clear();
        }
    }
    tally
        .compare(&chunk, pool, &plan.live_schema, &rules)
        .await?;
    Ok(tally.finish())
}

/// The comparison so far.
#[derive(Default)]
struct Tally {
    out: Changes,
    contacts: BTreeSet<(String, String)>,
    changed: BTreeSet<(String, String)>,
}

impl Tally {
    /// Compares each message's classification now with the one the generation in `schema`
    /// committed for it.
    async fn compare(
        &mut self,
        chunk: &[ChatMessage],
        pool: &PgPool,
        schema: &str,
        rules: &Rulebook,
    ) -> Result<(), sqlx::Error> {
        if chunk.is_empty() {
            return Ok(());
        }
        let keys: Vec<(&str, &str, &str)> = chunk
            .iter()
            .map(|m| (m.tenant.as_str(), m.phone.as_str(), m.event_id.as_str()))
            .collect();
        let recorded = recorded_hits(pool, Some(schema), &keys).await?;
        self.tally(chunk, &recorded, rules);
        Ok(())
    }

    /// Counts the messages whose classification now differs from the recorded one (by tenant
    /// and event id; absent: it reached no stage).
    fn tally(
        &mut self,
        chunk: &[ChatMessage],
        recorded: &HashMap<(String, String), (Vec<StageHit>, i64)>,
        rules: &Rulebook,
    ) {
        for m in chunk {
            self.contacts.insert((m.tenant.clone(), m.phone.clone()));
            let now = rules
                .for_tenant(&m.tenant)
                .classify(&m.text, &m.channel, m.direction);
            let before = recorded
                .get(&(m.tenant.clone(), m.event_id.clone()))
                .map(|(hits, _)| hits.as_slice())
                .unwrap_or_default();
            let kinds = change_kinds(before, &now);
            if kinds.is_empty() {
                continue;
            }
            self.out.changed_records += 1;
            self.changed.insert((m.tenant.clone(), m.phone.clone()));
            for kind in kinds {
                *self.out.by_change.entry(kind).or_default() += 1;
            }
        }
    }

    fn finish(mut self) -> Changes {
        self.out.contacts_in_range = self.contacts.len() as u64;
        self.out.contacts_changed = self.changed.len() as u64;
        self.out
    }
}

/// How one record's classification changed: a stage gained or lost, an amount changed.
fn change_kinds(before: &[StageHit], now: &[StageHit]) -> Vec<String> {
    let by_stage = |hits: &[StageHit]| -> BTreeMap<Stage, Decimal> {
        hits.iter().map(|h| (h.stage, h.value)).collect()
    };
    let (before, now) = (by_stage(before), by_stage(now));
    Stage::ALL
        .iter()
        .filter_map(|stage| match (before.get(stage), now.get(stage)) {
            (None, Some(_)) => Some(format!("{} gained", stage.as_str())),
            (Some(_), None) => Some(format!("{} lost", stage.as_str())),
            (Some(a), Some(b)) if a != b => Some("amount changed".to_string()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(stage: Stage, value: i64) -> StageHit {
        StageHit {
            stage,
            rule_id: "r".into(),
            value: Decimal::from(value),
        }
    }

    #[test]
    fn changes_are_named_per_stage() {
        let before = [hit(Stage::Lead, 0), hit(Stage::Transaction, 100)];
        assert!(change_kinds(&before, &before).is_empty());
        let now = [hit(Stage::Booking, 0), hit(Stage::Transaction, 150)];
        assert_eq!(
            change_kinds(&before, &now),
            ["lead lost", "booking gained", "amount changed"]
        );
        assert_eq!(change_kinds(&[], &[hit(Stage::Lead, 0)]), ["lead gained"]);
        let other_rule = StageHit {
            rule_id: "other".into(),
            ..hit(Stage::Lead, 0)
        };
        assert!(
            change_kinds(&[hit(Stage::Lead, 0)], &[other_rule]).is_empty(),
            "another deciding rule is not a change of the funnel"
        );
    }
}
