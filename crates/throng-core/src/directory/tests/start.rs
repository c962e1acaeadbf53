//! Start requests and the records they make: typed errors, generations and tags that are never
//! zero, the initial version.

use super::*;

#[test]
fn a_start_of_a_type_the_owner_does_not_host_is_answered_with_a_typed_error() {
    let mut d = Directory::new(DirConfig::new(id("a")));
    drop(d.set_view([&id("a")]));
    let actions = d.start(7, spec("k"));
    assert!(actions.iter().any(|a| matches!(a, Action::Spawn(_))));
    let actions = d.spawned("k", Err(SpawnError::UnknownType("t".into())));
    let answered = actions.iter().any(|a| {
        matches!(a, Action::Reply { req: 7, result: Err(StartError::UnknownType { actor_type }) }
            if actor_type == "t")
    });
    assert!(answered, "{actions:?}");
    assert!(
        d.owned().is_empty(),
        "nothing is kept of a child that never ran"
    );
}

#[test]
fn a_zero_generation_or_tag_does_not_decode() {
    use serde::de::value::{Error, U64Deserializer};
    use serde::de::IntoDeserializer;
    let zero: U64Deserializer<Error> = 0u64.into_deserializer();
    assert!(Generation::deserialize(zero).is_err());
    assert!(Tag::deserialize(zero).is_err());
    let seven: U64Deserializer<Error> = 7u64.into_deserializer();
    assert_eq!(Generation::deserialize(seven), Ok(generation(7)));
    assert_eq!(Tag::deserialize(seven), Ok(tag(7)));
    assert_eq!(Version::deserialize(zero), Ok(Version::INITIAL));
    assert_eq!(Generation::new(0), None);
    assert_eq!(Tag::new(0), None);
}

#[test]
fn a_started_record_is_at_its_initial_version_with_the_generation_drawn() {
    let r = Record::new(spec("k"), generation(9));
    assert_eq!(
        (r.version, r.generation, r.snapshot),
        (Version::INITIAL, generation(9), None)
    );
    assert!(Version::INITIAL < Version::INITIAL.next());
    assert_eq!(Version::new(4).next().get(), 5);
    assert_eq!(
        format!("{} {} {}", generation(3), tag(4), Version::new(5)),
        "3 4 5"
    );
}
