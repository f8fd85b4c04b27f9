//! The fatal configuration checks on the input topics, at a pipeline's start: they exist, the
//! co-partitioned ones have the messages topic's partition count, and that count is the one
//! the sink first saw (contacts are placed by murmur2(key) mod partitions).

use funnel_runtime::kafka::{partitions_of, TopicError};
use rdkafka::consumer::{Consumer, ConsumerContext};
use sqlx::PgPool;

#[derive(Debug, thiserror::Error)]
pub enum TopicCheckError {
    #[error("cannot read the metadata of topic {topic} (FUNNEL_KAFKA_BROKERS): {reason}")]
    Metadata { topic: String, reason: String },
    #[error(
        "input topic {topic} does not exist; create it (same partition count as {main}) or fix \
         FUNNEL_TOPIC_MESSAGES / FUNNEL_CO_PARTITIONED_TOPICS"
    )]
    Missing { topic: String, main: String },
    #[error(
        "topic {topic} has {count} partitions but {main} has {main_count}: input topics must be co-partitioned \
         (same partition count, keyed by contact) so one contact's events meet on one partition; \
         recreate {topic} with {main_count} partitions"
    )]
    NotCoPartitioned {
        topic: String,
        count: usize,
        main: String,
        main_count: usize,
    },
    #[error(
        "topic {main} has {count} partitions but consumer group {group} was built on {seen}: \
         contacts are placed by murmur2(key) mod partitions, so they would move between \
         partitions and their funnel state would split. Keep {seen} partitions, or reset \
         the sink as docs/exactly-once.md (\"Resetting the sink\") says"
    )]
    PartitionsChanged {
        main: String,
        count: usize,
        group: String,
        seen: i32,
    },
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
}

/// Checks `main` and the `co_partitioned` topics for the sink of consumer `group`.
pub async fn check_topics<C: ConsumerContext + 'static>(
    consumer: &impl Consumer<C>,
    pool: &PgPool,
    group: &str,
    main: &str,
    co_partitioned: &[String],
) -> Result<(), TopicCheckError> {
    let count = |topic: &str| {
        tokio::task::block_in_place(|| partitions_of(consumer, topic))
            .map(|p| p.len())
            .map_err(|e| match e {
                TopicError::Missing(_) => TopicCheckError::Missing {
                    topic: topic.to_string(),
                    main: main.to_string(),
                },
                TopicError::Metadata { source, .. } => TopicCheckError::Metadata {
                    topic: topic.to_string(),
                    reason: source.to_string(),
                },
            })
    };
    let main_count = count(main)?;
    for topic in co_partitioned
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
    {
        let n = count(topic)?;
        if n != main_count {
            return Err(TopicCheckError::NotCoPartitioned {
                topic: topic.to_string(),
                count: n,
                main: main.to_string(),
                main_count,
            });
        }
    }
    let seen: Option<i32> = sqlx::query_scalar(
        "INSERT INTO funnel_sink_topics (consumer_group, topic, partitions) VALUES ($1, $2, $3)
         ON CONFLICT (consumer_group, topic) DO UPDATE SET partitions = funnel_sink_topics.partitions
         RETURNING partitions",
    )
    .bind(group)
    .bind(main)
    .bind(main_count as i32)
    .fetch_optional(pool)
    .await?;
    match seen {
        Some(seen) if seen as usize != main_count => Err(TopicCheckError::PartitionsChanged {
            main: main.to_string(),
            count: main_count,
            group: group.to_string(),
            seen,
        }),
        _ => Ok(()),
    }
}
