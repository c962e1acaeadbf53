//! A short seeded run of every fuzz target (the long runs use the `throng-fuzz` binary), and the
//! harness itself: a planted panic and a planted over-allocation are found.

use throng_fuzz::alloc::Counting;
use throng_fuzz::{fuzz, fuzz_target, replay, Config, Harness, Problem, Target};

#[global_allocator]
static ALLOC: Counting = Counting;

/// Inputs per target in the short run.
const INPUTS: u64 = 20_000;

fn config(inputs: u64) -> Config {
    Config {
        inputs,
        seed: 20_26,
        out_dir: None,
        max_findings: 4,
    }
}

#[test]
fn every_decoder_survives_a_short_seeded_run() {
    for t in Target::ALL {
        let r = fuzz_target(t, &config(INPUTS));
        assert_eq!(r.inputs, INPUTS, "{}", r.target);
        assert!(
            r.findings.is_empty(),
            "{}: {:?}",
            r.target,
            r.findings
                .iter()
                .map(|f| (f.problem.to_string(), throng_fuzz::hex(&f.input)))
                .collect::<Vec<_>>()
        );
        // Valid inputs and their mutants reach past the outer framing.
        assert!(
            r.decoded > INPUTS / 5,
            "{}: {} decoded",
            r.target,
            r.decoded
        );
    }
}

#[test]
fn hostile_length_prefixes_reserve_nothing_large() {
    // A handshake frame claiming 8 MiB: the handshake's framing refuses it unreserved.
    for (t, hex) in [
        (Target::Handshake, "00800000"),
        (Target::Handshake, "00000401ff"),
        (Target::Frame, "09ffffffff0f"),
        (Target::Record, "0700000003 00ffffffff0f"),
        (Target::Names, "0001610101ffffffff0f"),
        (Target::Dir, "06ffffffff0f"),
        (Target::Durable, "ffffffff0f00"),
    ] {
        let hex = hex.replace(' ', "");
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert_eq!(replay(t, &bytes), None, "{} {hex}", t.name());
    }
}

#[test]
fn the_harness_finds_a_planted_panic_and_a_planted_allocation() {
    let seeds = vec![vec![1, 2, 3, 4]];
    let planted = |bytes: &[u8]| -> usize {
        match bytes.first() {
            Some(0xff) => panic!("planted panic"),
            // A length prefix believed: the allocation a bounded decoder must not make.
            Some(0xfe) => std::hint::black_box(Vec::<u8>::with_capacity(64 << 20)).capacity(),
            _ => 1,
        }
    };
    let r = fuzz(
        &Harness {
            name: "planted",
            seeds,
            generate: &|rng| Ok(vec![rng.byte() & 0x0f]),
            run: &planted,
        },
        &config(20_000),
    );
    let problems: Vec<&Problem> = r.findings.iter().map(|f| &f.problem).collect();
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::Panic(m) if m.contains("planted panic"))),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::Allocation { peak, .. } if *peak >= 64 << 20)),
        "{problems:?}"
    );
    let panicking = r
        .findings
        .iter()
        .find(|f| matches!(f.problem, Problem::Panic(_)))
        .unwrap();
    assert_eq!(panicking.input.first(), Some(&0xff));
}
