//! The rest of Elixir `Registry`'s and Horde's API over [`Names`]: matching metadata
//! (`match`/`count_match`), sending to a group (`dispatch`), unregistering by pattern
//! (`unregister_match`), updating a value from its current one (`update_value`), and the names
//! and groups an actor holds (`keys`). Patterns are Rust predicates over the decoded metadata.

use super::*;

impl Names {
    /// The members of `group` that are `A`s and whose metadata decodes as an `M` satisfying
    /// `pred`, on every node (Elixir's `Registry.match/3` on a duplicate registry).
    pub fn match_members<A: RemoteActor, M: DeserializeOwned>(
        &self,
        group: &str,
        mut pred: impl FnMut(&M) -> bool,
    ) -> Vec<(ActorRef<A>, M)> {
        let mut found = self.members_meta::<A, M>(group);
        found.retain(|(_, m)| pred(m));
        found
    }

    /// How many members of `group` (of any actor type) have metadata that decodes as an `M`
    /// satisfying `pred` (`Registry.count_match/3`). Reads the local replica; no message is sent.
    pub fn count_match<M: DeserializeOwned>(
        &self,
        group: &str,
        mut pred: impl FnMut(&M) -> bool,
    ) -> usize {
        self.with(|t| {
            t.members(group)
                .filter(|(_, m)| postcard::from_bytes::<M>(m.meta).is_ok_and(|meta| pred(&meta)))
                .count()
        })
        .unwrap_or(0)
    }

    /// Casts a copy of `msg` to every `A` in `group`, on every node (`Registry.dispatch/3` used
    /// for pub-sub); returns how many casts were accepted. Each cast waits for room in its
    /// mailbox or lane, so a slow member slows the sender rather than losing messages.
    pub async fn dispatch<A: RemoteActor>(&self, group: &str, msg: A::Msg) -> usize
    where
        A::Msg: Clone,
    {
        let mut delivered = 0;
        for member in self.members::<A>(group) {
            if member.cast(msg.clone()).await.is_ok() {
                delivered += 1;
            }
        }
        delivered
    }

    /// Drops this node's registrations whose name and metadata (decoded as an `M`) satisfy
    /// `pred` (`Registry.unregister_match/4`); their actors keep running. Returns how many were
    /// dropped.
    pub fn unregister_match<M: DeserializeOwned>(
        &self,
        mut pred: impl FnMut(&str, &M) -> bool,
    ) -> usize {
        let Ok(shared) = self.shared() else {
            return 0;
        };
        let matching: Vec<String> = {
            let inner = shared.names.read();
            inner
                .holders
                .keys()
                .filter(|name| {
                    inner.table.lookup(name).is_some_and(|(node, e)| {
                        *node == shared.names.me.id
                            && postcard::from_bytes::<M>(&e.meta).is_ok_and(|m| pred(name, &m))
                    })
                })
                .cloned()
                .collect()
        };
        matching
            .iter()
            .filter(|name| self.unregister(name).is_ok())
            .count()
    }

    /// Takes the local `actor` out of `group` if its metadata there (decoded as an `M`) satisfies
    /// `pred` (`Registry.unregister_match/4` on a duplicate registry). Returns whether it left.
    pub fn leave_match<A: RemoteActor, M: DeserializeOwned>(
        &self,
        group: &str,
        actor: &ActorRef<A>,
        mut pred: impl FnMut(&M) -> bool,
    ) -> Result<bool, NamesError> {
        let shared = self.shared()?;
        let value = Addr::member::<A>(actor.id()).encode();
        let matches = {
            let inner = shared.names.read();
            let found = inner.table.members(group).any(|(node, m)| {
                *node == shared.names.me.id
                    && m.value == value.as_slice()
                    && postcard::from_bytes::<M>(m.meta).is_ok_and(|meta| pred(&meta))
            });
            found
        };
        if matches {
            self.leave(group, actor)?;
        }
        Ok(matches)
    }

    /// Replaces the metadata of this node's registration of `name` with `f(current)`, atomically
    /// with respect to other writers on this node (`Registry.update_value/3`); returns the new
    /// and the old metadata.
    pub fn update_meta_with<M: Serialize + DeserializeOwned + Clone>(
        &self,
        name: &str,
        f: impl FnOnce(M) -> M,
    ) -> Result<(M, M), NamesError> {
        let shared = self.shared()?;
        {
            let mut inner = shared.names.write();
            let old: M = match inner.table.lookup(name) {
                Some((node, e)) if *node == shared.names.me.id => decode_meta(&e.meta)?,
                _ => {
                    return Err(NamesError::Table(NameError::NotRegistered {
                        name: name.to_owned(),
                    }))
                }
            };
            let new = f(old.clone());
            let delta = inner.table.update_meta(name, encode_meta(&new)?)?;
            inner.queue(delta);
            drop(inner);
            shared.names.notify.notify_one();
            Ok((new, old))
        }
    }

    /// The names the local actor `actor` holds (`Registry.keys/2`), sorted.
    pub fn names_of(&self, actor: ActorId) -> Vec<String> {
        self.local_actor(actor, |a| a.names.iter().cloned().collect())
    }

    /// The groups the local actor `actor` is a member of, sorted.
    pub fn groups_of(&self, actor: ActorId) -> Vec<String> {
        self.local_actor(actor, |a| a.groups.iter().cloned().collect())
    }

    fn local_actor(
        &self,
        actor: ActorId,
        f: impl FnOnce(&LocalActor) -> Vec<String>,
    ) -> Vec<String> {
        let Ok(shared) = self.shared() else {
            return Vec::new();
        };
        let mut v = shared
            .names
            .read()
            .actors
            .get(&actor)
            .map(f)
            .unwrap_or_default();
        v.sort();
        v
    }
}
