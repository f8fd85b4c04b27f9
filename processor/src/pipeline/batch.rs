//! The batch fold: a batch's decoded records folded into the states of their contacts, as a
//! synchronous function over a state lookup (the batch in flight, then RocksDB), so it is
//! tested without Kafka or PostgreSQL. It decides what the batch writes: the rows of the
//! contacts it touched, the stage events of records seen for the first time, how far each
//! partition got, and the poison records to dead-letter.

use std::collections::{BTreeMap, HashMap};

use funnel_runtime::sink::StageEventRow;
use funnel_schemas::fold::{ContactState, Event};
use funnel_schemas::rules::StageHit;
use funnel_schemas::ChatMessage;

use super::partitions::Progress;
use crate::decode::Poison;

/// A contact of one partition: (partition, tenant, contact key).
pub type Key = (i32, String, String);

/// Contact states by key.
pub type Working = HashMap<Key, ContactState>;

/// How a record is classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Classification {
    /// Under the rules active now.
    Now,
    /// As it was committed (its stage events and their rule set version; none when it reached
    /// no stage): a record re-read to rebuild state, or before a replay's boundary.
    Committed(Vec<StageHit>, i64),
}

/// One record of a batch, admitted (its partition is set up and it was not applied before)
/// and decoded. `source` is what the caller needs to dead-letter it.
#[derive(Debug)]
pub struct Record<S> {
    pub source: S,
    pub partition: i32,
    pub offset: i64,
    /// Re-read to rebuild state: folded, not written.
    pub rebuilding: bool,
    pub decoded: Result<ChatMessage, Poison>,
    pub classification: Classification,
    /// Poison the replaced generation already dead-lettered (a replay re-reading it).
    pub dead_lettered: bool,
}

/// A folded batch.
#[derive(Debug)]
pub struct Folded<S> {
    /// The state of every contact the batch read, rebuilt ones included.
    pub working: Working,
    /// The contacts whose rows the batch writes, in key order.
    pub touched: Vec<Key>,
    /// The stage events of records folded for the first time.
    pub events: Vec<StageEventRow>,
    pub progress: BTreeMap<i32, Progress>,
    /// Poison records to dead-letter before the offsets move past them.
    pub dead: Vec<(S, Poison)>,
    /// Records applied or dead-lettered (re-reads excluded), and duplicates among them.
    pub consumed: u64,
    pub duplicates: u64,
}

/// Folds `records` (in partition order) into the states `lookup` gives, classifying with
/// `classify` the records to be classified now.
pub fn fold_batch<S, E>(
    records: Vec<Record<S>>,
    classify: impl Fn(&ChatMessage) -> (Vec<StageHit>, i64),
    mut lookup: impl FnMut(&Key) -> Result<Option<ContactState>, E>,
) -> Result<Folded<S>, E> {
    let mut out = Folded {
        working: HashMap::with_capacity(records.len()),
        touched: Vec::new(),
        events: Vec::new(),
        progress: BTreeMap::new(),
        dead: Vec::new(),
        consumed: 0,
        duplicates: 0,
    };
    for r in records {
        let (p, offset) = (r.partition, r.offset);
        match r.decoded {
            Ok(m) => {
                let (hits, version) = match r.classification {
                    Classification::Now => classify(&m),
                    Classification::Committed(hits, version) => (hits, version),
                };
                let ev = Event::of(&m, hits, version);
                let key = (p, m.tenant.clone(), m.phone.clone());
                let state = match out.working.entry(key.clone()) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(lookup(&key)?.unwrap_or_default())
                    }
                };
                let fresh = state.apply(&ev);
                if !r.rebuilding {
                    if fresh {
                        out.events.extend(
                            ev.hits
                                .iter()
                                .map(|h| StageEventRow::of(&m, h, ev.rule_set_version, p, offset)),
                        );
                    } else {
                        out.duplicates += 1;
                    }
                    out.touched.push(key);
                }
            }
            Err(poison) if !r.rebuilding && !r.dead_lettered => out.dead.push((r.source, poison)),
            Err(_) => {}
        }
        let progress = out.progress.entry(p).or_insert(Progress {
            next: offset + 1,
            applied: None,
        });
        progress.next = offset + 1;
        if !r.rebuilding {
            out.consumed += 1;
            let first = progress.applied.map_or(offset, |(first, _)| first);
            progress.applied = Some((first, offset + 1));
        }
    }
    out.touched.sort();
    out.touched.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use funnel_schemas::rules::Stage;
    use funnel_schemas::Direction;
    use rust_decimal::Decimal;

    fn msg(phone: &str, id: &str, text: &str) -> ChatMessage {
        ChatMessage {
            event_id: id.into(),
            tenant: "t".into(),
            phone: phone.into(),
            channel: "ads".into(),
            direction: Direction::Inbound,
            text: text.into(),
            sent_at: 1_000,
            received_at: 2_000,
            conversation_id: None,
            campaign: None,
            source: None,
            metadata: Default::default(),
            ..Default::default()
        }
    }

    fn record(offset: i64, decoded: Result<ChatMessage, Poison>) -> Record<i64> {
        Record {
            source: offset,
            partition: 0,
            offset,
            rebuilding: false,
            decoded,
            classification: Classification::Now,
            dead_lettered: false,
        }
    }

    /// A lead for any text containing "promo", in rule set version 7.
    fn classify(m: &ChatMessage) -> (Vec<StageHit>, i64) {
        let hits = if m.text.contains("promo") {
            vec![StageHit {
                stage: Stage::Lead,
                rule_id: "l".into(),
                value: Decimal::ZERO,
            }]
        } else {
            vec![]
        };
        (hits, 7)
    }

    fn no_state(_: &Key) -> Result<Option<ContactState>, String> {
        Ok(None)
    }

    #[test]
    fn records_fold_per_contact_and_duplicates_write_no_events() {
        let records = vec![
            record(5, Ok(msg("+62811", "a", "promo"))),
            record(6, Ok(msg("+62822", "b", "halo"))),
            record(7, Ok(msg("+62811", "a", "promo"))),
            record(8, Ok(msg("+62811", "c", "info"))),
        ];
        let f = fold_batch(records, classify, no_state).expect("fold");
        assert_eq!(f.consumed, 4);
        assert_eq!(f.duplicates, 1);
        assert_eq!(f.events.len(), 1, "one lead, written once");
        assert_eq!(
            (f.events[0].event_id.as_str(), f.events[0].source_offset),
            ("a", 5)
        );
        assert_eq!(f.events[0].rule_set_version, 7);
        let key = |phone: &str| (0, "t".to_string(), phone.to_string());
        assert_eq!(f.touched, [key("+62811"), key("+62822")]);
        assert_eq!(f.working[&key("+62811")].message_count(), 2);
        assert_eq!(
            f.progress[&0],
            Progress {
                next: 9,
                applied: Some((5, 9))
            }
        );
    }

    #[test]
    fn states_come_from_the_lookup_once_per_contact() {
        let mut earlier = ContactState::default();
        let ev = Event::of(
            &msg("+62811", "old", "promo"),
            classify(&msg("", "", "promo")).0,
            3,
        );
        earlier.apply(&ev);
        let mut looked_up = Vec::new();
        let f = fold_batch(
            vec![
                record(0, Ok(msg("+62811", "new", "x"))),
                record(1, Ok(msg("+62811", "old", "promo"))),
            ],
            classify,
            |k: &Key| {
                looked_up.push(k.clone());
                Ok::<_, String>(Some(earlier.clone()))
            },
        )
        .expect("fold");
        assert_eq!(looked_up.len(), 1);
        let state = &f.working[&(0, "t".into(), "+62811".into())];
        assert_eq!(state.message_count(), 2, "the earlier state is folded on");
        assert_eq!(
            f.duplicates, 1,
            "an id of the looked-up state is a duplicate"
        );
        let err = fold_batch(
            vec![record(0, Ok(msg("+62811", "x", "x")))],
            classify,
            |_: &Key| Err::<Option<ContactState>, _>("rocksdb broke".to_string()),
        )
        .expect_err("the lookup's error");
        assert_eq!(err, "rocksdb broke");
    }

    #[test]
    fn rebuilt_records_fold_without_writing_and_keep_their_classification() {
        let mut rebuilt = record(3, Ok(msg("+62811", "a", "promo")));
        rebuilt.rebuilding = true;
        rebuilt.classification = Classification::Committed(vec![], 1);
        let mut kept = record(4, Ok(msg("+62811", "b", "info")));
        kept.classification = Classification::Committed(classify(&msg("", "", "promo")).0, 2);
        let f = fold_batch(vec![rebuilt, kept], classify, no_state).expect("fold");
        let state = &f.working[&(0, "t".into(), "+62811".into())];
        assert_eq!(state.message_count(), 2);
        assert_eq!(
            state.lead.as_ref().map(|l| l.event_id.as_str()),
            Some("b"),
            "the committed classification, not today's rules"
        );
        assert_eq!(f.events.len(), 1);
        assert_eq!(f.events[0].rule_set_version, 2);
        assert_eq!(f.consumed, 1, "re-reads are not consumed");
        assert_eq!(
            f.progress[&0],
            Progress {
                next: 5,
                applied: Some((4, 5))
            }
        );
    }

    #[test]
    fn poison_is_dead_lettered_once() {
        let poison = |why: &str| Err(Poison(why.into()));
        let mut rebuilt = record(1, poison("bad frame"));
        rebuilt.rebuilding = true;
        let mut replayed = record(2, poison("bad frame"));
        replayed.dead_lettered = true;
        let f = fold_batch(
            vec![rebuilt, replayed, record(3, poison("tombstone"))],
            classify,
            no_state,
        )
        .expect("fold");
        assert_eq!(f.dead, [(3, Poison("tombstone".into()))]);
        assert!(f.touched.is_empty());
        assert_eq!(f.consumed, 2, "dead letters count as consumed");
        assert_eq!(
            f.progress[&0],
            Progress {
                next: 4,
                applied: Some((2, 4))
            }
        );
    }
}
