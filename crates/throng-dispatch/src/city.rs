//! A city: one per node, a local actor under a [`throng::supervisor::DynamicSupervisor`] with
//! restart intensity 3 in 5 s, holding the [`Roster`] CRDT of every hero.
//!
//! Cities agree without a leader: heroes push their changes to the city of their node, which
//! gossips what changed to the other cities every [`GOSSIP_EVERY`] (`UpdateSuperheroes`, merged on
//! arrival) and its whole roster every [`FULL_SYNC_EVERY`]. Every 5 s (scaled by `--tick-ms`) a
//! city sends one of its heroes on patrol, and a patrolling hero meets a villain (−5..15 health).
//! Bombing a city crashes it; its supervisor restarts it empty, and it converges back from its
//! peers (it asks them for their roster as it starts).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use throng::cluster::RemoteActor;
use throng::prelude::*;

use crate::hero::{Hero, HeroMsg};
use crate::home::{home, Counters, Dice, Home, CITY_EXPORT};
use crate::roster::{HeroEntry, HeroReport, Roster, Tombstone};

/// How often a city sends what changed to its peers.
pub const GOSSIP_EVERY: Duration = Duration::from_millis(500);

/// How often a city sends its whole roster (repairs lost deltas and restarted peers).
pub const FULL_SYNC_EVERY: Duration = Duration::from_secs(5);

/// The patrol period at the default tick (4 s).
const PATROL_EVERY_MS: u64 = 5_000;

/// Default hero tick the patrol period is scaled from.
const DEFAULT_TICK_MS: u64 = 4_000;

/// The city actor.
pub struct City {
    name: String,
    roster: Roster,
    /// Names changed here since the last gossip.
    dirty: BTreeSet<String>,
    patrol: Duration,
    dice: Dice,
}

/// What a city is told (locally by heroes and the web server, remotely by other cities).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CityMsg {
    /// Another city's roster (or a delta of it) to merge; `want_full` asks for ours back.
    UpdateSuperheroes {
        /// The sender's node.
        from: String,
        /// What it knows.
        roster: Roster,
        /// Send our whole roster back.
        want_full: bool,
    },
    /// A hero running on this node changed.
    HeroStatus(HeroEntry),
    /// A hero is gone.
    Gone {
        /// Its name.
        name: String,
        /// Its tombstone.
        tombstone: Tombstone,
    },
    /// Assign a hero to this city (+20 health; refused if it is tombstoned).
    Assign {
        /// The hero.
        hero: String,
    },
    /// Timer: send a hero on patrol.
    Patrol,
    /// Timer: a patrolling hero meets a villain.
    Fight,
    /// Timer: send what changed to the peers.
    Gossip,
    /// Timer: send everything to the peers.
    FullSync,
    /// The roster, for the page.
    Get,
    /// Crash the city.
    Bomb,
}

/// A city's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CityReply {
    /// Done.
    Done,
    /// The roster and the city's name.
    Roster(String, Roster),
    /// The assigned hero, or why not.
    Assigned(Result<HeroEntry, String>),
}

impl City {
    /// An empty city; the patrol period is 5 s scaled by `tick_ms` / 4000.
    pub fn new(name: String, tick_ms: u64) -> City {
        let patrol = PATROL_EVERY_MS * tick_ms / DEFAULT_TICK_MS;
        City {
            dice: Dice::seeded(&name),
            name,
            roster: Roster::default(),
            dirty: BTreeSet::new(),
            patrol: Duration::from_millis(patrol.max(50)),
        }
    }

    /// Heroes of this city whose node is live, optionally only those on patrol.
    fn my_heroes(&self, patrolling: bool) -> Vec<String> {
        let live = home().map(|h| h.node.nodes()).unwrap_or_default();
        self.roster
            .heroes
            .values()
            .filter(|e| e.city.as_deref() == Some(&self.name))
            .filter(|e| !patrolling || e.activity == crate::roster::Activity::Patrolling)
            .filter(|e| live.iter().any(|n| n.as_ref() == e.node))
            .map(|e| e.name.clone())
            .collect()
    }

    /// Send `roster` to every other node's city, without waiting.
    fn send_to_peers(&self, h: &Home, roster: Roster, want_full: bool) {
        for peer in h.node.nodes() {
            if peer.as_ref() == h.name {
                continue;
            }
            let city = h.node.remote::<City>(&peer, CITY_EXPORT);
            let msg = CityMsg::UpdateSuperheroes {
                from: h.name.clone(),
                roster: roster.clone(),
                want_full,
            };
            tokio::spawn(async move {
                // A peer whose city is down (bombed, rebuilding) catches up at its next full sync.
                let _ = city.cast(msg).await;
            });
        }
    }
}

impl Actor for City {
    type Msg = CityMsg;
    type Reply = CityReply;

    async fn started(&mut self, ctx: &mut Context<Self>) -> ActorResult<()> {
        ctx.interval(GOSSIP_EVERY, || CityMsg::Gossip);
        ctx.interval(FULL_SYNC_EVERY, || CityMsg::FullSync);
        ctx.interval(self.patrol, || CityMsg::Patrol);
        // Fights fall between patrols.
        let myself = ctx.myself().clone();
        let (patrol, half) = (self.patrol, self.patrol / 2);
        tokio::spawn(async move {
            tokio::time::sleep(half).await;
            let mut every = tokio::time::interval(patrol);
            while myself.is_alive() {
                every.tick().await;
                if myself.cast(CityMsg::Fight).await.is_err() {
                    break;
                }
            }
        });
        if let Some(h) = home() {
            // Converge back from the peers at once rather than at their next full sync.
            self.send_to_peers(h, Roster::default(), true);
        }
        Ok(())
    }

    async fn handle(&mut self, msg: CityMsg, _ctx: &mut Context<Self>) -> ActorResult<CityReply> {
        let Some(h) = home() else {
            return Ok(CityReply::Done);
        };
        Counters::bump(&h.counters.city_messages);
        match msg {
            CityMsg::UpdateSuperheroes {
                from,
                roster,
                want_full,
            } => {
                if self.roster.merge(roster) {
                    tracing::debug!(city = %self.name, from = %from, "merged superheroes");
                }
                if want_full {
                    if let Some(peer) = h.node.nodes().into_iter().find(|n| n.as_ref() == from) {
                        let city = h.node.remote::<City>(&peer, CITY_EXPORT);
                        let msg = CityMsg::UpdateSuperheroes {
                            from: h.name.clone(),
                            roster: self.roster.clone(),
                            want_full: false,
                        };
                        tokio::spawn(async move {
                            let _ = city.cast(msg).await;
                        });
                    }
                }
            }
            CityMsg::HeroStatus(entry) => {
                let name = entry.name.clone();
                if self.roster.upsert(entry) {
                    self.dirty.insert(name);
                }
            }
            CityMsg::Gone { name, tombstone } => {
                if self.roster.remove(&name, tombstone) {
                    self.dirty.insert(name);
                }
            }
            CityMsg::Assign { hero } => {
                if self.roster.tombstones.contains_key(&hero) {
                    tracing::warn!(city = %self.name, %hero, "refused to assign a tombstoned hero");
                    return Ok(CityReply::Assigned(Err(format!(
                        "{hero} is tombstoned and cannot be assigned"
                    ))));
                }
                let msg = HeroMsg::Assign {
                    city: self.name.clone(),
                };
                return Ok(CityReply::Assigned(
                    match h.heroes.call::<Hero>(&hero, msg).await {
                        Ok(entry) => {
                            h.event(format!(
                                "{hero} is assigned to {} (health {})",
                                self.name, entry.health
                            ));
                            self.dirty.insert(hero);
                            self.roster.upsert(entry.clone());
                            Ok(entry)
                        }
                        Err(e) => Err(format!("{hero}: {e}")),
                    },
                ));
            }
            CityMsg::Patrol => {
                let heroes = self.my_heroes(false);
                match self.dice.pick(&heroes).cloned() {
                    None => tracing::debug!(city = %self.name, "no superheroes to patrol"),
                    Some(hero) => {
                        tracing::info!(city = %self.name, %hero, "superhero sent on patrol");
                        let sup = h.heroes.clone();
                        tokio::spawn(async move {
                            let _ = sup.cast::<Hero>(&hero, HeroMsg::Patrol).await;
                        });
                    }
                }
            }
            CityMsg::Fight => {
                let heroes = self.my_heroes(true);
                if let Some(hero) = self.dice.pick(&heroes).cloned() {
                    let damage = self.dice.range(5, 15) as i32;
                    let (sup, city) = (h.heroes.clone(), self.name.clone());
                    tokio::spawn(async move {
                        if let Ok(e) = sup.call::<Hero>(&hero, HeroMsg::Villain { damage }).await {
                            tracing::info!(%city, %hero, damage, health = e.health.max(0),
                                "superhero fought a villain");
                        }
                    });
                }
            }
            CityMsg::Gossip => {
                if !self.dirty.is_empty() {
                    let delta = self.roster.subset(&self.dirty);
                    self.dirty.clear();
                    self.send_to_peers(h, delta, false);
                }
            }
            CityMsg::FullSync => self.send_to_peers(h, self.roster.clone(), false),
            CityMsg::Get => return Ok(CityReply::Roster(self.name.clone(), self.roster.clone())),
            CityMsg::Bomb => {
                tracing::warn!(city = %self.name, "the city is being bombed!");
                return Err(ActorError::msg(format!("{} was bombed", self.name)));
            }
        }
        Ok(CityReply::Done)
    }
}

impl RemoteActor for City {
    const TYPE: &'static str = "dispatch.City";
}

/// Run this node's city for as long as the process lives: a supervisor with restart intensity 3 in
/// 5 s restarts it after every crash; if the intensity is exceeded the supervisor gives up (as
/// OTP's would), and after a pause the node builds a new one.
pub async fn run(h: &'static Home) {
    let intensity = Intensity::new(3, Duration::from_secs(5)).expect("valid intensity");
    loop {
        let opts = throng::supervisor::SupervisorOptions {
            intensity,
            ..Default::default()
        };
        let sup = match DynamicSupervisor::start(opts).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the city supervisor");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        let (name, tick_ms) = (h.city_name.clone(), h.tick.as_millis() as u64);
        let spec = ChildSpec::new(move || City::new(name.clone(), tick_ms)).on_start(|city| {
            let starts = h
                .counters
                .city_starts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            set_local(h, Some(city.clone()));
            export_city(h, city.clone());
            if starts > 0 {
                h.event(format!("{} was restarted with a clean state", h.city_name));
            }
        });
        if let Err(e) = sup.start_child(spec).await {
            tracing::error!(error = %e, "cannot start the city");
        }
        let reason = sup.actor().monitor().await;
        set_local(h, None);
        h.event(format!(
            "{} fell: its supervisor gave up ({reason}); rebuilding in 5 s",
            h.city_name
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Export the city's new incarnation under [`CITY_EXPORT`] (retrying while the old export is still
/// being removed).
fn export_city(h: &'static Home, city: ActorRef<City>) {
    if h.node.export(CITY_EXPORT, &city).is_ok() {
        return;
    }
    tokio::spawn(async move {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if !city.is_alive() || h.node.export(CITY_EXPORT, &city).is_ok() {
                return;
            }
        }
        tracing::warn!("could not export the restarted city");
    });
}

/// This node's running city.
static LOCAL: std::sync::RwLock<Option<ActorRef<City>>> = std::sync::RwLock::new(None);

/// The running city of this node, if any (none while it is being rebuilt).
pub fn local() -> Option<ActorRef<City>> {
    LOCAL
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .filter(|c| c.is_alive())
}

/// Publish the city's current incarnation, and send heroes' reports to it.
fn set_local(h: &Home, city: Option<ActorRef<City>>) {
    let sink = city.clone().map(|c| -> crate::home::ReportSink {
        std::sync::Arc::new(move |report| {
            let msg = match report {
                HeroReport::Status(entry) => CityMsg::HeroStatus(entry),
                HeroReport::Gone { name, tombstone } => CityMsg::Gone { name, tombstone },
            };
            let _ = c.try_cast(msg);
        })
    });
    h.set_reports(sink);
    *LOCAL.write().unwrap_or_else(|p| p.into_inner()) = city;
}
