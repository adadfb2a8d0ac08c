//! What is free for the sync to hand out: service and backend ids (dense from 0, reused) and
//! ranges of Maglev slots (first fit, coalesced). The grace period before a retired id or range
//! comes back here is the parent's business.

use std::collections::BTreeMap;

/// Ids handed out densely from 0; freed ids are reused.
#[derive(Debug)]
pub(super) struct IdPool {
    pub(super) next: u32,
    pub(super) free: Vec<u32>,
    pub(super) capacity: u32,
    /// Ids from here on were never handed out since their maps were created empty, so their
    /// counters are still zero and need no reset (at a first load: 110,000 per-CPU writes
    /// fewer for 10,000 Services × 10 endpoints). Adopted maps: `u32::MAX` (nothing known).
    pub(super) clean_from: u32,
}

impl IdPool {
    pub(super) fn new(capacity: u32) -> Self {
        Self {
            next: 0,
            free: Vec::new(),
            capacity,
            clean_from: 0,
        }
    }
    /// An id, with whether its counters are known to be zero (never handed out since its
    /// maps were created empty).
    pub(super) fn allocate_clean(&mut self) -> Option<(u32, bool)> {
        if let Some(id) = self.free.pop() {
            return Some((id, false));
        }
        (self.next < self.capacity).then(|| {
            let id = self.next;
            self.next += 1;
            (id, id >= self.clean_from)
        })
    }
    pub(super) fn release(&mut self, id: u32) {
        self.free.push(id);
    }
}

/// Free ranges of the slot space, first fit, coalesced on release.
#[derive(Debug)]
pub(super) struct SlotPool {
    free: BTreeMap<u32, u32>,
}

impl SlotPool {
    pub(super) fn new(capacity: u32) -> Self {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        Self { free }
    }
    pub(super) fn allocate(&mut self, len: u32) -> Option<u32> {
        let (&offset, &available) = self.free.iter().find(|(_, &l)| l >= len)?;
        self.free.remove(&offset);
        if available > len {
            self.free.insert(offset + len, available - len);
        }
        Some(offset)
    }

    /// Takes exactly `offset..offset + len` (adopting a table); false when any of it is in use.
    pub(super) fn take(&mut self, offset: u32, len: u32) -> bool {
        let Some((&start, &available)) = self.free.range(..=offset).next_back() else {
            return false;
        };
        let (end, wanted_end) = (start as u64 + available as u64, offset as u64 + len as u64);
        if wanted_end > end {
            return false;
        }
        self.free.remove(&start);
        if offset > start {
            self.free.insert(start, offset - start);
        }
        if end > wanted_end {
            self.free.insert(offset + len, (end - wanted_end) as u32);
        }
        true
    }

    pub(super) fn release(&mut self, mut offset: u32, mut len: u32) {
        if len == 0 {
            return;
        }
        if let Some((&before, &before_len)) = self.free.range(..offset).next_back() {
            if before + before_len == offset {
                self.free.remove(&before);
                offset = before;
                len += before_len;
            }
        }
        if let Some(&after_len) = self.free.get(&(offset + len)) {
            self.free.remove(&(offset + len));
            len += after_len;
        }
        self.free.insert(offset, len);
    }
}
