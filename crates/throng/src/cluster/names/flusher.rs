//! The flusher: the task that ships this node's registry deltas, full states, sync requests
//! and sequence heartbeats to its peers (immediately when idle, batched under load).

use super::*;

/// Work the flusher took from the registry in one go.
struct Work {
    deltas: Vec<Vec<u8>>,
    /// Encoded full-state parts, per peer owed them.
    full: Vec<(NodeId, Vec<Vec<u8>>)>,
    sync: Vec<(NodeId, Vec<u8>)>,
    seq: Option<Vec<u8>>,
}

fn encode(msg: &Msg) -> Vec<u8> {
    // Only plain data: encoding cannot fail short of running out of memory.
    postcard::to_allocvec(msg).unwrap_or_default()
}

fn op_size(op: &throng_core::names::Op) -> usize {
    use throng_core::names::Op;
    ENTRY_OVERHEAD
        + match op {
            Op::Register {
                name, value, meta, ..
            } => name.len() + value.len() + meta.len(),
            Op::Unregister { name } => name.len(),
            Op::UpdateMeta { name, meta } => name.len() + meta.len(),
            Op::Join { group, member } => group.len() + member.value.len() + member.meta.len(),
            Op::Leave { group, value } => group.len() + value.len(),
        }
}

/// Splits `delta` into encoded frames of at most about `budget` bytes each.
pub(super) fn delta_frames(from: &Member, delta: Delta, budget: usize) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut part = Delta {
        first_seq: delta.first_seq,
        ops: Vec::new(),
    };
    let mut size = 0;
    let mut next_seq = delta.first_seq;
    for op in delta.ops {
        let s = op_size(&op);
        if size + s > budget && !part.ops.is_empty() {
            let full = std::mem::replace(
                &mut part,
                Delta {
                    first_seq: next_seq,
                    ops: Vec::new(),
                },
            );
            frames.push(encode(&Msg::Delta {
                from: from.clone(),
                delta: full,
            }));
            size = 0;
        }
        size += s;
        part.ops.push(op);
        next_seq = next_seq.saturating_add(1);
    }
    if !part.ops.is_empty() {
        frames.push(encode(&Msg::Delta {
            from: from.clone(),
            delta: part,
        }));
    }
    frames
}

/// Splits `state` into encoded [`Msg::Full`] parts of at most about `budget` bytes each.
pub(super) fn full_frames(from: &Member, state: FullState, budget: usize) -> Vec<Vec<u8>> {
    struct Part {
        names: Vec<(String, Entry)>,
        groups: Vec<(String, Vec<GroupMember>)>,
    }
    let mut parts = vec![];
    let mut cur = Part {
        names: vec![],
        groups: vec![],
    };
    let mut size = 0;
    let take = |cur: &mut Part| {
        std::mem::replace(
            cur,
            Part {
                names: vec![],
                groups: vec![],
            },
        )
    };
    for (name, entry) in state.names {
        let s = ENTRY_OVERHEAD + name.len() + entry.value.len() + entry.meta.len();
        if size + s > budget && size > 0 {
            parts.push(take(&mut cur));
            size = 0;
        }
        size += s;
        cur.names.push((name, entry));
    }
    for (group, members) in state.groups {
        let mut chunk: Vec<GroupMember> = Vec::new();
        for m in members {
            let s = ENTRY_OVERHEAD + group.len() + m.value.len() + m.meta.len();
            if size + s > budget && size > 0 {
                if !chunk.is_empty() {
                    cur.groups.push((group.clone(), std::mem::take(&mut chunk)));
                }
                parts.push(take(&mut cur));
                size = 0;
            }
            size += s;
            chunk.push(m);
        }
        if !chunk.is_empty() {
            cur.groups.push((group, chunk));
        }
    }
    parts.push(take(&mut cur));
    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            encode(&Msg::Full {
                from: from.clone(),
                seq: state.seq,
                index: u32::try_from(i).unwrap_or(u32::MAX),
                last: i + 1 == n,
                names: p.names,
                groups: p.groups,
            })
        })
        .collect()
}

impl NamesState {
    /// Takes everything queued for peers (holding the lock only to copy the table's output).
    fn take_work(&self, heartbeat: bool, linked: &HashSet<NodeId>) -> Work {
        let mut inner = self.write();
        let batch = std::mem::take(&mut inner.batch);
        // Full states are only built for peers with a link; others stay owed (a link appears
        // right after the membership event that queued them).
        let owed: Vec<NodeId> = inner
            .full_to
            .iter()
            .filter(|p| linked.contains(*p))
            .cloned()
            .collect();
        let full_state = (!owed.is_empty()).then(|| inner.table.full_state());
        for p in &owed {
            inner.full_to.remove(p);
        }
        let sync: Vec<NodeId> = std::mem::take(&mut inner.sync_to).into_iter().collect();
        let seq = inner.table.seq();
        drop(inner);
        let me = &self.me;
        let full = match full_state {
            Some(state) => {
                let parts = full_frames(me, state, self.budget);
                owed.into_iter().map(|p| (p, parts.clone())).collect()
            }
            None => Vec::new(),
        };
        Work {
            deltas: delta_frames(me, batch, self.budget),
            full,
            sync: sync
                .into_iter()
                .map(|p| (p, encode(&Msg::SyncRequest { from: me.clone() })))
                .collect(),
            seq: (heartbeat && seq > 0).then(|| {
                encode(&Msg::Seq {
                    from: me.clone(),
                    seq,
                })
            }),
        }
    }
}

/// Sends `frames` to `peer` in order, each waiting at most [`SEND_TIMEOUT`] for queue room.
async fn send_all(peer: Arc<Peer>, frames: Vec<Vec<u8>>) {
    for msg in frames {
        let sent = tokio::time::timeout(SEND_TIMEOUT, peer.send(&Frame::Names { msg })).await;
        match sent {
            Ok(Ok(())) => {}
            // The link is gone (node down or stopping).
            Ok(Err(_)) => return,
            Err(_) => tracing::debug!("registry frame dropped: peer queue stayed full"),
        }
    }
}

/// The node's registry flusher: sends queued deltas, full states, sync requests and heartbeats to
/// peers. Runs until the node stops.
pub(crate) async fn flusher(shared: Weak<Registry>, stop: CancellationToken) {
    let Some(notify) = shared.upgrade().map(|s| s.names.notify.clone()) else {
        return;
    };
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let heartbeat = tokio::select! {
            _ = stop.cancelled() => return,
            _ = notify.notified() => false,
            _ = tick.tick() => true,
        };
        let Some(s) = shared.upgrade() else { return };
        let peers = s.t.peer_list();
        let linked: HashSet<NodeId> = peers.iter().map(|(id, _)| id.clone()).collect();
        let work = s.names.take_work(heartbeat, &linked);
        drop(s);
        let Work {
            deltas,
            mut full,
            mut sync,
            seq,
        } = work;
        if deltas.is_empty() && full.is_empty() && sync.is_empty() && seq.is_none() {
            continue;
        }
        let sends = peers.into_iter().map(|(id, peer)| {
            // A peer getting the full state needs none of the deltas it covers.
            let mut frames = match full.iter().position(|(p, _)| *p == id) {
                Some(i) => full.swap_remove(i).1,
                None => deltas.clone(),
            };
            if let Some(i) = sync.iter().position(|(p, _)| *p == id) {
                frames.push(sync.swap_remove(i).1);
            }
            frames.extend(seq.clone());
            send_all(peer, frames)
        });
        futures_util::future::join_all(sends).await;
    }
}
