//! What a function binary asks of the system it runs on: the shared libraries it links and the
//! glibc symbol versions it needs. A binary built on a newer host than Lambda's image links
//! symbols such as `GLIBC_2.39` and fails at cold start; reading the version-needed section
//! catches that before deployment.

use std::fmt;

use object::elf::{self, FileHeader64};
use object::read::elf::FileHeader;
use object::Endianness;

use crate::Error;

/// A glibc symbol version such as 2.34 or 2.2.5, compared component by component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GlibcVersion(pub Vec<u32>);

impl GlibcVersion {
    /// Parses `2.34` (or the `GLIBC_2.34` a version-needed entry names).
    pub fn parse(s: &str) -> Option<Self> {
        let digits = s.strip_prefix("GLIBC_").unwrap_or(s);
        let parts: Option<Vec<u32>> = digits.split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| p.len() >= 2).map(GlibcVersion)
    }
}

impl fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

/// The machine a binary is built for, as Lambda names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    pub fn lambda_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    pub fn from_lambda_name(s: &str) -> Option<Self> {
        match s {
            "x86_64" => Some(Arch::X86_64),
            "arm64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

/// What the dynamic loader must provide for a binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    pub arch: Arch,
    /// DT_NEEDED entries, in file order.
    pub needed_libraries: Vec<String>,
    /// Every `GLIBC_*` version named in the version-needed section (any library), sorted.
    pub glibc_versions: Vec<GlibcVersion>,
    /// Version names that are glibc's but not a release number (`GLIBC_PRIVATE`): never portable.
    pub glibc_other: Vec<String>,
}

impl Requirements {
    pub fn glibc_max(&self) -> Option<&GlibcVersion> {
        self.glibc_versions.iter().max()
    }

    /// Every requirement above `limit` (and every private glibc version), as messages.
    pub fn violations(&self, limit: &GlibcVersion) -> Vec<String> {
        let mut out: Vec<String> = self
            .glibc_versions
            .iter()
            .filter(|v| *v > limit)
            .map(|v| format!("needs GLIBC_{v}, newer than the {limit} allowed"))
            .collect();
        out.extend(
            self.glibc_other
                .iter()
                .map(|o| format!("needs {o}, which no other glibc build provides")),
        );
        out
    }
}

/// Reads a 64-bit ELF executable's loader requirements.
pub fn requirements(data: &[u8]) -> Result<Requirements, Error> {
    let bad = |what: &str, e: object::read::Error| Error::Elf(format!("{what}: {e}"));
    let header = FileHeader64::<Endianness>::parse(data).map_err(|e| bad("not a 64-bit ELF file", e))?;
    let endian = header.endian().map_err(|e| bad("ELF byte order", e))?;
    let arch = match header.e_machine(endian) {
        elf::EM_X86_64 => Arch::X86_64,
        elf::EM_AARCH64 => Arch::Arm64,
        other => return Err(Error::Elf(format!("machine {other} is neither x86_64 nor aarch64"))),
    };
    let sections = header.sections(endian, data).map_err(|e| bad("section table", e))?;

    let dynamic = sections
        .dynamic_table(endian, data)
        .map_err(|e| bad("dynamic section", e))?;
    let mut needed_libraries = Vec::new();
    for entry in dynamic.iter().filter(|d| d.tag == elf::DT_NEEDED) {
        let name = dynamic.string(entry).map_err(|e| bad("DT_NEEDED name", e))?;
        needed_libraries.push(String::from_utf8_lossy(name).into_owned());
    }

    let mut glibc_versions = Vec::new();
    let mut glibc_other = Vec::new();
    if let Some((mut needs, link)) = sections
        .gnu_verneed(endian, data)
        .map_err(|e| bad("version-needed section", e))?
    {
        let strings = sections
            .strings(endian, data, link)
            .map_err(|e| bad("version strings", e))?;
        while let Some((_need, mut aux)) = needs.next().map_err(|e| bad("version-needed entry", e))? {
            while let Some(entry) = aux.next().map_err(|e| bad("version-needed entry", e))? {
                let name = entry.name(endian, strings).map_err(|e| bad("version name", e))?;
                let name = String::from_utf8_lossy(name);
                if !name.starts_with("GLIBC_") {
                    continue;
                }
                match GlibcVersion::parse(&name) {
                    Some(v) => glibc_versions.push(v),
                    None => glibc_other.push(name.into_owned()),
                }
            }
        }
    }
    glibc_versions.sort();
    glibc_versions.dedup();
    glibc_other.sort();
    glibc_other.dedup();
    Ok(Requirements {
        arch,
        needed_libraries,
        glibc_versions,
        glibc_other,
    })
}
