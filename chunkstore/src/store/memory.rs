//! A block store in memory, for fuzzing and tests that need no disk.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{BlockStore, ObjectKey, StoreError, MAX_TRACES_LISTED};
use crate::id::{ChainDigest, TraceDigest};

/// Objects in a map; nothing outlives the value.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<HashMap<ObjectKey, Vec<u8>>>,
}

impl MemoryStore {
    fn objects(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, Vec<u8>>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl BlockStore for MemoryStore {
    async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, StoreError> {
        self.objects()
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                store: self.location(),
                key: Box::new(*key),
            })
    }

    async fn exists(&self, key: &ObjectKey) -> Result<bool, StoreError> {
        Ok(self.objects().contains_key(key))
    }

    async fn put_replacing(&self, key: &ObjectKey, data: Vec<u8>) -> Result<(), StoreError> {
        self.objects().insert(*key, data);
        Ok(())
    }

    async fn list_traces(&self, chain: &ChainDigest) -> Result<Vec<TraceDigest>, StoreError> {
        let mut found: Vec<TraceDigest> = self
            .objects()
            .keys()
            .filter_map(|k| match k {
                ObjectKey::Trace(c, d) if c == chain => Some(*d),
                _ => None,
            })
            .collect();
        found.sort();
        found.truncate(MAX_TRACES_LISTED);
        Ok(found)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.objects().remove(key);
        Ok(())
    }

    fn location(&self) -> String {
        "memory".into()
    }
}
