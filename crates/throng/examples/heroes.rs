//! A single-node dispatch center: superheroes are supervised actors registered by name. They
//! patrol on a timer, fight and rest; one of them is "bombed" (crashed) and its supervisor restarts
//! it; a hero whose health reaches zero stops for good (transient). Run with:
//!
//! ```text
//! cargo run --release -p throng --example heroes -- [seconds]
//! ```
//!
//! The cluster demo (three dispatch centers, heroes moving between nodes with their state) arrives
//! with the `throng-dispatch` crate; this example shows the local building blocks it stands on.

use std::time::Duration;

use throng::prelude::*;

/// A superhero: health, fights won and lost, deciding every tick to fight or rest.
struct Hero {
    name: String,
    health: i32,
    won: u32,
    lost: u32,
    registry: Registry<&'static str>,
    rng: u64,
}

#[derive(Debug, Clone)]
enum HeroMsg {
    Tick,
    Bomb,
    Status,
}

impl Hero {
    /// xorshift: a tiny deterministic generator, seeded from the hero's name.
    fn roll(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n
    }
}

impl Actor for Hero {
    type Msg = HeroMsg;
    type Reply = String;

    async fn started(&mut self, ctx: &mut Context<Self>) -> ActorResult<()> {
        self.registry
            .register(self.name.clone(), ctx.myself(), "hero")
            .map_err(|e| ActorError::msg(e.to_string()))?;
        ctx.interval(Duration::from_millis(400), || HeroMsg::Tick);
        tracing::info!(hero = %self.name, "on duty");
        Ok(())
    }

    async fn handle(&mut self, msg: HeroMsg, ctx: &mut Context<Self>) -> ActorResult<String> {
        match msg {
            HeroMsg::Tick => {
                if self.roll(2) == 0 {
                    self.health = (self.health + 1 + self.roll(40) as i32).min(100);
                } else if self.roll(2) == 0 {
                    self.won += 1;
                } else {
                    self.lost += 1;
                    self.health -= 1 + self.roll(40) as i32;
                    if self.health <= 0 {
                        tracing::warn!(hero = %self.name, "defeated; retiring for good");
                        ctx.stop();
                    }
                }
            }
            HeroMsg::Bomb => panic!("{} was bombed", self.name),
            HeroMsg::Status => {}
        }
        Ok(format!(
            "{:<12} health {:>3}  won {:>3}  lost {:>3}",
            self.name, self.health, self.won, self.lost
        ))
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // A bombed hero panics on purpose: log one line instead of a backtrace.
    std::panic::set_hook(Box::new(|info| tracing::error!("actor panicked: {info}")));
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);

    let registry: Registry<&'static str> = Registry::new();
    let sup = DynamicSupervisor::start(SupervisorOptions::default())
        .await
        .expect("supervisor starts");
    for (i, name) in ["batman", "superman", "wonderwoman", "flash", "aquaman"]
        .into_iter()
        .enumerate()
    {
        let registry = registry.clone();
        let spec = ChildSpec::new(move || Hero {
            name: name.to_string(),
            health: 100,
            won: 0,
            lost: 0,
            registry: registry.clone(),
            rng: 0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) * 0x1000_0001),
        })
        .restart(RestartPolicy::Transient);
        sup.start_child(spec).await.expect("hero starts");
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut bombed = false;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !bombed {
            tracing::warn!("bombing flash: its supervisor restarts it with a clean state");
            let _ = registry.cast::<Hero>("flash", HeroMsg::Bomb).await;
            bombed = true;
        }
        let mut names: Vec<String> = registry
            .select(|_, _, m| *m == "hero")
            .into_iter()
            .map(|(n, _, _)| n)
            .collect();
        names.sort();
        println!("--- {} heroes on duty", names.len());
        for name in names {
            if let Ok(line) = registry.call::<Hero>(&name, HeroMsg::Status).await {
                println!("{line}");
            }
        }
    }
    let counts = sup.count_children().await.expect("supervisor answers");
    println!("--- shutting down {} heroes", counts.active);
    sup.shutdown().await;
}
