//! Per-contact fold state in RocksDB, partitioned like the input topic, plus a checkpoint per
//! partition: the next offset the state includes. The checkpoint is written in the same
//! RocksDB write batch as the state, after the PostgreSQL commit, and compared with the
//! offset stored in PostgreSQL before the state of a partition is trusted.

use std::path::Path;

use rocksdb::{WriteBatch, DB};

use funnel_schemas::fold::ContactState;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt state record: {0}")]
    Corrupt(#[from] serde_json::Error),
}

pub struct StateStore {
    db: DB,
}

const STATE: u8 = b's';
const CHECKPOINT: u8 = b'o';
/// The key of the state format version.
const FORMAT_KEY: &[u8] = b"format";
/// Bumped whenever the stored layout of [`ContactState`] changes. A store of another format is
/// emptied on open; every partition then lacks its checkpoint and is rebuilt from the log.
/// 2: message ids within the dedup window instead of every id.
/// 3: every message id again, as 8-byte hashes (exact counts at any lateness).
const FORMAT: u64 = 3;

fn state_key(partition: i32, tenant: &str, phone: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + tenant.len() + phone.len());
    k.push(STATE);
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(phone.as_bytes());
    k
}

fn partition_prefix(partition: i32) -> Vec<u8> {
    let mut k = vec![STATE];
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k
}

fn checkpoint_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = vec![CHECKPOINT];
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// The changes of one batch, applied atomically.
#[derive(Default)]
pub struct StateBatch {
    inner: WriteBatch,
}

impl StateBatch {
    pub fn put_contact(
        &mut self,
        partition: i32,
        tenant: &str,
        phone: &str,
        state: &ContactState,
    ) -> Result<(), StateError> {
        self.inner.put(
            state_key(partition, tenant, phone),
            serde_json::to_vec(state)?,
        );
        Ok(())
    }

    pub fn put_checkpoint(&mut self, topic: &str, partition: i32, next_offset: i64) {
        self.inner
            .put(checkpoint_key(topic, partition), next_offset.to_be_bytes());
    }
}

impl StateStore {
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Most lookups of a first message miss: a Bloom filter per file answers those without
        // reading the file's index and data blocks.
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, path)?;
        let stored = db
            .get_pinned(FORMAT_KEY)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok().map(u64::from_be_bytes));
        if stored != Some(FORMAT) {
            if stored.is_some() || db.iterator(rocksdb::IteratorMode::Start).next().is_some() {
                tracing::warn!(
                    found = ?stored,
                    expected = FORMAT,
                    "state store has another format; emptying it (partitions are rebuilt from the log)"
                );
            }
            let mut b = WriteBatch::default();
            b.delete_range(&[0u8][..], &[0xffu8; 16][..]);
            b.put(FORMAT_KEY, FORMAT.to_be_bytes());
            db.write(b)?;
        }
        Ok(Self { db })
    }

    pub fn contact(
        &self,
        partition: i32,
        tenant: &str,
        phone: &str,
    ) -> Result<Option<ContactState>, StateError> {
        match self.db.get_pinned(state_key(partition, tenant, phone))? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn checkpoint(&self, topic: &str, partition: i32) -> Result<Option<i64>, StateError> {
        Ok(self
            .db
            .get_pinned(checkpoint_key(topic, partition))?
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok().map(i64::from_be_bytes)))
    }

    /// Forgets everything about a partition (before rebuilding it).
    pub fn clear_partition(&self, topic: &str, partition: i32) -> Result<(), StateError> {
        let mut b = WriteBatch::default();
        b.delete_range(partition_prefix(partition), partition_prefix(partition + 1));
        b.delete(checkpoint_key(topic, partition));
        self.db.write(b)?;
        Ok(())
    }

    pub fn write(&self, batch: StateBatch) -> Result<(), StateError> {
        self.db.write(batch.inner)?;
        Ok(())
    }
}
