//! A superhero: a distributed child keyed by its name. Every tick it decides to rest (+1..40
//! health) or to fight (win, or lose 1..40 health); at health 0 it stops for good (transient).
//!
//! Its whole state is its snapshot, taken after every message and replicated to a backup node, so
//! it resumes with its health and record when it moves, fails over or restarts — the Horde version
//! silently reset them. Every change is pushed to the city of the node it runs on, which spreads it
//! to the other cities; that is how every page sees every hero without asking each one.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use throng::cluster::{Keyed, RemoteActor, SnapshotPolicy};
use throng::prelude::*;

use crate::home::{home, now_ms, Counters, Dice};
use crate::roster::{next_version, Activity, HeroEntry, HeroReport, Tombstone};

/// Health of a new hero, and the most any hero has.
pub const MAX_HEALTH: i32 = 100;

/// Health an assignment to a city gives.
pub const ASSIGN_BONUS: i32 = 20;

/// What a hero is started from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeroArgs {
    /// Decision period in milliseconds.
    pub tick_ms: u64,
    /// The city it starts in.
    pub city: Option<String>,
}

/// What survives a crash, a failover and a move: everything.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeroState {
    health: i32,
    fights_won: u32,
    fights_lost: u32,
    activity: Activity,
    city: Option<String>,
    version: u64,
    dice: Dice,
}

/// The superhero actor.
pub struct Hero {
    name: String,
    tick: Duration,
    state: HeroState,
    restored: bool,
}

/// What a hero is told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HeroMsg {
    /// Decide: rest or fight.
    Tick,
    /// Report its state.
    Status,
    /// Its city sends it on patrol.
    Patrol,
    /// A villain hits it while on patrol.
    Villain {
        /// Health lost.
        damage: i32,
    },
    /// Assigned to `city` (+20 health).
    Assign {
        /// The city.
        city: String,
    },
}

impl Hero {
    fn entry(&self) -> HeroEntry {
        HeroEntry {
            version: self.state.version,
            name: self.name.clone(),
            node: home().map(|h| h.name.clone()).unwrap_or_default(),
            city: self.state.city.clone(),
            health: self.state.health,
            fights_won: self.state.fights_won,
            fights_lost: self.state.fights_lost,
            activity: self.state.activity,
        }
    }

    /// Stamp a new version and tell the local city.
    fn publish(&mut self) {
        self.state.version = next_version(self.state.version, now_ms());
        if let Some(h) = home() {
            // A full city mailbox drops this update; the next tick sends a newer one.
            h.report(HeroReport::Status(self.entry()));
        }
    }

    /// Health reached zero: tombstone it and stop for good.
    fn defeated(&mut self, by: &str, ctx: &mut Context<Self>) {
        self.publish();
        if let Some(h) = home() {
            Counters::bump(&h.counters.heroes_defeated);
            h.event(format!(
                "{} was defeated by {by} ({} won, {} lost); retiring for good",
                self.name, self.state.fights_won, self.state.fights_lost
            ));
            h.report(HeroReport::Gone {
                name: self.name.clone(),
                tombstone: Tombstone {
                    version: self.state.version,
                    defeated: true,
                },
            });
        }
        ctx.stop();
    }
}

impl Actor for Hero {
    type Msg = HeroMsg;
    type Reply = HeroEntry;

    async fn started(&mut self, ctx: &mut Context<Self>) -> ActorResult<()> {
        ctx.interval(self.tick, || HeroMsg::Tick);
        if let Some(h) = home() {
            if self.restored {
                h.event(format!(
                    "{} resumes on {} with health {}, {} won, {} lost",
                    self.name,
                    h.name,
                    self.state.health,
                    self.state.fights_won,
                    self.state.fights_lost
                ));
            } else {
                h.event(format!("{} is on duty on {}", self.name, h.name));
            }
        }
        self.publish();
        Ok(())
    }

    async fn handle(&mut self, msg: HeroMsg, ctx: &mut Context<Self>) -> ActorResult<HeroEntry> {
        if let Some(h) = home() {
            Counters::bump(&h.counters.hero_messages);
        }
        let s = &mut self.state;
        match msg {
            HeroMsg::Status => return Ok(self.entry()),
            HeroMsg::Tick => {
                if s.dice.range(1, 4) == 1 {
                    let gain = s.dice.range(1, 40) as i32;
                    s.health = (s.health + gain).min(MAX_HEALTH);
                    s.activity = Activity::Resting;
                    tracing::debug!(hero = %self.name, gain, health = s.health, "resting");
                } else {
                    s.activity = Activity::Patrolling;
                    if s.dice.range(1, 2) == 1 {
                        s.fights_won += 1;
                        tracing::debug!(hero = %self.name, won = s.fights_won, "won a fight");
                    } else {
                        let loss = s.dice.range(1, 40) as i32;
                        s.health -= loss;
                        s.fights_lost += 1;
                        tracing::debug!(hero = %self.name, loss, health = s.health, "lost a fight");
                        if s.health <= 0 {
                            self.defeated("a street fight", ctx);
                            return Ok(self.entry());
                        }
                    }
                }
            }
            HeroMsg::Patrol => s.activity = Activity::Patrolling,
            HeroMsg::Villain { damage } => {
                s.health -= damage;
                if s.health <= 0 {
                    self.defeated("a villain", ctx);
                    return Ok(self.entry());
                }
            }
            HeroMsg::Assign { city } => {
                s.health = (s.health + ASSIGN_BONUS).min(MAX_HEALTH);
                s.city = Some(city);
                s.activity = Activity::Resting;
            }
        }
        self.publish();
        Ok(self.entry())
    }
}

impl RemoteActor for Hero {
    const TYPE: &'static str = "dispatch.Hero";
}

impl Keyed for Hero {
    type Args = HeroArgs;
    type State = HeroState;

    fn start(key: &str, args: HeroArgs) -> Self {
        Hero {
            name: key.to_owned(),
            tick: Duration::from_millis(args.tick_ms.max(10)),
            state: HeroState {
                health: MAX_HEALTH,
                fights_won: 0,
                fights_lost: 0,
                activity: Activity::Resting,
                city: args.city,
                version: 0,
                dice: Dice::seeded(key),
            },
            restored: false,
        }
    }

    fn restart() -> RestartPolicy {
        RestartPolicy::Transient
    }

    fn snapshot(&self) -> Option<HeroState> {
        Some(self.state.clone())
    }

    fn restore(key: &str, args: HeroArgs, state: HeroState) -> Self {
        let mut hero = Hero::start(key, args);
        hero.state = state;
        hero.restored = true;
        hero
    }

    fn snapshot_policy() -> SnapshotPolicy {
        // After every message: a hero that moves or fails over loses nothing it was told.
        SnapshotPolicy {
            every_messages: 1,
            every: None,
        }
    }
}
