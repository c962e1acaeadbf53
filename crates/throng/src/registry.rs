//! A local registry of actors: unique names with metadata, `via`-style addressing, and
//! duplicate-key groups for pub-sub — Elixir's `Registry` (`keys: :unique` and `keys: :duplicate`).
//!
//! Registration is synchronous, so an actor always sees its own registration at once. Entries are
//! removed automatically when their actor exits: the registry hangs a watcher on the actor's exit, and
//! the watcher only removes the entry if it still belongs to that actor (a name re-registered by a
//! restarted child is never removed by the exit of its predecessor).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use crate::{Actor, ActorHandle, ActorId, ActorRef, CallError, SendError, DEFAULT_CALL_TIMEOUT};

/// Default bound on entries (names plus group memberships) in one registry.
pub const DEFAULT_MAX_ENTRIES: usize = 1 << 24;

/// A registry operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The name is taken; `holder` is the actor that holds it.
    #[error("name {name:?} is already registered by actor {holder}")]
    AlreadyRegistered {
        /// The name.
        name: String,
        /// Its current holder.
        holder: ActorId,
    },
    /// The actor has already exited; nothing was registered.
    #[error("actor {0} has exited")]
    NotAlive(ActorId),
    /// The registry holds its maximum number of entries.
    #[error("registry is full ({0} entries)")]
    Full(usize),
}

/// Addressing an actor by name failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViaError {
    /// No actor is registered under the name.
    #[error("no actor registered as {0:?}")]
    NotRegistered(String),
    /// The name is held by an actor of another type.
    #[error("actor registered as {name:?} is not a {expected}")]
    WrongType {
        /// The name.
        name: String,
        /// The type the caller expected.
        expected: &'static str,
    },
    /// The call itself failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The cast could not be delivered.
    #[error(transparent)]
    Send(#[from] SendError),
}

struct Entry<M> {
    handle: ActorHandle,
    addr: Arc<dyn Any + Send + Sync>,
    meta: M,
}

struct Inner<M> {
    names: HashMap<String, Entry<M>>,
    groups: HashMap<String, Vec<Entry<M>>>,
    entries: usize,
    max_entries: usize,
}

/// A registry of named actors. Cheap to clone (clones share the registry).
///
/// `M` is the metadata stored with each entry (Elixir's registry "value").
pub struct Registry<M = ()> {
    inner: Arc<RwLock<Inner<M>>>,
}

impl<M> Clone for Registry<M> {
    fn clone(&self) -> Self {
        Registry {
            inner: self.inner.clone(),
        }
    }
}

impl<M: Clone + Send + Sync + 'static> Default for Registry<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Clone + Send + Sync + 'static> Registry<M> {
    /// An empty registry bounded to [`DEFAULT_MAX_ENTRIES`].
    pub fn new() -> Self {
        Self::with_max_entries(DEFAULT_MAX_ENTRIES)
    }

    /// An empty registry holding at most `max_entries` names and group memberships.
    pub fn with_max_entries(max_entries: usize) -> Self {
        Registry {
            inner: Arc::new(RwLock::new(Inner {
                names: HashMap::new(),
                groups: HashMap::new(),
                entries: 0,
                max_entries,
            })),
        }
    }

    // No user code runs under these locks, so a poisoned lock still guards consistent maps.
    fn read(&self) -> RwLockReadGuard<'_, Inner<M>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner<M>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn write_weak(inner: &Weak<RwLock<Inner<M>>>, f: impl FnOnce(&mut Inner<M>)) {
        if let Some(inner) = inner.upgrade() {
            f(&mut inner.write().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// Register `actor` under the unique `name` with `meta`. Fails, naming the holder, if the name
    /// is taken; the entry disappears when the actor exits.
    pub fn register<A: Actor>(
        &self,
        name: impl Into<String>,
        actor: &ActorRef<A>,
        meta: M,
    ) -> Result<(), RegistryError> {
        let name = name.into();
        let id = actor.id();
        {
            let mut inner = self.write();
            if let Some(e) = inner.names.get(&name) {
                return Err(RegistryError::AlreadyRegistered {
                    name,
                    holder: e.handle.id(),
                });
            }
            if inner.entries >= inner.max_entries {
                return Err(RegistryError::Full(inner.max_entries));
            }
            inner.names.insert(
                name.clone(),
                Entry {
                    handle: actor.handle().clone(),
                    addr: Arc::new(actor.clone()),
                    meta,
                },
            );
            inner.entries += 1;
        }
        let weak = Arc::downgrade(&self.inner);
        let watched_name = name.clone();
        let watch = actor.handle().cell.on_exit(move |id, _| {
            Self::write_weak(&weak, |inner| remove_name(inner, &watched_name, id));
        });
        if watch.is_err() {
            remove_name(&mut self.write(), &name, id);
            return Err(RegistryError::NotAlive(id));
        }
        Ok(())
    }

    /// Remove `name`; returns whether it was registered.
    pub fn unregister(&self, name: &str) -> bool {
        let mut inner = self.write();
        let removed = inner.names.remove(name).is_some();
        if removed {
            inner.entries -= 1;
        }
        removed
    }

    /// The actor registered as `name`, if it is an `A`.
    pub fn lookup<A: Actor>(&self, name: &str) -> Option<ActorRef<A>> {
        self.resolve::<A>(name).ok()
    }

    fn resolve<A: Actor>(&self, name: &str) -> Result<ActorRef<A>, ViaError> {
        let inner = self.read();
        let entry = inner
            .names
            .get(name)
            .ok_or_else(|| ViaError::NotRegistered(name.to_owned()))?;
        entry
            .addr
            .downcast_ref::<ActorRef<A>>()
            .cloned()
            .ok_or_else(|| ViaError::WrongType {
                name: name.to_owned(),
                expected: std::any::type_name::<A>(),
            })
    }

    /// The handle and metadata registered as `name`, whatever the actor's type.
    pub fn lookup_handle(&self, name: &str) -> Option<(ActorHandle, M)> {
        self.read()
            .names
            .get(name)
            .map(|e| (e.handle.clone(), e.meta.clone()))
    }

    /// The metadata of `name`.
    pub fn meta(&self, name: &str) -> Option<M> {
        self.read().names.get(name).map(|e| e.meta.clone())
    }

    /// Replace the metadata of `name`; returns whether it is registered.
    pub fn update_meta(&self, name: &str, f: impl FnOnce(&mut M)) -> bool {
        match self.write().names.get_mut(name) {
            Some(e) => {
                f(&mut e.meta);
                true
            }
            None => false,
        }
    }

    /// Call the actor registered as `name` (`via` addressing), with the default timeout.
    pub async fn call<A: Actor>(&self, name: &str, msg: A::Msg) -> Result<A::Reply, ViaError> {
        self.call_timeout::<A>(name, msg, DEFAULT_CALL_TIMEOUT)
            .await
    }

    /// Call the actor registered as `name` with a timeout.
    pub async fn call_timeout<A: Actor>(
        &self,
        name: &str,
        msg: A::Msg,
        timeout: Duration,
    ) -> Result<A::Reply, ViaError> {
        let actor = self.resolve::<A>(name)?;
        Ok(actor.call_timeout(msg, timeout).await?)
    }

    /// Cast to the actor registered as `name`.
    pub async fn cast<A: Actor>(&self, name: &str, msg: A::Msg) -> Result<(), ViaError> {
        let actor = self.resolve::<A>(name)?;
        Ok(actor.cast(msg).await?)
    }

    /// Names (with holder and metadata) for which `pred` holds — Elixir's `Registry.select`.
    pub fn select(
        &self,
        mut pred: impl FnMut(&str, ActorId, &M) -> bool,
    ) -> Vec<(String, ActorId, M)> {
        self.read()
            .names
            .iter()
            .filter(|(n, e)| pred(n, e.handle.id(), &e.meta))
            .map(|(n, e)| (n.clone(), e.handle.id(), e.meta.clone()))
            .collect()
    }

    /// The names held by `actor`.
    pub fn keys(&self, actor: ActorId) -> Vec<String> {
        self.read()
            .names
            .iter()
            .filter(|(_, e)| e.handle.id() == actor)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Number of registered names.
    pub fn count(&self) -> usize {
        self.read().names.len()
    }

    /// Number of names for which `pred` holds.
    pub fn count_match(&self, mut pred: impl FnMut(&str, ActorId, &M) -> bool) -> usize {
        self.read()
            .names
            .iter()
            .filter(|(n, e)| pred(n, e.handle.id(), &e.meta))
            .count()
    }

    /// Add `actor` to the duplicate-key `group` (an actor may join many groups, and a group has many
    /// members). Joining twice adds two memberships, as Elixir's duplicate registry does.
    pub fn join<A: Actor>(
        &self,
        group: impl Into<String>,
        actor: &ActorRef<A>,
        meta: M,
    ) -> Result<(), RegistryError> {
        let group = group.into();
        let id = actor.id();
        {
            let mut inner = self.write();
            if inner.entries >= inner.max_entries {
                return Err(RegistryError::Full(inner.max_entries));
            }
            inner.groups.entry(group.clone()).or_default().push(Entry {
                handle: actor.handle().clone(),
                addr: Arc::new(actor.clone()),
                meta,
            });
            inner.entries += 1;
        }
        let weak = Arc::downgrade(&self.inner);
        let watched = group.clone();
        let watch = actor.handle().cell.on_exit(move |id, _| {
            Self::write_weak(&weak, |inner| {
                remove_member(inner, &watched, id);
            });
        });
        if watch.is_err() {
            remove_member(&mut self.write(), &group, id);
            return Err(RegistryError::NotAlive(id));
        }
        Ok(())
    }

    /// Remove every membership of `actor` in `group`; returns how many were removed.
    pub fn leave(&self, group: &str, actor: ActorId) -> usize {
        remove_member(&mut self.write(), group, actor)
    }

    /// The members of `group` that are `A`s, with their metadata.
    pub fn members<A: Actor>(&self, group: &str) -> Vec<(ActorRef<A>, M)> {
        self.read()
            .groups
            .get(group)
            .map(|members| {
                members
                    .iter()
                    .filter_map(|e| {
                        let a = e.addr.downcast_ref::<ActorRef<A>>()?;
                        Some((a.clone(), e.meta.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Number of memberships in `group`.
    pub fn group_size(&self, group: &str) -> usize {
        self.read().groups.get(group).map_or(0, Vec::len)
    }

    /// Cast a copy of `msg` to every `A` in `group` (pub-sub); returns how many received it. Members
    /// that exited meanwhile are skipped. Each cast waits for mailbox room, so a slow subscriber
    /// slows the publisher rather than losing messages.
    pub async fn dispatch<A: Actor>(&self, group: &str, msg: A::Msg) -> usize
    where
        A::Msg: Clone,
    {
        let mut delivered = 0;
        for (member, _) in self.members::<A>(group) {
            if member.cast(msg.clone()).await.is_ok() {
                delivered += 1;
            }
        }
        delivered
    }
}

fn remove_name<M>(inner: &mut Inner<M>, name: &str, id: ActorId) {
    if inner.names.get(name).is_some_and(|e| e.handle.id() == id) {
        inner.names.remove(name);
        inner.entries -= 1;
    }
}

fn remove_member<M>(inner: &mut Inner<M>, group: &str, id: ActorId) -> usize {
    let Some(members) = inner.groups.get_mut(group) else {
        return 0;
    };
    let before = members.len();
    members.retain(|e| e.handle.id() != id);
    let removed = before - members.len();
    if members.is_empty() {
        inner.groups.remove(group);
    }
    inner.entries -= removed;
    removed
}
