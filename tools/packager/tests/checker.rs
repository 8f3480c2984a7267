//! The release checks themselves, on a binary at hand: this test executable, which the host's
//! toolchain links against the host's glibc like any binary built without a pinned glibc.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dms2delta_packager::zip::Compression;
use dms2delta_packager::{elf, inspect_with, zip, Arch, Error, GlibcVersion, Limits, GLIBC_LIMIT, ZIP_LIMIT_BYTES};

fn this_binary() -> Vec<u8> {
    let exe = std::env::current_exe().unwrap();
    std::fs::read(&exe).unwrap()
}

fn host_arch() -> Arch {
    if cfg!(target_arch = "aarch64") {
        Arch::Arm64
    } else {
        Arch::X86_64
    }
}

fn v(s: &str) -> GlibcVersion {
    GlibcVersion::parse(s).unwrap()
}

#[test]
fn glibc_versions_order_by_component() {
    assert!(v("GLIBC_2.2.5") < v("2.17"));
    assert!(v("2.17") < v("GLIBC_2.34"));
    assert!(v("2.34") < v("2.39"));
    assert!(v("2.9") < v("2.10"), "numeric, not lexical");
    assert_eq!(v("GLIBC_2.34"), v("2.34"));
    assert_eq!(v("2.34").to_string(), "2.34");
    assert_eq!(GlibcVersion::parse("GLIBC_PRIVATE"), None);
    assert_eq!(GlibcVersion::parse("2"), None);
    assert_eq!(v(GLIBC_LIMIT), Limits::release().glibc);
    assert_eq!(Limits::release().zip_bytes, ZIP_LIMIT_BYTES);
}

#[test]
fn reads_the_glibc_versions_a_binary_needs() {
    let req = elf::requirements(&this_binary()).unwrap();
    println!("this test binary: {req:?}");
    assert_eq!(req.arch, host_arch());
    assert!(
        req.needed_libraries.iter().any(|l| l == "libc.so.6"),
        "{:?}",
        req.needed_libraries
    );
    // The oldest version each architecture's glibc port starts at; every Rust binary needs it.
    let base = if host_arch() == Arch::X86_64 {
        v("2.2.5")
    } else {
        v("2.17")
    };
    assert!(req.glibc_versions.contains(&base), "{:?}", req.glibc_versions);
    let max = req.glibc_max().unwrap().clone();
    assert!(max >= base);
    assert!(req.violations(&max).is_empty());
    // One below the newest it needs: exactly the versions above the limit are reported.
    let below = req.glibc_versions.iter().rev().nth(1).unwrap().clone();
    let violations = req.violations(&below);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains(&format!("GLIBC_{max}")), "{violations:?}");
}

#[test]
fn not_an_elf_is_an_error() {
    assert!(matches!(elf::requirements(b"#!/bin/sh\necho hi\n"), Err(Error::Elf(_))));
    assert!(matches!(elf::requirements(&[]), Err(Error::Elf(_))));
}

#[test]
fn zips_are_deterministic_and_read_back() {
    // The release level on a slice (deflate at level 9 is slow in a debug build), a fast
    // level on the whole binary.
    let exe = this_binary();
    let head = &exe[..exe.len().min(1 << 20)];
    assert_eq!(
        zip::write_single("bootstrap", head).unwrap(),
        zip::write_single("bootstrap", head).unwrap(),
        "same input, same bytes"
    );
    let a = zip::write_single_at("bootstrap", &exe, Compression::fast()).unwrap();
    let b = zip::write_single_at("bootstrap", &exe, Compression::fast()).unwrap();
    assert_eq!(a, b, "same input, same bytes");
    assert!(a.len() < exe.len(), "deflated");
    let entries = zip::read_all(&a).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, "bootstrap");
    assert_eq!(entries[0].mode, 0o100_755);
    assert!(entries[0].data == exe);

    // A flipped byte in the compressed data is caught (inflate error or CRC mismatch).
    let mut bad = a.clone();
    let mid = 30 + "bootstrap".len() + 100;
    bad[mid] ^= 0xff;
    assert!(zip::read_all(&bad).is_err());
    assert!(zip::read_all(b"PK not really").is_err());
}

#[test]
fn inspect_passes_a_good_zip_and_names_every_problem_of_a_bad_one() {
    let exe = this_binary();
    let req = elf::requirements(&exe).unwrap();
    let max = req.glibc_max().unwrap().clone();
    let good = zip::write_single_at("bootstrap", &exe, Compression::fast()).unwrap();
    let roomy = Limits {
        glibc: max.clone(),
        zip_bytes: good.len() as u64,
    };

    let p = inspect_with("decode", host_arch(), &good, &roomy).unwrap();
    assert_eq!(p.zip, format!("decode-{}.zip", host_arch().lambda_name()));
    assert_eq!(p.zip_bytes, good.len() as u64);
    assert_eq!(p.bootstrap_bytes, exe.len() as u64);
    assert_eq!(p.glibc_max, max.to_string());
    assert_eq!(p.sha256.len(), 64);

    let problems = |r: Result<_, Error>| match r {
        Err(Error::Rejected { problems, .. }) => problems,
        other => panic!("expected a rejection, got {other:?}"),
    };

    // Too new a glibc, too large, wrong machine: all three reported at once.
    let below = req.glibc_versions.iter().rev().nth(1).unwrap().clone();
    let strict = Limits {
        glibc: below,
        zip_bytes: good.len() as u64 - 1,
    };
    let other_arch = if host_arch() == Arch::X86_64 {
        Arch::Arm64
    } else {
        Arch::X86_64
    };
    let found = problems(inspect_with("commit", other_arch, &good, &strict));
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found.iter().any(|p| p.contains(&format!("GLIBC_{max}"))), "{found:?}");
    assert!(found.iter().any(|p| p.contains("-byte limit")), "{found:?}");
    assert!(found.iter().any(|p| p.contains("built for")), "{found:?}");

    // Not at the root under the name Lambda runs.
    let nested = zip::write_single_at("decode/bootstrap", &exe, Compression::fast()).unwrap();
    let found = problems(inspect_with("decode", host_arch(), &nested, &roomy));
    assert!(found[0].contains("not just `bootstrap`"), "{found:?}");

    // Not executable: the mode sits in the central directory's external attributes.
    let mut no_exec = good.clone();
    let central = no_exec.len() - 22 - (46 + "bootstrap".len());
    let attrs = central + 38;
    no_exec[attrs..attrs + 4].copy_from_slice(&(0o100_644u32 << 16).to_le_bytes());
    let found = problems(inspect_with("decode", host_arch(), &no_exec, &roomy));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("not executable"), "{found:?}");
}
