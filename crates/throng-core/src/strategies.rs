//! Distribution strategies beyond the plain ring ([`crate::directory::Uniform`]).

use crate::directory::Distribution;
use crate::{NodeId, Ring};

/// Explicit placement: a key of the form `"<node>/<rest>"` is owned by `<node>` while that node
/// is in the view, so a caller chooses where a child runs and every node still finds it from the
/// key alone (no table). When the named node is not in the view (down, leaving, or not a node at
/// all), the key falls back to the ring — the child fails over like any other and comes back to
/// its node when the node returns. Keys without a `/` are placed by the ring.
#[derive(Debug, Clone, Copy, Default)]
pub struct Explicit;

impl Explicit {
    fn named(key: &[u8], ring: &Ring) -> Option<NodeId> {
        let slash = key.iter().position(|b| *b == b'/')?;
        let name = std::str::from_utf8(&key[..slash]).ok()?;
        ring.nodes().iter().find(|n| n.as_str() == name).cloned()
    }
}

impl Distribution for Explicit {
    fn owner(&self, key: &[u8], ring: &Ring) -> Option<NodeId> {
        Self::named(key, ring).or_else(|| ring.node_for(key).cloned())
    }

    fn backup(&self, key: &[u8], ring: &Ring) -> Option<NodeId> {
        let owner = self.owner(key, ring)?;
        // The node that owns the key without its named node: the ring, skipping the owner.
        ring.successors(key, ring.len())
            .find(|n| **n != owner)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RingConfig;

    fn ring(names: &[&str]) -> Ring {
        Ring::from_nodes(
            RingConfig::default(),
            names.iter().map(|n| NodeId::new(n).unwrap()),
        )
        .unwrap()
    }

    #[test]
    fn a_named_node_owns_its_keys_and_the_ring_takes_over_when_it_is_gone() {
        let r = ring(&["a", "b", "c"]);
        for k in ["b/x", "b/y", "b/zzz"] {
            assert_eq!(Explicit.owner(k.as_bytes(), &r).unwrap().as_str(), "b");
            let backup = Explicit.backup(k.as_bytes(), &r).unwrap();
            assert_ne!(backup.as_str(), "b");
            // Without b, the key goes to its backup: the failover target is where the copy is.
            let without = ring(&["a", "c"]);
            assert_eq!(Explicit.owner(k.as_bytes(), &without).unwrap(), backup);
        }
        // Unknown names and plain keys follow the ring.
        for k in ["nobody/x", "plain"] {
            assert_eq!(
                Explicit.owner(k.as_bytes(), &r),
                r.node_for(k.as_bytes()).cloned()
            );
        }
        assert_eq!(Explicit.owner(b"x", &ring(&[])), None);
    }
}
