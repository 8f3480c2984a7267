//! The zip files Lambda takes: one executable `bootstrap` at the root, written and read with the
//! `zip` crate. The entry gets a fixed timestamp (1980-01-01, the earliest a zip can hold) and
//! fixed permissions, so the same binary always gives the same bytes and the checksums are
//! reproducible; reading back lets the checks look at what is uploaded, not at a file beside it.

use std::io::{Cursor, Read, Write};

pub use flate2::Compression;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipArchive, ZipWriter};

use crate::Error;

/// rwxr-xr-x: Lambda runs `bootstrap`, so it must be executable.
const BOOTSTRAP_MODE: u32 = 0o755;

/// One file read back from a zip.
#[derive(Debug)]
pub struct Entry {
    pub name: String,
    /// The Unix mode from the external attributes (0 when the zip was not made on Unix).
    pub mode: u32,
    pub data: Vec<u8>,
}

fn zip_err(what: &str) -> impl Fn(zip::result::ZipError) -> Error + '_ {
    move |e| Error::Zip(format!("{what}: {e}"))
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Zip(format!("{what}: {e}"))
}

/// A zip holding `contents` as the single file `name`, deflated at the highest level (what
/// releases use).
pub fn write_single(name: &str, contents: &[u8]) -> Result<Vec<u8>, Error> {
    write_single_at(name, contents, Compression::best())
}

/// [`write_single`] at a given deflate level (tests use a fast one).
pub fn write_single_at(name: &str, contents: &[u8], level: Compression) -> Result<Vec<u8>, Error> {
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .compression_level(Some(i64::from(level.level())))
        .last_modified_time(DateTime::default())
        .unix_permissions(BOOTSTRAP_MODE);
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    writer.start_file(name, options).map_err(zip_err("start entry"))?;
    writer.write_all(contents).map_err(io_err("write entry"))?;
    let out = writer.finish().map_err(zip_err("finish zip"))?;
    Ok(out.into_inner())
}

/// Every file in a zip, read to its end (which checks its CRC).
pub fn read_all(zip: &[u8]) -> Result<Vec<Entry>, Error> {
    let mut archive = ZipArchive::new(Cursor::new(zip)).map_err(zip_err("not a readable zip"))?;
    let mut out = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).map_err(zip_err("entry"))?;
        let name = file.name().to_string();
        let mode = file.unix_mode().unwrap_or(0);
        let mut data = Vec::with_capacity(usize::try_from(file.size()).unwrap_or(0));
        file.read_to_end(&mut data).map_err(io_err(&name))?;
        out.push(Entry { name, mode, data });
    }
    Ok(out)
}
