//! The cities' replicated view of every superhero: a state-based CRDT (a map of last-writer-wins
//! entries plus tombstones), pure and clock-free so its laws can be tested directly.
//!
//! Only a hero writes its own entry, and it stamps every write with a version that never goes
//! backwards — not even across a failover from a slightly older snapshot (see
//! [`next_version`]) — so "the higher version wins" is the whole conflict rule. Removal leaves a
//! tombstone: a *defeated* hero's tombstone is final (it never comes back, whatever version shows
//! up later); a *terminated* hero's tombstone only hides the entries it has seen, so the name can
//! be used again by a hero created later.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most heroes one roster holds; a merge beyond it keeps the entries it already has (the bound is
/// far above what the demo page can show).
pub const MAX_HEROES: usize = 10_000;

/// Most tombstones one roster keeps; beyond it the oldest terminated (not defeated) ones go first.
pub const MAX_TOMBSTONES: usize = 20_000;

/// What a hero is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// Out fighting crime.
    Patrolling,
    /// Regaining health.
    Resting,
}

impl Activity {
    /// The word the API and the page use.
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Patrolling => "patrolling",
            Activity::Resting => "resting",
        }
    }
}

/// One hero as the cities know it (written by the hero itself).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HeroEntry {
    /// Version of this write (the conflict rule: higher wins). First so that `Ord` compares it
    /// first; the other fields only break exact ties deterministically.
    pub version: u64,
    /// The hero's name (its key).
    pub name: String,
    /// The node the hero runs on.
    pub node: String,
    /// The city it is assigned to, if any.
    pub city: Option<String>,
    /// Health, 1..=100 while alive.
    pub health: i32,
    /// Fights won.
    pub fights_won: u32,
    /// Fights lost.
    pub fights_lost: u32,
    /// Patrolling or resting.
    pub activity: Activity,
}

/// Why a hero is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// Entries up to this version are hidden.
    pub version: u64,
    /// Defeated in battle: final, hides every version.
    pub defeated: bool,
}

impl Tombstone {
    fn hides(&self, entry: &HeroEntry) -> bool {
        self.defeated || entry.version <= self.version
    }

    fn join(self, other: Tombstone) -> Tombstone {
        Tombstone {
            version: self.version.max(other.version),
            defeated: self.defeated || other.defeated,
        }
    }
}

/// Heroes and tombstones; `merge` is commutative, associative and idempotent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    /// Live heroes by name.
    pub heroes: BTreeMap<String, HeroEntry>,
    /// Removed heroes by name.
    pub tombstones: BTreeMap<String, Tombstone>,
}

impl Roster {
    /// Add or replace `entry` if it is newer than what is known and not hidden by a tombstone.
    /// Returns whether anything changed.
    pub fn upsert(&mut self, entry: HeroEntry) -> bool {
        if self
            .tombstones
            .get(&entry.name)
            .is_some_and(|t| t.hides(&entry))
        {
            return false;
        }
        match self.heroes.get(&entry.name) {
            Some(known) if *known >= entry => false,
            None if self.heroes.len() >= MAX_HEROES => false,
            _ => {
                self.heroes.insert(entry.name.clone(), entry);
                true
            }
        }
    }

    /// Record that `name` is gone (as of `version`). Returns whether anything changed.
    pub fn remove(&mut self, name: &str, tombstone: Tombstone) -> bool {
        let joined = match self.tombstones.get(name) {
            Some(t) => t.join(tombstone),
            None => tombstone,
        };
        let changed = self.tombstones.get(name) != Some(&joined);
        self.tombstones.insert(name.to_owned(), joined);
        let hidden = self.heroes.get(name).is_some_and(|e| joined.hides(e));
        if hidden {
            self.heroes.remove(name);
        }
        self.trim_tombstones();
        changed || hidden
    }

    /// Whether `name` was defeated (it never comes back).
    pub fn is_defeated(&self, name: &str) -> bool {
        self.tombstones.get(name).is_some_and(|t| t.defeated)
    }

    /// Merge `other` into this roster. Returns whether anything changed.
    pub fn merge(&mut self, other: Roster) -> bool {
        let mut changed = false;
        for (name, t) in other.tombstones {
            changed |= self.remove(&name, t);
        }
        for (_, e) in other.heroes {
            changed |= self.upsert(e);
        }
        changed
    }

    /// The part of this roster about `names` (a delta to gossip).
    pub fn subset<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> Roster {
        let mut out = Roster::default();
        for n in names {
            if let Some(e) = self.heroes.get(n) {
                out.heroes.insert(n.clone(), e.clone());
            }
            if let Some(t) = self.tombstones.get(n) {
                out.tombstones.insert(n.clone(), *t);
            }
        }
        out
    }

    fn trim_tombstones(&mut self) {
        while self.tombstones.len() > MAX_TOMBSTONES {
            let oldest = self
                .tombstones
                .iter()
                .filter(|(_, t)| !t.defeated)
                .min_by_key(|(_, t)| t.version)
                .map(|(n, _)| n.clone());
            match oldest {
                Some(n) => {
                    self.tombstones.remove(&n);
                }
                None => break,
            }
        }
    }
}

/// The next version for a hero whose last write was `last`, at wall-clock `now_ms`: a hybrid
/// logical clock, so a hero restored from an older snapshot on another node still writes versions
/// above everything it wrote before the failover (as long as clocks agree within the time the
/// failover took).
pub fn next_version(last: u64, now_ms: u64) -> u64 {
    (last + 1).max(now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str, version: u64, health: i32) -> HeroEntry {
        HeroEntry {
            version,
            name: name.into(),
            node: "n".into(),
            city: None,
            health,
            fights_won: 0,
            fights_lost: 0,
            activity: Activity::Resting,
        }
    }

    fn t(version: u64, defeated: bool) -> Tombstone {
        Tombstone { version, defeated }
    }

    /// A few rosters built from interleaved writes, to check the merge laws on.
    fn samples() -> Vec<Roster> {
        let mut out = Vec::new();
        let ops: [&[(&str, u64, Option<bool>)]; 4] = [
            &[("a", 1, None), ("b", 2, None), ("a", 3, None)],
            &[("a", 2, None), ("a", 2, Some(false)), ("c", 1, None)],
            &[("b", 5, None), ("c", 4, Some(true)), ("a", 4, None)],
            &[("c", 9, None), ("b", 1, Some(false)), ("d", 7, None)],
        ];
        for list in ops {
            let mut r = Roster::default();
            for &(n, v, tomb) in list {
                match tomb {
                    None => {
                        r.upsert(e(n, v, v as i32));
                    }
                    Some(d) => {
                        r.remove(n, t(v, d));
                    }
                }
            }
            out.push(r);
        }
        out
    }

    fn merged(a: &Roster, b: &Roster) -> Roster {
        let mut x = a.clone();
        x.merge(b.clone());
        x
    }

    #[test]
    fn merge_is_commutative_associative_idempotent() {
        let s = samples();
        for a in &s {
            assert_eq!(merged(a, a), *a, "idempotent");
            for b in &s {
                assert_eq!(merged(a, b), merged(b, a), "commutative");
                for c in &s {
                    assert_eq!(
                        merged(&merged(a, b), c),
                        merged(a, &merged(b, c)),
                        "associative"
                    );
                }
            }
        }
    }

    #[test]
    fn newer_entry_wins_and_defeat_is_final() {
        let mut r = Roster::default();
        assert!(r.upsert(e("a", 2, 50)));
        assert!(!r.upsert(e("a", 1, 90)), "older write loses");
        assert!(r.remove("a", t(3, true)));
        assert!(
            !r.upsert(e("a", 100, 100)),
            "a defeated hero never comes back"
        );
        assert!(r.is_defeated("a"));
    }

    #[test]
    fn terminated_name_can_be_reused_by_a_newer_hero() {
        let mut r = Roster::default();
        r.upsert(e("a", 2, 50));
        r.remove("a", t(5, false));
        assert!(
            !r.upsert(e("a", 4, 50)),
            "a write the tombstone saw stays hidden"
        );
        assert!(r.upsert(e("a", 6, 100)), "a hero created later shows");
    }

    #[test]
    fn versions_never_go_backwards() {
        assert_eq!(next_version(10, 5), 11);
        assert_eq!(next_version(10, 50), 50);
    }
}

/// What a hero running on a node tells that node's city.
#[derive(Debug, Clone)]
pub enum HeroReport {
    /// The hero changed.
    Status(HeroEntry),
    /// The hero is gone.
    Gone {
        /// Its name.
        name: String,
        /// Its tombstone.
        tombstone: Tombstone,
    },
}
