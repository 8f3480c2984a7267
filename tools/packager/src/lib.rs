//! Release packaging of the Lambda functions (`scripts/package.sh` drives it): one zip per
//! function and architecture with `bootstrap` at the root, checked before anything is written
//! for the deployer: the binary's glibc symbol versions (Lambda's `provided.al2023` has glibc
//! 2.34), its machine, and the zip's size; then SHA-256 checksums, a manifest, and a copy of
//! `template.yaml` that deploys those zips.

pub mod elf;
pub mod zip;

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use elf::{Arch, GlibcVersion, Requirements};

/// The functions a release holds (the crates under `functions/`, but for `functions/lambda`,
/// the glue they share).
pub const FUNCTIONS: [&str; 4] = ["decode", "commit", "compact", "reprocess"];

/// The glibc of Lambda's `provided.al2023` runtime: no function may need a newer symbol.
pub const GLIBC_LIMIT: &str = "2.34";

/// The largest zip a release may hold, in bytes (30 MB): well under Lambda's 50 MB limit for a
/// zip uploaded directly, so a function can be updated without going through S3 and a few
/// dependency updates do not push it over.
pub const ZIP_LIMIT_BYTES: u64 = 30_000_000;

/// The manifest's file name, beside the zips.
pub const MANIFEST: &str = "manifest.json";
/// The checksum file's name, in `sha256sum -c` format.
pub const CHECKSUMS: &str = "SHA256SUMS";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ELF: {0}")]
    Elf(String),
    #[error("zip: {0}")]
    Zip(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("template: {0}")]
    Template(String),
    #[error("{zip} fails the release checks:\n  {}", problems.join("\n  "))]
    Rejected { zip: String, problems: Vec<String> },
}

pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One packaged function, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub function: String,
    pub arch: String,
    /// The zip's file name, beside the manifest.
    pub zip: String,
    pub zip_bytes: u64,
    pub bootstrap_bytes: u64,
    pub sha256: String,
    /// The newest glibc symbol version the binary needs.
    pub glibc_max: String,
    /// The shared libraries the binary links (DT_NEEDED).
    pub needed_libraries: Vec<String>,
}

/// `manifest.json`: what was built, from what, with which tools, and what the checks found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub git_commit: String,
    /// Whether the working tree had uncommitted changes when it was built.
    pub git_dirty: bool,
    pub rust_version: String,
    /// How the binaries were built (cargo-lambda and Zig versions, target triples).
    pub toolchain: String,
    pub glibc_limit: String,
    pub zip_limit_bytes: u64,
    pub packages: Vec<Package>,
}

/// The zip's name for a function and architecture.
pub fn zip_name(function: &str, arch: Arch) -> String {
    format!("{function}-{}.zip", arch.lambda_name())
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// What a release zip may need and weigh.
#[derive(Debug, Clone)]
pub struct Limits {
    pub glibc: GlibcVersion,
    pub zip_bytes: u64,
}

impl Limits {
    /// [`GLIBC_LIMIT`] and [`ZIP_LIMIT_BYTES`].
    pub fn release() -> Self {
        Limits {
            glibc: GlibcVersion(vec![2, 34]),
            zip_bytes: ZIP_LIMIT_BYTES,
        }
    }
}

/// [`inspect_with`] the release limits.
pub fn inspect(function: &str, arch: Arch, zip_bytes: &[u8]) -> Result<Package, Error> {
    inspect_with(function, arch, zip_bytes, &Limits::release())
}

/// Every release check on one zip's bytes: exactly one file, `bootstrap`, executable, an ELF
/// for `arch` needing no glibc newer than the limit, and the zip within the size limit.
/// Returns the manifest entry, or every problem found.
pub fn inspect_with(function: &str, arch: Arch, zip_bytes: &[u8], limits: &Limits) -> Result<Package, Error> {
    let name = zip_name(function, arch);
    let limit = &limits.glibc;
    let entries = zip::read_all(zip_bytes)?;
    let mut problems = Vec::new();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    if names != ["bootstrap"] {
        problems.push(format!("holds {names:?}, not just `bootstrap` at the root"));
    }
    let Some(bootstrap) = entries.iter().find(|e| e.name == "bootstrap") else {
        return Err(Error::Rejected { zip: name, problems });
    };
    if bootstrap.mode & 0o111 == 0 {
        problems.push(format!("bootstrap is not executable (mode {:o})", bootstrap.mode));
    }
    let req = elf::requirements(&bootstrap.data)?;
    if req.arch != arch {
        problems.push(format!(
            "bootstrap is built for {}, not {}",
            req.arch.lambda_name(),
            arch.lambda_name()
        ));
    }
    problems.extend(req.violations(limit));
    let glibc_max = match req.glibc_max() {
        Some(v) => v.to_string(),
        None => {
            problems.push("names no glibc version: not a dynamically linked glibc binary".into());
            String::new()
        }
    };
    let zip_len = zip_bytes.len() as u64;
    if zip_len > limits.zip_bytes {
        problems.push(format!("is {zip_len} bytes, over the {}-byte limit", limits.zip_bytes));
    }
    if !problems.is_empty() {
        return Err(Error::Rejected { zip: name, problems });
    }
    Ok(Package {
        function: function.to_string(),
        arch: arch.lambda_name().to_string(),
        zip: name,
        zip_bytes: zip_len,
        bootstrap_bytes: bootstrap.data.len() as u64,
        sha256: sha256_hex(zip_bytes),
        glibc_max,
        needed_libraries: req.needed_libraries,
    })
}

/// Re-checks a release folder: every zip the manifest lists is there, matches its checksum and
/// size, and passes [`inspect`] again with the same findings. Returns the manifest.
pub fn verify_dir(dir: &Path) -> Result<Manifest, Error> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| Error::Manifest(format!("{}: {e}", path.display())))?;
    if manifest.packages.is_empty() {
        return Err(Error::Manifest("lists no packages".into()));
    }
    for p in &manifest.packages {
        let arch =
            Arch::from_lambda_name(&p.arch).ok_or_else(|| Error::Manifest(format!("unknown arch {}", p.arch)))?;
        let zip_path = dir.join(&p.zip);
        let bytes = std::fs::read(&zip_path).map_err(io(&zip_path))?;
        let found = inspect(&p.function, arch, &bytes)?;
        if &found != p {
            return Err(Error::Manifest(format!(
                "{} does not match its manifest entry:\n  listed {p:?}\n  found  {found:?}",
                p.zip
            )));
        }
    }
    Ok(manifest)
}

/// `template.yaml` rewritten to deploy the zips beside it with `sam deploy` (no build step):
/// each function's `CodeUri` names its zip, and the `Architecture` parameter allows only the
/// architecture the zips were built for. Fails unless every line it rewrites is found exactly
/// where expected, so a reshaped template cannot silently deploy from source paths.
pub fn zip_template(template: &str, arch: Arch, header: &str) -> Result<String, Error> {
    let mut lines: Vec<String> = template.lines().map(str::to_string).collect();
    for function in FUNCTIONS {
        let from = format!("CodeUri: functions/{function}");
        let hits: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].trim() == from).collect();
        let [i] = hits[..] else {
            return Err(Error::Template(format!(
                "`{from}` appears {} times, not once",
                hits.len()
            )));
        };
        let indent = &lines[i][..lines[i].len() - lines[i].trim_start().len()];
        lines[i] = format!("{indent}CodeUri: {}", zip_name(function, arch));
    }
    let start = lines
        .iter()
        .position(|l| l == "  Architecture:")
        .ok_or_else(|| Error::Template("no `Architecture` parameter".into()))?;
    let end = lines[start + 1..]
        .iter()
        .position(|l| !l.starts_with("    "))
        .map_or(lines.len(), |n| start + 1 + n);
    let mut replaced = 0;
    for line in &mut lines[start + 1..end] {
        if line.trim_start().starts_with("Default:") {
            *line = format!("    Default: {}", arch.lambda_name());
            replaced += 1;
        } else if line.trim_start().starts_with("AllowedValues:") {
            *line = format!("    AllowedValues: [{}]", arch.lambda_name());
            replaced += 1;
        }
    }
    if replaced != 2 {
        return Err(Error::Template(
            "the `Architecture` parameter has no Default and AllowedValues to pin".into(),
        ));
    }
    let mut out = String::with_capacity(template.len() + header.len() + 1);
    for l in header.lines() {
        out.push_str("# ");
        out.push_str(l);
        out.push('\n');
    }
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    Ok(out)
}
