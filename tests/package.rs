//! Release packages (scripts/package.sh): the template that deploys them, and, when a release
//! folder is present, every zip in it against the release checks (bootstrap at the root, glibc
//! no newer than Lambda's 2.34, the right machine, at most 30 MB, checksums and manifest
//! matching). The suite does not build the release itself (an hour of release builds on 2
//! cores); the packaging script runs the same checks on what it builds and refuses violations,
//! and `DMS2DELTA_REQUIRE_PACKAGES=1` makes a missing release folder a failure here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use dms2delta_packager::{
    verify_dir, zip_template, Arch, GlibcVersion, CHECKSUMS, FUNCTIONS, GLIBC_LIMIT, ZIP_LIMIT_BYTES,
};
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn functions(t: &Value) -> Vec<(String, Value)> {
    t["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Serverless::Function"))
        .map(|(k, r)| (k.as_str().unwrap().to_string(), r.clone()))
        .collect()
}

#[test]
fn the_release_template_deploys_the_zips_and_changes_nothing_else() {
    let source = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    let original: Value = serde_yaml_ng::from_str(&source).unwrap();
    for arch in [Arch::X86_64, Arch::Arm64] {
        let text = zip_template(&source, arch, "generated for the test").unwrap();
        assert!(text.starts_with("# generated for the test\n"));
        let mut t: Value = serde_yaml_ng::from_str(&text).unwrap();
        let name = arch.lambda_name();
        let p = &t["Parameters"]["Architecture"];
        assert_eq!(p["Default"].as_str(), Some(name));
        assert_eq!(p["AllowedValues"].as_sequence().unwrap().len(), 1, "{name} only");
        let mut seen = Vec::new();
        for (logical, r) in functions(&t) {
            let binary = r["Metadata"]["BuildProperties"]["Binary"].as_str().unwrap().to_string();
            assert_eq!(
                r["Properties"]["CodeUri"].as_str(),
                Some(format!("{binary}-{name}.zip").as_str()),
                "{logical}"
            );
            seen.push(binary);
        }
        seen.sort();
        let mut want: Vec<&str> = FUNCTIONS.to_vec();
        want.sort();
        assert_eq!(seen, want);

        // Put the source values back: everything else must be untouched.
        for (logical, r) in functions(&original) {
            t["Resources"][logical.as_str()]["Properties"]["CodeUri"] = r["Properties"]["CodeUri"].clone();
        }
        t["Parameters"]["Architecture"] = original["Parameters"]["Architecture"].clone();
        assert!(
            t == original,
            "{name}: the release template differs in more than CodeUri and Architecture"
        );
    }
}

#[test]
fn the_template_defaults_to_the_verified_architecture() {
    let t: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(repo().join("template.yaml")).unwrap()).unwrap();
    let p = &t["Parameters"]["Architecture"];
    // x86_64 is what scripts/package.sh built and checked here; arm64 stays selectable.
    assert_eq!(p["Default"].as_str(), Some("x86_64"));
    let allowed: Vec<&str> = p["AllowedValues"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(allowed, ["x86_64", "arm64"]);
    let archs = t["Globals"]["Function"]["Architectures"].as_sequence().unwrap();
    assert_eq!(archs.len(), 1);
    let Value::Tagged(tagged) = &archs[0] else {
        panic!("Architectures must be [!Ref Architecture], got {archs:?}");
    };
    assert_eq!(tagged.tag.to_string(), "!Ref");
    assert_eq!(tagged.value.as_str(), Some("Architecture"));
    for (logical, r) in functions(&t) {
        assert!(
            r["Properties"].get("Architectures").is_none(),
            "{logical} overrides the Architecture parameter"
        );
    }
}

#[test]
fn packaged_zips_pass_the_release_checks() {
    let dist = std::env::var_os("DMS2DELTA_DIST").map_or_else(|| repo().join("dist"), PathBuf::from);
    if !dist.join("manifest.json").is_file() {
        assert!(
            std::env::var_os("DMS2DELTA_REQUIRE_PACKAGES").is_none(),
            "DMS2DELTA_REQUIRE_PACKAGES is set but {} holds no release (run scripts/package.sh)",
            dist.display()
        );
        println!(
            "no release in {} (scripts/package.sh makes one): nothing to check",
            dist.display()
        );
        return;
    }
    // Layout, machine, glibc, size, checksum and manifest agreement, zip by zip.
    let manifest = verify_dir(&dist).unwrap();
    let limit = GlibcVersion::parse(GLIBC_LIMIT).unwrap();
    let sums = std::fs::read_to_string(dist.join(CHECKSUMS)).unwrap();
    let mut arches: Vec<&str> = manifest.packages.iter().map(|p| p.arch.as_str()).collect();
    arches.sort();
    arches.dedup();
    assert!(!arches.is_empty());
    for arch in arches {
        for function in FUNCTIONS {
            let p = manifest
                .packages
                .iter()
                .find(|p| p.arch == arch && p.function == function)
                .unwrap_or_else(|| panic!("the {arch} release has no {function}"));
            println!(
                "{} {} bytes ({:.1} MB), bootstrap {:.1} MB, glibc {}, links {:?}",
                p.zip,
                p.zip_bytes,
                p.zip_bytes as f64 / 1e6,
                p.bootstrap_bytes as f64 / 1e6,
                p.glibc_max,
                p.needed_libraries
            );
            assert!(p.zip_bytes <= ZIP_LIMIT_BYTES, "{}: {} bytes", p.zip, p.zip_bytes);
            assert!(GlibcVersion::parse(&p.glibc_max).unwrap() <= limit, "{}", p.zip);
            assert!(
                sums.contains(&format!("{}  {}\n", p.sha256, p.zip)),
                "{} not in {CHECKSUMS}",
                p.zip
            );
            assert!(dist.join(format!("template-{arch}.yaml")).is_file());
        }
    }
}
