//! Local registry: unique names, metadata, via addressing, select/count, groups, cleanup on exit.

mod common;

use std::time::Duration;

use common::{eventually, Cmd, Log, Probe};
use throng::prelude::*;
use throng::registry::{RegistryError, ViaError};

#[tokio::test]
async fn register_lookup_and_address_by_name() {
    let log = Log::default();
    let reg: Registry<&'static str> = Registry::new();
    let a = throng::spawn(Probe::new("a", &log));
    reg.register("counter", &a, "meta-a").unwrap();
    // Visible at once to the registering task.
    assert_eq!(reg.lookup::<Probe>("counter"), Some(a.clone()));
    assert_eq!(reg.meta("counter"), Some("meta-a"));
    reg.cast::<Probe>("counter", Cmd::Add(3)).await.unwrap();
    assert_eq!(reg.call::<Probe>("counter", Cmd::Add(4)).await.unwrap(), 7);
    assert!(reg.update_meta("counter", |m| *m = "updated"));
    assert_eq!(reg.lookup_handle("counter").unwrap().1, "updated");
    assert_eq!(
        reg.call::<Probe>("nobody", Cmd::Get).await.unwrap_err(),
        ViaError::NotRegistered("nobody".into())
    );
}

#[tokio::test]
async fn taken_name_is_an_error_naming_the_holder() {
    let log = Log::default();
    let reg: Registry = Registry::new();
    let a = throng::spawn(Probe::new("a", &log));
    let b = throng::spawn(Probe::new("b", &log));
    reg.register("x", &a, ()).unwrap();
    assert_eq!(
        reg.register("x", &b, ()).unwrap_err(),
        RegistryError::AlreadyRegistered {
            name: "x".into(),
            holder: a.id()
        }
    );
    assert_eq!(reg.lookup::<Probe>("x").unwrap().id(), a.id());
}

#[tokio::test]
async fn entries_disappear_when_the_actor_exits() {
    let log = Log::default();
    let reg: Registry = Registry::new();
    let a = throng::spawn(Probe::new("a", &log));
    reg.register("one", &a, ()).unwrap();
    reg.register("two", &a, ()).unwrap();
    reg.join("group", &a, ()).unwrap();
    let mut keys = reg.keys(a.id());
    keys.sort();
    assert_eq!(keys, vec!["one", "two"]);
    a.cast(Cmd::Panic).await.unwrap();
    eventually("names removed", Duration::from_secs(5), || {
        reg.count() == 0 && reg.group_size("group") == 0
    })
    .await;
    // Registering an exited actor is refused and leaves nothing behind.
    assert_eq!(
        reg.register("one", &a, ()).unwrap_err(),
        RegistryError::NotAlive(a.id())
    );
    assert_eq!(reg.count(), 0);
}

#[tokio::test]
async fn exit_of_a_former_holder_does_not_remove_the_new_one() {
    let log = Log::default();
    let reg: Registry = Registry::new();
    let old = throng::spawn(Probe::new("old", &log));
    let new = throng::spawn(Probe::new("new", &log));
    reg.register("name", &old, ()).unwrap();
    assert!(reg.unregister("name"));
    reg.register("name", &new, ()).unwrap();
    old.kill();
    old.monitor().await;
    assert_eq!(reg.lookup::<Probe>("name").unwrap().id(), new.id());
}

#[tokio::test]
async fn select_and_count_filter_on_metadata() {
    let log = Log::default();
    let reg: Registry<u32> = Registry::new();
    for i in 0..10u32 {
        let a = throng::spawn(Probe::new("p", &log));
        reg.register(format!("hero-{i}"), &a, i).unwrap();
    }
    let mut strong: Vec<u32> = reg
        .select(|_, _, &m| m >= 7)
        .into_iter()
        .map(|(_, _, m)| m)
        .collect();
    strong.sort();
    assert_eq!(strong, vec![7, 8, 9]);
    assert_eq!(reg.count(), 10);
    assert_eq!(reg.count_match(|name, _, _| name.ends_with('3')), 1);
}

struct Other;

impl Actor for Other {
    type Msg = ();
    type Reply = ();
    async fn handle(&mut self, _: (), _ctx: &mut Context<Self>) -> ActorResult<()> {
        Ok(())
    }
}

#[tokio::test]
async fn wrong_type_is_a_typed_error() {
    let reg: Registry = Registry::new();
    let o = throng::spawn(Other);
    reg.register("o", &o, ()).unwrap();
    assert!(reg.lookup::<Probe>("o").is_none());
    assert!(matches!(
        reg.call::<Probe>("o", Cmd::Get).await.unwrap_err(),
        ViaError::WrongType { .. }
    ));
    assert!(reg.members::<Probe>("g").is_empty());
}

#[tokio::test]
async fn groups_dispatch_to_every_member() {
    let log = Log::default();
    let reg: Registry = Registry::new();
    let members: Vec<_> = (0..3)
        .map(|_| throng::spawn(Probe::new("m", &log)))
        .collect();
    for m in &members {
        reg.join("news", m, ()).unwrap();
    }
    assert_eq!(reg.dispatch::<Probe>("news", Cmd::Add(2)).await, 3);
    for m in &members {
        assert_eq!(m.call(Cmd::Get).await.unwrap(), 2);
    }
    assert_eq!(reg.leave("news", members[0].id()), 1);
    members[1].kill();
    members[1].monitor().await;
    eventually("dead member removed", Duration::from_secs(5), || {
        reg.group_size("news") == 1
    })
    .await;
    assert_eq!(reg.dispatch::<Probe>("news", Cmd::Add(1)).await, 1);
    assert_eq!(members[2].call(Cmd::Get).await.unwrap(), 3);
}

#[tokio::test]
async fn registry_is_bounded() {
    let log = Log::default();
    let reg: Registry = Registry::with_max_entries(2);
    let a = throng::spawn(Probe::new("a", &log));
    reg.register("1", &a, ()).unwrap();
    reg.join("g", &a, ()).unwrap();
    assert_eq!(
        reg.register("2", &a, ()).unwrap_err(),
        RegistryError::Full(2)
    );
    assert!(reg.unregister("1"));
    reg.register("2", &a, ()).unwrap();
}
