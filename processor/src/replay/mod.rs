//! `funnel-processor replay` (docs/replay.md): classify history again under the current rules
//! into a new generation beside the live one, compare the two, and switch the public views to
//! the new one in one transaction. The running processors do the work: each serves every
//! generation that is live or building. This module tree does the rest:
//!
//! - [`plan`]: where each partition is re-read and classified again, or why it cannot be;
//! - [`dry_run`]: what the current rules would change, without creating anything;
//! - [`lifecycle`]: create, watch, complete, switch, abandon a generation;
//! - [`diff`]: the live generation against the new one;
//! - [`offsets`]: the consumer groups' offsets in Kafka (Funnel's commits, resets made by
//!   other tools, `offsets show|sync`).

pub mod diff;
pub mod dry_run;
pub mod lifecycle;
pub mod offsets;
pub mod plan;

use std::str::FromStr;

use chrono::{DateTime, Utc};
use funnel_runtime::kafka::TopicError;
use funnel_runtime::registry::RegistryError;

use crate::generation::GenerationError;

pub use diff::{diff, Diff, Moved, StageDiff};
pub use dry_run::{changes, Changes};
pub use lifecycle::{
    abandon, complete, create, generations, progress, retire_group, switch, wait_and_switch,
    wait_until_caught_up, GenerationRow, Progress, Switch, Switched, Waiting,
};
pub use offsets::{check_kafka_offsets, offsets, sync_kafka_offsets, OffsetsRow};
pub use plan::{plan, PartitionPlan, Plan};

/// Why a replay command or check did not go through. The variants say what the caller does:
/// [`ReplayError::Contention`] is tried again; the others end the command with their message.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The replay cannot go ahead as asked; every reason, naming its partition.
    #[error("replay refused:\n  - {}\n(docs/replay.md says what the topic must retain)", .0.join("\n  - "))]
    Refused(Vec<String>),
    /// Another replay is being built.
    #[error(
        "a replay is already under way: generation {0} is being built. `funnel-processor replay status` \
         shows its progress; `funnel-processor replay switch` or `funnel-processor replay abandon` ends it"
    )]
    UnderWay(i32),
    /// Switch, abandon or complete with no generation being built.
    #[error("no replay is under way: nothing to {0}")]
    NotUnderWay(&'static str),
    /// The generation was switched to or abandoned by someone else meanwhile.
    #[error("generation {0} is no longer being built (switched or abandoned elsewhere)")]
    Gone(i32),
    /// The live generation changed between the plan and the creation.
    #[error("the live generation changed since the plan (now {0}); plan again")]
    LiveChanged(i32),
    /// The building generation has not been completed (it has not caught up yet).
    #[error(
        "generation {0} lacks its indexes and funnel_daily (they are built once it has caught up)"
    )]
    Incomplete(i32),
    /// Another tool changed the committed offsets of a consumer group in Kafka.
    #[error(
        "the committed offsets in Kafka were changed by another tool (kafka-consumer-groups --reset-offsets?):\n  - {}\n\
         Funnel keeps its offsets in PostgreSQL with the rows, and does not follow or ignore such a change silently. \
         To process those messages again under the current rules, run `funnel-processor replay --from kafka` \
         (or --from earliest|<RFC 3339 time>); to go on from where the sink stands, run `funnel-processor offsets sync`. \
         See docs/replay.md",
        .0.join("\n  - ")
    )]
    ForeignOffsets(Vec<String>),
    /// Processors are in a consumer group whose offsets must be written while it is idle.
    #[error("{members} processor(s) are consuming as group {group}: stop them first (Kafka only takes offsets for an idle group)")]
    GroupBusy { group: String, members: usize },
    /// A lock was not granted in time, or PostgreSQL broke a deadlock: try again.
    #[error("the tables are busy: {0}")]
    Contention(sqlx::Error),
    #[error("postgres: {0}")]
    Db(sqlx::Error),
    #[error(transparent)]
    Generation(#[from] GenerationError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    KafkaSettings(#[from] funnel_runtime::kafka::SecurityError),
    #[error("{0} (FUNNEL_TOPIC_MESSAGES)")]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Rules(#[from] crate::rulebook::RulebookError),
    #[error("reading {topic}: {detail}")]
    Read { topic: String, detail: String },
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<sqlx::Error> for ReplayError {
    /// 55P03 lock_not_available (lock_timeout) and 40P01 deadlock_detected are contention a
    /// later attempt gets past; anything else is not.
    fn from(e: sqlx::Error) -> Self {
        let code = e.as_database_error().and_then(|d| d.code());
        if code.is_some_and(|c| c == "55P03" || c == "40P01") {
            ReplayError::Contention(e)
        } else {
            ReplayError::Db(e)
        }
    }
}

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

    #[test]
    fn refusals_list_every_reason() {
        let e = ReplayError::Refused(vec!["partition 0: a".into(), "partition 3: b".into()]);
        assert_eq!(
            e.to_string(),
            "replay refused:\n  - partition 0: a\n  - partition 3: b\n(docs/replay.md says what the topic must retain)"
        );
    }
}
