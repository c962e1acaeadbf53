//! [`Names`]: the registry as the application sees it (register, look up, select, groups).

use super::*;

/// The cluster-wide name registry of a node: see the [module docs](crate::cluster::names). Cheap to clone; obtained
/// from [`Node::names`](crate::cluster::Node::names).
#[derive(Clone)]
pub struct Names {
    shared: Weak<Registry>,
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Names").finish_non_exhaustive()
    }
}

impl Names {
    pub(crate) fn new(shared: Weak<Registry>) -> Self {
        Names { shared }
    }

    pub(super) fn shared(&self) -> Result<Arc<Registry>, NamesError> {
        self.shared.upgrade().ok_or(NamesError::Stopped)
    }

    /// Runs `f` on the table (read-locked); `None` once the node is gone.
    pub(super) fn with<T>(&self, f: impl FnOnce(&NameTable) -> T) -> Option<T> {
        let shared = self.shared.upgrade()?;
        let inner = shared.names.read();
        Some(f(&inner.table))
    }

    /// Checks that `actor` runs here and is alive.
    fn check_local<A: RemoteActor>(actor: &ActorRef<A>) -> Result<(), NamesError> {
        if !actor.is_local() {
            return Err(NamesError::NotLocal);
        }
        if !actor.is_alive() {
            return Err(NamesError::NotAlive(actor.id()));
        }
        Ok(())
    }

    /// Hooks the actor's exit (once per actor) to drop its registrations.
    fn hook_exit<A: RemoteActor>(shared: &Arc<Registry>, actor: &ActorRef<A>) {
        let weak = Arc::downgrade(shared);
        actor.handle().on_exit(move |id, _| {
            if let Some(s) = weak.upgrade() {
                s.names.actor_exited(id);
            }
        });
    }

    /// Registers the local `actor` as `name`, cluster-wide, with metadata `meta` (any serde value;
    /// `()` for none). Visible on this node at once and on the others as soon as the delta arrives.
    /// The name is dropped when the actor exits or when [`unregister`](Self::unregister)ed.
    ///
    /// Fails with [`NameError::Taken`] if this node already sees a registration of `name`
    /// (on any node), with [`NamesError::NotLocal`] for an actor on another node.
    pub fn register<A: RemoteActor>(
        &self,
        name: &str,
        actor: &ActorRef<A>,
        meta: impl Serialize,
    ) -> Result<(), NamesError> {
        Self::check_local(actor)?;
        let meta = encode_meta(&meta)?;
        let shared = self.shared()?;
        let export = reg_export(name);
        let value = Addr {
            actor_type: A::TYPE.to_owned(),
            member: None,
        }
        .encode();
        let id = actor.id();
        let fresh = {
            let mut inner = shared.names.write();
            let delta = inner.table.register(name, value, meta, now_ms())?;
            inner.queue(delta);
            // Exported under the lock, so that a concurrent conflict or unregistration cannot
            // interleave; the name is ours, so any previous export under it is stale.
            if shared.t.export_typed(&export, actor, true).is_err() {
                if let Ok(d) = inner.table.unregister(name) {
                    inner.queue(d);
                }
                drop(inner);
                shared.names.notify.notify_one();
                return Err(NamesError::NotAlive(id));
            }
            inner.holders.insert(name.to_owned(), id);
            let fresh = !inner.actors.contains_key(&id);
            inner
                .actors
                .entry(id)
                .or_default()
                .names
                .insert(name.to_owned());
            fresh
        };
        shared.names.notify.notify_one();
        if fresh {
            Self::hook_exit(&shared, actor);
        }
        let _ = shared.names.events.send(NamesEvent::Registered {
            name: name.to_owned(),
            actor: id,
        });
        Ok(())
    }

    /// Drops this node's registration of `name` (the actor keeps running). Fails with
    /// [`NameError::NotRegistered`] if this node holds no such name (another node's registration
    /// can only be dropped by that node).
    pub fn unregister(&self, name: &str) -> Result<(), NamesError> {
        let shared = self.shared()?;
        let holder = {
            let mut inner = shared.names.write();
            let delta = inner.table.unregister(name)?;
            inner.queue(delta);
            inner.forget_name(name)
        };
        shared.names.notify.notify_one();
        if let Some(id) = holder {
            shared.t.unexport(&reg_export(name), id);
            let _ = shared.names.events.send(NamesEvent::Unregistered {
                name: name.to_owned(),
                actor: id,
            });
        }
        Ok(())
    }

    /// Replaces the metadata of this node's registration of `name`.
    pub fn update_meta(&self, name: &str, meta: impl Serialize) -> Result<(), NamesError> {
        let meta = encode_meta(&meta)?;
        let shared = self.shared()?;
        {
            let mut inner = shared.names.write();
            let delta = inner.table.update_meta(name, meta)?;
            inner.queue(delta);
        }
        shared.names.notify.notify_one();
        Ok(())
    }

    /// The actor registered as `name`, anywhere in the cluster, as this node sees it: the actor
    /// itself if it runs here, a remote reference otherwise. `None` if the name is not registered or
    /// its actor is not an `A`. Never waits for the network.
    pub fn lookup<A: RemoteActor>(&self, name: &str) -> Option<ActorRef<A>> {
        let shared = self.shared.upgrade()?;
        let (node, addr) = {
            let inner = shared.names.read();
            let (node, entry) = inner.table.lookup(name)?;
            (node.clone(), Addr::decode(&entry.value)?)
        };
        (addr.actor_type == A::TYPE).then(|| shared.t.remote::<A>(&node, &addr.export(name)))
    }

    /// The node holding `name`, if it is registered.
    pub fn whereis(&self, name: &str) -> Option<NodeId> {
        self.with(|t| t.lookup(name).map(|(n, _)| n.clone()))
            .flatten()
    }

    /// The metadata of `name`, decoded as an `M`; `Ok(None)` if the name is not registered.
    pub fn meta<M: DeserializeOwned>(&self, name: &str) -> Result<Option<M>, NamesError> {
        let shared = self.shared()?;
        let inner = shared.names.read();
        inner
            .table
            .lookup(name)
            .map(|(_, e)| decode_meta(&e.meta))
            .transpose()
    }

    /// Every registration whose metadata decodes as an `M` and satisfies `pred(name, node, meta)`,
    /// as `(name, node, meta)`, in no particular order.
    pub fn select<M: DeserializeOwned>(
        &self,
        mut pred: impl FnMut(&str, &NodeId, &M) -> bool,
    ) -> Vec<(String, NodeId, M)> {
        self.with(|t| {
            t.iter()
                .filter_map(|(name, node, e)| {
                    let meta: M = postcard::from_bytes(&e.meta).ok()?;
                    pred(name, node, &meta).then(|| (name.to_owned(), node.clone(), meta))
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// Every registered name, in no particular order.
    pub fn keys(&self) -> Vec<String> {
        self.with(|t| t.keys().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Number of registered names in the cluster (as this node sees it).
    pub fn count(&self) -> usize {
        self.with(NameTable::count).unwrap_or(0)
    }

    /// Adds the local `actor` to `group` with metadata `meta`; joining again replaces the
    /// metadata. A group has any number of members on any number of nodes; memberships are dropped
    /// when the actor exits.
    pub fn join<A: RemoteActor>(
        &self,
        group: &str,
        actor: &ActorRef<A>,
        meta: impl Serialize,
    ) -> Result<(), NamesError> {
        Self::check_local(actor)?;
        let meta = encode_meta(&meta)?;
        let shared = self.shared()?;
        let id = actor.id();
        let addr = Addr::member::<A>(id);
        let export = addr.export(group);
        let value = addr.encode();
        let fresh = {
            let mut inner = shared.names.write();
            let delta = inner.table.join_group(group, value.clone(), meta)?;
            inner.queue(delta);
            if shared.t.export_typed(&export, actor, true).is_err() {
                if let Ok(d) = inner.table.leave_group(group, &value) {
                    inner.queue(d);
                }
                drop(inner);
                shared.names.notify.notify_one();
                return Err(NamesError::NotAlive(id));
            }
            let fresh = !inner.actors.contains_key(&id);
            let a = inner.actors.entry(id).or_default();
            a.groups.insert(group.to_owned());
            a.group_value = Some(value);
            fresh
        };
        shared.names.notify.notify_one();
        if fresh {
            Self::hook_exit(&shared, actor);
        }
        Ok(())
    }

    /// Removes the local `actor` from `group`.
    pub fn leave<A: RemoteActor>(
        &self,
        group: &str,
        actor: &ActorRef<A>,
    ) -> Result<(), NamesError> {
        if !actor.is_local() {
            return Err(NamesError::NotLocal);
        }
        let shared = self.shared()?;
        let id = actor.id();
        let addr = Addr::member::<A>(id);
        let export = addr.export(group);
        let value = addr.encode();
        let unexport = {
            let mut inner = shared.names.write();
            let delta = inner.table.leave_group(group, &value)?;
            inner.queue(delta);
            match inner.actors.get_mut(&id) {
                Some(a) => {
                    a.groups.remove(group);
                    a.groups.is_empty()
                }
                None => true,
            }
        };
        shared.names.notify.notify_one();
        if unexport {
            shared.t.unexport(&export, id);
        }
        Ok(())
    }

    /// The members of `group` that are `A`s, on every node, with their metadata decoded as `M`
    /// (members whose metadata is not an `M` are left out).
    pub fn members_meta<A: RemoteActor, M: DeserializeOwned>(
        &self,
        group: &str,
    ) -> Vec<(ActorRef<A>, M)> {
        let Some(shared) = self.shared.upgrade() else {
            return Vec::new();
        };
        let found: Vec<(NodeId, Addr, M)> = {
            let inner = shared.names.read();
            inner
                .table
                .members(group)
                .filter_map(|(node, m)| {
                    let addr = Addr::decode(m.value)?;
                    let meta = postcard::from_bytes(m.meta).ok()?;
                    (addr.actor_type == A::TYPE).then(|| (node.clone(), addr, meta))
                })
                .collect()
        };
        found
            .into_iter()
            .map(|(node, addr, meta)| (shared.t.remote::<A>(&node, &addr.export(group)), meta))
            .collect()
    }

    /// The members of `group` that are `A`s, on every node.
    pub fn members<A: RemoteActor>(&self, group: &str) -> Vec<ActorRef<A>> {
        let Some(shared) = self.shared.upgrade() else {
            return Vec::new();
        };
        let found: Vec<(NodeId, Addr)> = {
            let inner = shared.names.read();
            inner
                .table
                .members(group)
                .filter_map(|(node, m)| {
                    let addr = Addr::decode(m.value)?;
                    (addr.actor_type == A::TYPE).then(|| (node.clone(), addr))
                })
                .collect()
        };
        found
            .into_iter()
            .map(|(node, addr)| shared.t.remote::<A>(&node, &addr.export(group)))
            .collect()
    }

    /// Number of members of `group` (of any actor type), on every node.
    pub fn count_members(&self, group: &str) -> usize {
        self.with(|t| t.members(group).count()).unwrap_or(0)
    }

    /// The nodes with members in `group`, with how many each has.
    pub fn member_nodes(&self, group: &str) -> Vec<(NodeId, usize)> {
        self.with(|t| {
            let mut v: Vec<(NodeId, usize)> = Vec::new();
            for (node, _) in t.members(group) {
                match v.last_mut() {
                    Some((n, c)) if n == node => *c += 1,
                    _ => v.push((node.clone(), 1)),
                }
            }
            v
        })
        .unwrap_or_default()
    }

    /// Every group with at least one member.
    pub fn groups(&self) -> Vec<String> {
        self.with(|t| t.groups().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Registrations, unregistrations and lost conflicts of this node's actors (see
    /// [`NamesEvent`]), from now on.
    pub fn events(&self) -> broadcast::Receiver<NamesEvent> {
        match self.shared.upgrade() {
            Some(s) => s.names.events.subscribe(),
            // A receiver that reports `Closed` at once.
            None => broadcast::channel(1).1,
        }
    }

    /// The limits on this node's registrations.
    pub fn config(&self) -> NamesConfig {
        self.with(|t| t.config().clone()).unwrap_or_default()
    }
}
