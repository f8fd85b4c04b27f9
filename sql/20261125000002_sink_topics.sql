-- The partition count of each input topic as the sink first saw it. Contacts are placed on
-- partitions by murmur2(key) mod count, and state is kept per partition: a topic whose count
-- changed (partitions added, or the topic recreated) would move contacts between partitions,
-- so the processor refuses to start until an operator resets the sink (docs/exactly-once.md).
CREATE TABLE funnel_sink_topics (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partitions     integer     NOT NULL CHECK (partitions > 0),
    first_seen     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic)
);
