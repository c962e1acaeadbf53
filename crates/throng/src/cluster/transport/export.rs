//! The export table's entries: a local actor reachable from other nodes, decoding what arrives
//! for it and encoding what it answers.

use super::*;

/// Where the encoded outcome of a call goes; called exactly once — by the actor's task with the
/// reply, or on drop with `Exited` if the call is dropped unhandled (its actor exited first).
pub(super) struct ReplyOnce(Option<BytesReplyFn>);

pub(super) type BytesReplyFn = Box<dyn FnOnce(Result<Vec<u8>, RemoteFailure>) + Send>;

impl ReplyOnce {
    pub(super) fn new(f: impl FnOnce(Result<Vec<u8>, RemoteFailure>) + Send + 'static) -> Self {
        ReplyOnce(Some(Box::new(f)))
    }

    pub(super) fn send(mut self, result: Result<Vec<u8>, RemoteFailure>) {
        if let Some(f) = self.0.take() {
            f(result);
        }
    }
}

impl Drop for ReplyOnce {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(RemoteFailure::Exited));
        }
    }
}

/// A locally exported actor, type-erased so that frames can reach it by name.
pub(super) trait Export: Send + Sync {
    fn any(&self) -> &dyn std::any::Any;
    fn actor_type(&self) -> &'static str;
    fn handle(&self) -> &ActorHandle;
    /// Decode `body` and enqueue it, in order; a call's outcome goes to `reply`. Delivered at once
    /// when the mailbox has room; otherwise a future that waits for room.
    fn deliver(&self, body: &[u8], reply: Option<ReplyOnce>) -> Delivery;
}

pub(super) struct TypedExport<A: RemoteActor>(pub(super) ActorRef<A>);

impl<A: RemoteActor> Export for TypedExport<A> {
    fn any(&self) -> &dyn std::any::Any {
        self
    }
    fn actor_type(&self) -> &'static str {
        A::TYPE
    }
    fn handle(&self) -> &ActorHandle {
        self.0.handle()
    }
    fn deliver(&self, body: &[u8], reply: Option<ReplyOnce>) -> Delivery {
        let msg: A::Msg = match postcard::from_bytes(body) {
            Ok(m) => m,
            Err(e) => {
                let failure = RemoteFailure::Decode(e.to_string());
                if let Some(r) = reply {
                    r.send(Err(failure.clone()));
                }
                return Delivery::Done(Err(failure));
            }
        };
        // For a call, the actor's task encodes and hands the reply on, with no task in between; a
        // call dropped unhandled reports `Exited` through `ReplyOnce`'s drop.
        let reply = reply.map(|reply| {
            let encode_and_send = move |result: Result<A::Reply, ExitReason>| {
                reply.send(match result {
                    Ok(value) => postcard::to_allocvec(&value)
                        .map_err(|e| RemoteFailure::Decode(e.to_string())),
                    // Refused at the mailbox (see `refuse` below): never handled.
                    Err(ExitReason::NoProc) => Err(RemoteFailure::NotDelivered),
                    Err(reason) => Err(RemoteFailure::Failed(reason.to_string())),
                })
            };
            ReplyTo::Call(Box::new(Box::new(encode_and_send)))
        });
        // A sealed or closed mailbox hands the envelope back: tell a caller it was not delivered.
        fn refuse<A: RemoteActor>(env: Envelope<A>) -> Result<(), RemoteFailure> {
            if let Some(r) = env.reply {
                r.send(Err(ExitReason::NoProc));
            }
            Err(RemoteFailure::NotDelivered)
        }
        match self.0.try_enqueue(Envelope { msg, reply }) {
            Ok(()) => Delivery::Done(Ok(())),
            Err(SendFailure::Closed(env)) => Delivery::Done(refuse(env)),
            Err(SendFailure::Full(env)) => {
                let actor = self.0.clone();
                Delivery::Wait(Box::pin(async move {
                    match actor.enqueue(env).await {
                        Ok(()) => Ok(()),
                        Err(env) => refuse(env),
                    }
                }))
            }
        }
    }
}

/// The outcome of handing a frame to an export.
pub(super) enum Delivery {
    Done(Result<(), RemoteFailure>),
    /// The mailbox is full: wait for room (backpressure on the connection).
    Wait(BoxFuture<'static, Result<(), RemoteFailure>>),
}

impl Transport {
    /// Export `actor` as `name`; with `replace`, a live holder is replaced (a restarted keyed child
    /// taking over its name), otherwise it is an error. The export disappears when the actor exits.
    pub(in crate::cluster) fn export_typed<A: RemoteActor>(
        self: &Arc<Self>,
        name: &str,
        actor: &ActorRef<A>,
        replace: bool,
    ) -> Result<(), ExportError> {
        let owned: Arc<str> = Arc::from(name);
        {
            let mut exports = self.exports_mut();
            if !replace && exports.get(name).is_some_and(|e| e.handle().is_alive()) {
                return Err(ExportError::Taken(name.to_owned()));
            }
            exports.insert(owned.clone(), Arc::new(TypedExport(actor.clone())));
        }
        let weak = Arc::downgrade(self);
        let id = actor.id();
        actor.handle().on_exit(move |_, _| {
            if let Some(shared) = weak.upgrade() {
                let mut exports = shared.exports_mut();
                if exports.get(&*owned).is_some_and(|e| e.handle().id() == id) {
                    exports.remove(&*owned);
                }
            }
        });
        Ok(())
    }

    /// Whether a live actor is exported as `name`.
    pub(in crate::cluster) fn is_exported(&self, name: &str) -> bool {
        self.export(name).is_some_and(|e| e.handle().is_alive())
    }

    /// Remove the export `name` if actor `id` holds it.
    pub(in crate::cluster) fn unexport(&self, name: &str, id: crate::ActorId) {
        let mut exports = self.exports_mut();
        if exports.get(name).is_some_and(|e| e.handle().id() == id) {
            exports.remove(name);
        }
    }

    /// The exports, for a change (which readers' caches see through `exports_version`).
    pub(super) fn exports_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<Arc<str>, Arc<dyn Export>>> {
        let exports = self.exports.write().unwrap_or_else(|p| p.into_inner());
        self.exports_version.fetch_add(1, Ordering::AcqRel);
        exports
    }

    /// The handle of the actor exported as `name`, if any.
    pub(in crate::cluster) fn exported_handle(&self, name: &str) -> Option<ActorHandle> {
        self.export(name).map(|e| e.handle().clone())
    }

    pub(super) fn export(&self, name: &str) -> Option<Arc<dyn Export>> {
        self.exports
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}
