//! One pipeline per generation that is live or being built (docs/replay.md), started and
//! stopped as generations come and go, without a restart. The live generation's pipeline
//! failing stops the processor; a replay's is retried a little later, so it never stops the
//! live sink.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::generation::{self, GenState, Generation};
use crate::http::Started;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::replay::check_kafka_offsets;
use crate::rulebook::Rulebook;
use crate::settings::Settings;

/// How long a failed replay pipeline waits before it is started again.
const REPLAY_RETRY: Duration = Duration::from_secs(30);

/// A generation's pipeline that is running.
struct Running {
    generation: Generation,
    token: CancellationToken,
    /// Whether the generation is live; flipped at the switch, read by its pipeline.
    live: Arc<AtomicBool>,
}

struct Supervisor {
    settings: Settings,
    metrics: Arc<Metrics>,
    started: Started,
    shutdown: CancellationToken,
    running: HashMap<i32, Running>,
    tasks: JoinSet<(i32, anyhow::Result<()>)>,
    /// Failed replay pipelines, and when they may start again.
    retry_after: HashMap<i32, Instant>,
}

/// Keeps one pipeline running per active generation until `shutdown`, or until the live
/// generation's pipeline fails.
pub async fn supervise(
    settings: &Settings,
    pool: &PgPool,
    metrics: &Arc<Metrics>,
    started: &Started,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.state_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the state folder {} (FUNNEL_STATE_DIR): {e}",
            settings.state_dir.display()
        )
    })?;
    generation::adopt_legacy_state(&settings.state_dir)?;
    let mut s = Supervisor {
        settings: settings.clone(),
        metrics: metrics.clone(),
        started: started.clone(),
        shutdown: shutdown.clone(),
        running: HashMap::new(),
        tasks: JoinSet::new(),
        retry_after: HashMap::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(settings.rules_poll_ms));
    let mut first = true;
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(done) = s.tasks.join_next() => {
                if let Err(e) = s.ended(done) {
                    break Err(e);
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let active = match generation::active(pool).await {
            Ok(a) => a,
            Err(e) if !first => {
                tracing::warn!(error = %e, "could not look up the generations");
                continue;
            }
            Err(e) => break Err(e.into()),
        };
        if first {
            let keep: Vec<i32> = active.iter().map(|g| g.number).collect();
            generation::remove_stale_state(&settings.state_dir, &keep)?;
            first = false;
        }
        s.follow(active);
        s.remove_stopped_state();
    };
    s.stop_all().await;
    result
}

impl Supervisor {
    /// A pipeline ended: fatal for the live generation's, a retry later for a replay's.
    fn ended(
        &mut self,
        done: Result<(i32, anyhow::Result<()>), tokio::task::JoinError>,
    ) -> anyhow::Result<()> {
        let (number, outcome) = done.map_err(|e| anyhow::anyhow!("a pipeline task failed: {e}"))?;
        let Some(r) = self.running.remove(&number) else {
            return Ok(());
        };
        if r.token.is_cancelled() {
            return Ok(());
        }
        let error = outcome
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("the pipeline of generation {number} stopped"));
        if r.generation.state == GenState::Live {
            return Err(error);
        }
        // A replay's failure must not stop the live sink: it is retried a little later, and
        // `replay status` shows no progress meanwhile.
        tracing::error!(
            generation = number,
            error = %format!("{error:#}"),
            "the pipeline of the generation being built failed; retrying in 30 s"
        );
        self.retry_after
            .insert(number, Instant::now() + REPLAY_RETRY);
        Ok(())
    }

    /// Starts the pipelines of new active generations, stops those of generations no longer
    /// active (switched away from, or abandoned), and tells a pipeline when its generation
    /// becomes live.
    fn follow(&mut self, active: Vec<Generation>) {
        for r in self.running.values() {
            if !active.iter().any(|g| g.number == r.generation.number) {
                tracing::info!(
                    generation = r.generation.number,
                    "generation no longer active; stopping its pipeline"
                );
                r.token.cancel();
            }
        }
        for g in active {
            let is_live = g.state == GenState::Live;
            if let Some(r) = self.running.get_mut(&g.number) {
                if r.generation.state != g.state {
                    tracing::info!(generation = g.number, state = ?g.state, "generation changed state");
                    r.live.store(is_live, Ordering::Relaxed);
                    r.generation = g;
                }
                continue;
            }
            if self
                .retry_after
                .get(&g.number)
                .is_some_and(|t| Instant::now() < *t)
            {
                continue;
            }
            let token = self.shutdown.child_token();
            let live = Arc::new(AtomicBool::new(is_live));
            let run = run_generation(
                self.settings.clone(),
                g.clone(),
                live.clone(),
                self.metrics.clone(),
                self.started.clone(),
                token.clone(),
            );
            let number = g.number;
            self.tasks.spawn(async move { (number, run.await) });
            self.running.insert(
                number,
                Running {
                    generation: g,
                    token,
                    live,
                },
            );
        }
    }

    /// Deletes the state folders of stopped generations once their pipelines have ended (a
    /// failed replay pipeline waiting for its retry keeps its state).
    fn remove_stopped_state(&self) {
        if !self.running.is_empty() && self.tasks.len() != self.running.len() {
            return;
        }
        let keep: Vec<i32> = self
            .running
            .keys()
            .chain(self.retry_after.keys())
            .copied()
            .collect();
        if let Err(e) = generation::remove_stale_state(&self.settings.state_dir, &keep) {
            tracing::warn!(error = %e, "could not delete the state of a stopped generation");
        }
    }

    async fn stop_all(mut self) {
        for r in self.running.values() {
            r.token.cancel();
        }
        while let Some(done) = self.tasks.join_next().await {
            if let Ok((n, Err(e))) = done {
                tracing::warn!(generation = n, error = %format!("{e:#}"), "pipeline ended with an error");
            }
        }
    }
}

/// One generation's pipeline: its own pool (search path on its schema), consumer group and
/// RocksDB folder.
async fn run_generation(
    settings: Settings,
    g: Generation,
    live: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    started: Started,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let pool = generation::connect(&settings.database.url, &g.schema).await?;
    let rules = Rulebook::load(&pool).await?;
    let group = g.consumer_group(&settings.consumer_group);
    // A reset of the group's offsets by another tool is refused, never silently followed or
    // ignored (docs/replay.md).
    let also = (g.state == GenState::Live).then_some(settings.consumer_group.as_str());
    check_kafka_offsets(&settings, &group, also, &pool).await?;
    tracing::info!(
        generation = g.number,
        state = ?g.state,
        schema = %g.schema,
        topic = %settings.kafka.topic_messages,
        group = %group,
        http = %settings.http_addr,
        builtin_rule_set_version = rules.builtin().version(),
        "processor starting"
    );
    let span = tracing::info_span!("generation", n = g.number);
    async move {
        let is_live = g.state == GenState::Live;
        let pipeline = Pipeline::new(settings, &g, live, pool, rules, metrics).await?;
        if is_live {
            started.set();
        }
        pipeline.run(token).await
    }
    .instrument(span)
    .await
}
