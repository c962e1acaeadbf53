//! Throng's demo and first real user: dispatch centers of superheroes across a cluster.
//!
//! - [`hero`]: superheroes, distributed children keyed by name that move with their state.
//! - [`city`]: one city per node, supervised with restart intensity, agreeing with the other
//!   cities through the [`roster`] CRDT.
//! - [`control`]: the actor every node exports so any page can stop, crash or bomb any node.
//! - [`snapshot`], [`view`], [`page`], [`web`]: what the page shows, how it is kept current, how it
//!   is drawn, and the live page (SSE), the JSON API and `/metrics`.
//! - [`run`]: the `node` and `demo` commands, and where a node keeps its heroes across restarts
//!   (its data directory).
//!
//! Everything here uses only Throng's public API.

pub mod city;
pub mod control;
pub mod hero;
pub mod home;
pub mod page;
pub mod roster;
pub mod run;
pub mod snapshot;
pub mod view;
pub mod web;
