//! A set of records keyed by id, each owned by a user, with the rules every store of them
//! applies on a write (API tokens, drop links): what an in-memory store holds, and what a file
//! store reads, changes and writes back.
//!
//! On every insert records already expired at the new one's creation are dropped, so expired
//! records never count against the caps; an id is never reused while its record is there.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

/// What a table holds.
pub trait Record: Clone + PartialEq + Eq + fmt::Debug {
    /// The public id.
    type Id: Copy + Ord + fmt::Display + fmt::Debug;
    /// What a refused change answers.
    type Error;
    /// The record's name in messages: `token`, `link`.
    const NOUN: &'static str;
    /// Most records a table holds.
    const MAX: usize;
    /// Most live records one owner may have.
    const MAX_PER_OWNER: usize;

    fn id(&self) -> Self::Id;
    fn owner(&self) -> &str;
    fn created(&self) -> SystemTime;
    fn is_expired(&self, now: SystemTime) -> bool;
    /// The record's own rules (fields, lengths).
    fn validate(&self) -> Result<(), Self::Error>;

    fn invalid(reason: String) -> Self::Error;
    fn already_exists(id: Self::Id) -> Self::Error;
    fn not_found(id: Self::Id) -> Self::Error;
    fn full(reason: String) -> Self::Error;
}

/// Records by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordTable<R: Record> {
    pub(crate) by_id: BTreeMap<R::Id, R>,
}

impl<R: Record> Default for RecordTable<R> {
    fn default() -> Self {
        RecordTable {
            by_id: BTreeMap::new(),
        }
    }
}

impl<R: Record> RecordTable<R> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// A table of records read from a store, each checked with [`Record::validate`], with no
    /// id twice, and within [`Record::MAX`] and [`Record::MAX_PER_OWNER`].
    pub fn from_records(records: Vec<R>) -> Result<Self, R::Error> {
        let noun = R::NOUN;
        if records.len() > R::MAX {
            return Err(R::invalid(format!(
                "{} {noun}s, more than the most a store holds ({})",
                records.len(),
                R::MAX
            )));
        }
        let mut per_owner: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &records {
            let n = per_owner.entry(r.owner()).or_default();
            *n += 1;
            if *n > R::MAX_PER_OWNER {
                return Err(R::invalid(format!(
                    "user `{}` has more than {} {noun}s",
                    r.owner().escape_debug(),
                    R::MAX_PER_OWNER
                )));
            }
        }
        let mut table = Self::new();
        for r in records {
            r.validate()?;
            let id = r.id();
            if table.by_id.insert(id, r).is_some() {
                return Err(R::invalid(format!("{noun} {id} appears twice")));
            }
        }
        Ok(table)
    }

    /// The record with this id.
    pub fn get(&self, id: R::Id) -> Option<&R> {
        self.by_id.get(&id)
    }

    /// Every record (in id order).
    pub fn records(&self) -> impl Iterator<Item = &R> {
        self.by_id.values()
    }

    /// How many records the table holds.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the table holds no record.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The records of `owner` (every record for `None`), sorted by owner, created, id.
    pub fn list(&self, owner: Option<&str>) -> Vec<R> {
        let mut out: Vec<R> = self
            .by_id
            .values()
            .filter(|r| owner.is_none_or(|o| r.owner() == o))
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.owner(), a.created(), a.id()).cmp(&(b.owner(), b.created(), b.id())));
        out
    }

    /// Adds `record`; on an error the table is unchanged.
    pub fn insert(&mut self, record: R) -> Result<(), R::Error> {
        let noun = R::NOUN;
        record.validate()?;
        if self.by_id.contains_key(&record.id()) {
            return Err(R::already_exists(record.id()));
        }
        let now = record.created();
        let live = |r: &R| !r.is_expired(now);
        let of_owner = self
            .by_id
            .values()
            .filter(|r| r.owner() == record.owner() && live(r))
            .count();
        if of_owner >= R::MAX_PER_OWNER {
            return Err(R::full(format!(
                "user `{}` has {} {noun}s already, the most; delete one first",
                record.owner().escape_debug(),
                R::MAX_PER_OWNER
            )));
        }
        if self.by_id.values().filter(|r| live(r)).count() >= R::MAX {
            return Err(R::full(format!(
                "the store holds {} {noun}s already, the most",
                R::MAX
            )));
        }
        self.by_id.retain(|_, r| live(r));
        self.by_id.insert(record.id(), record);
        Ok(())
    }

    /// Removes the record with this id.
    pub fn remove(&mut self, id: R::Id) -> Result<R, R::Error> {
        self.by_id.remove(&id).ok_or_else(|| R::not_found(id))
    }

    /// Removes every record of `owner`, returning how many went.
    pub fn remove_user(&mut self, owner: &str) -> usize {
        let before = self.by_id.len();
        self.by_id.retain(|_, r| r.owner() != owner);
        before - self.by_id.len()
    }
}
