//! The fuzz targets' inputs, replayed on stable Rust: the seeds the fuzzer starts from (the
//! tests' own files: the bad-input corpus, the sample events and data, simulated DMS files) and
//! every input it kept in fuzz/seeds. Each must come back as a result, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use dms2delta::fuzzing::{decode_bytes, parse_event, route_key, KEYS};
use dms2delta::sim::{simulate, SimOptions};
use support::repo;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn inputs(dirs: &[&str]) -> Vec<(String, Vec<u8>)> {
    dirs.iter()
        .flat_map(|d| files(&repo().join(d)))
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

#[test]
fn the_decoder_survives_every_seed_under_every_layout() {
    let mut seeds = inputs(&["fuzz/seeds/decode", "tests/bad-input/files", "events/data"]);
    let sim = simulate(&SimOptions::default());
    seeds.extend(sim.files.iter().take(12).map(|f| (f.key.clone(), f.bytes.clone())));
    assert!(seeds.len() > 40, "{}", seeds.len());
    let mut decoded = 0;
    for (name, bytes) in &seeds {
        for (which, key) in KEYS.iter().enumerate() {
            // A panic fails the test with the input's name in the message.
            let ok = std::panic::catch_unwind(|| decode_bytes(which, bytes))
                .unwrap_or_else(|_| panic!("decoder panicked on {name} as {key}"));
            decoded += usize::from(ok);
        }
    }
    // The good files among the seeds decode: the harness really reaches the decoder.
    assert!(decoded > 10, "only {decoded} decoded");
}

#[test]
fn the_router_survives_every_seed() {
    let mut seeds = inputs(&["fuzz/seeds/route"]);
    let corpus: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("tests/bad-input/cases.json")).unwrap()).unwrap();
    for c in corpus["files"]
        .as_array()
        .unwrap()
        .iter()
        .chain(corpus["keys"].as_array().unwrap())
    {
        let key = c["key"].as_str().unwrap();
        seeds.push((key.to_string(), key.as_bytes().to_vec()));
    }
    seeds.extend(KEYS.iter().map(|k| (k.to_string(), k.as_bytes().to_vec())));
    let sim = simulate(&SimOptions::default());
    seeds.extend(sim.files.iter().map(|f| (f.key.clone(), f.key.as_bytes().to_vec())));
    let routed = seeds
        .iter()
        .filter(|(name, bytes)| {
            std::panic::catch_unwind(|| route_key(bytes)).unwrap_or_else(|_| panic!("router panicked on {name}"))
        })
        .count();
    assert!(routed > 10 && routed < seeds.len(), "{routed} of {}", seeds.len());
}

#[test]
fn the_event_parsers_survive_every_seed() {
    let seeds: Vec<(String, Vec<u8>)> = inputs(&["fuzz/seeds/events", "tests/bad-input/events"])
        .into_iter()
        .chain(
            files(&repo().join("events"))
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap())),
        )
        .collect();
    assert!(seeds.len() > 15, "{}", seeds.len());
    let parsed = seeds
        .iter()
        .filter(|(name, bytes)| {
            std::panic::catch_unwind(|| parse_event(bytes)).unwrap_or_else(|_| panic!("parser panicked on {name}"))
        })
        .count();
    assert!(parsed > 5, "{parsed}");
}
