//! Sans-io core of Throng.
//!
//! Every decision Throng makes — where a key lives, whether a supervisor must restart a child or give
//! up, what a node's view of the cluster is — is taken here, by plain state machines that receive their
//! inputs (including **the current time**) as arguments and return their decisions as values. Nothing in
//! this crate performs I/O, reads a clock, spawns a task or draws from a global random number generator,
//! so the same code runs under tokio in production and under the seeded simulator in tests.

pub mod directory;
pub mod driver;
pub mod names;
pub mod node;
pub mod placement;
pub mod restart;
pub mod strategies;

pub use directory::{
    Action, ChildEvent, DirConfig, DirMsg, Directory, Distribution, Generation, Holder, Record,
    StartError, StartSpec, StopReason, Tag, Uniform, Version,
};
pub use names::{
    Delta, Entry, FullState, GroupMember, GroupMemberRef, NameError, NameEvent, NameTable,
    NamesConfig, Op, Outgoing,
};
pub use node::{Incarnation, Member, NodeId, NodeIdError};
pub use placement::{PlacementError, Ring, RingConfig, Successors};
pub use restart::{
    ExitClass, Intensity, IntensityError, RestartDecision, RestartPolicy, RestartWindow,
};
