//! What a node's page shows, as plain data: the rows the page renders ([`crate::page`]) and the
//! JSON API serves, built by [`crate::view`]. Neither depends on the other through it.

use serde::Serialize;

/// A node as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    /// Node name.
    pub name: String,
    /// `up`, `leaving` or `down`.
    pub status: &'static str,
    /// Heroes running there.
    pub heroes: usize,
    /// Its city, once known.
    pub city: Option<String>,
    /// Its page, once known.
    pub http: Option<String>,
}

/// A hero as the page and `/api/heroes` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeroRow {
    /// Name.
    pub name: String,
    /// Node it runs on.
    pub node: String,
    /// Health.
    pub health: i32,
    /// Fights won.
    pub fights_won: u32,
    /// Fights lost.
    pub fights_lost: u32,
    /// `patrolling`, `resting`, or `moving` while its node is leaving or down.
    pub status: &'static str,
    /// Its city.
    pub city: Option<String>,
}

/// A city as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CityRow {
    /// City name.
    pub name: String,
    /// Its node.
    pub node: String,
    /// Heroes assigned to it.
    pub heroes: usize,
    /// `ok`, `in ruins` (its supervisor gave up), or its node's status.
    pub status: &'static str,
}

/// Everything on the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// This node.
    pub me: String,
    /// This node's city.
    pub city: String,
    /// Every node heard of.
    pub nodes: Vec<NodeRow>,
    /// Every hero.
    pub heroes: Vec<HeroRow>,
    /// Every city.
    pub cities: Vec<CityRow>,
    /// Recent events on this node, newest first.
    pub events: Vec<String>,
}
