//! A replay completes the new generation's tables (logged, indexes, funnel_daily, triggers)
//! while the running processors may still be writing batches of it.

use std::time::Duration;

use funnel_runtime::sink::{commit_batch, ContactRow, OffsetMove};
use funnel_schemas::fold::ContactState;

use crate::harness::{eventually, Stack};

const SCHEMA: &str = "funnel_gen_7";

async fn batch(
    pool: sqlx::PgPool,
    stack_group: String,
    topic: String,
    from: Option<i64>,
    phone: &str,
) {
    let state = ContactState {
        seen: vec![funnel_schemas::fold::id_hash(phone)],
        first_message_at: Some(1_700_000_000_000),
        last_message_at: Some(1_700_000_000_000),
        ..ContactState::default()
    };
    let contact = ContactRow {
        tenant: "default",
        phone,
        state: &state,
    };
    let to = from.unwrap_or(0) + 1;
    let moved = OffsetMove {
        partition: 0,
        from,
        start: from.unwrap_or(0),
        to,
    };
    commit_batch(&pool, &stack_group, &topic, &[contact], &[], &[moved], &[])
        .await
        .expect("the batch commits");
}

/// The sink's batch locks its offsets row first and writes funnel_contacts after. The
/// completion used to lock funnel_contacts first and the offsets table later, so a batch in
/// between deadlocked with it and PostgreSQL aborted one of the two (the replay then failed).
/// Here a batch is held right after its offsets update while the completion starts: both must
/// succeed, the batch first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completing_the_tables_waits_for_a_batch_in_flight() {
    let stack = Stack::new(1).await;
    sqlx::query("SELECT funnel_create_generation_tables($1, funnel_live_schema())")
        .bind(SCHEMA)
        .execute(&stack.pool)
        .await
        .expect("create the generation's tables");
    // Only the generation being built may be completed.
    sqlx::query(
        "INSERT INTO funnel_generations (generation, schema_name, state, group_suffix) VALUES (7, $1, 'building', '-g7')",
    )
    .bind(SCHEMA)
    .execute(&stack.pool)
    .await
    .expect("the generation's row");
    let pool = funnel_processor::generation::connect(&stack.database_url, SCHEMA)
        .await
        .expect("connect");
    batch(
        pool.clone(),
        stack.group.clone(),
        stack.topic.clone(),
        None,
        "+6281100000001",
    )
    .await;

    // The next batch sleeps between its offsets update and its contacts upsert.
    sqlx::query(&format!(
        "CREATE FUNCTION {SCHEMA}.hold() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$"
    ))
    .execute(&stack.pool)
    .await
    .expect("create the hold function");
    sqlx::query(&format!(
        "CREATE TRIGGER hold AFTER UPDATE ON {SCHEMA}.funnel_sink_offsets
         FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.hold()"
    ))
    .execute(&stack.pool)
    .await
    .expect("create the hold trigger");
    let held = tokio::spawn(batch(
        pool.clone(),
        stack.group.clone(),
        stack.topic.clone(),
        Some(1),
        "+6281100000002",
    ));
    eventually(20, "the batch to hold its offsets row", || {
        let pool = stack.pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event = 'PgSleep'",
            )
            .fetch_one(&pool)
            .await
            .expect("pg_stat_activity");
            (n > 0).then_some(())
        }
    })
    .await;

    let mut tx = stack.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL lock_timeout = '60s'")
        .execute(&mut *tx)
        .await
        .expect("lock_timeout");
    let completed =
        sqlx::query("SELECT funnel_complete_generation_tables($1, funnel_live_schema())")
            .bind(SCHEMA)
            .execute(&mut *tx)
            .await;
    let completed = match completed {
        Ok(_) => tx.commit().await,
        Err(e) => Err(e),
    };
    let held = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("the held batch ends");
    assert!(held.is_ok(), "the batch in flight failed: {held:?}");
    assert!(completed.is_ok(), "the completion failed: {completed:?}");

    let (contacts, next, logged): (i64, i64, bool) = sqlx::query_as(&format!(
        "SELECT (SELECT count(*) FROM {SCHEMA}.funnel_contacts),
                (SELECT next_offset FROM {SCHEMA}.funnel_sink_offsets),
                (SELECT relpersistence = 'p' FROM pg_class WHERE oid = '{SCHEMA}.funnel_contacts'::regclass)"
    ))
    .fetch_one(&stack.pool)
    .await
    .expect("read the generation");
    assert_eq!((contacts, next, logged), (2, 2, true));
}
