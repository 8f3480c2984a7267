//! The zip files Lambda takes: one executable `bootstrap` at the root. Written here rather than by
//! `zip` so that the same binary always gives the same bytes (fixed timestamp, fixed
//! attributes, no extra fields), which makes the checksums reproducible, and read back here so
//! that the checks look at what is uploaded, not at a file beside it.

use std::io::{Read, Write};

use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
pub use flate2::Compression;

use crate::Error;

const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_CENTRAL_DIRECTORY: u32 = 0x0605_4b50;
const DEFLATE: u16 = 8;
const STORED: u16 = 0;
/// Made by "Unix" (3), spec version 2.0: the upper half of the external attributes is then the
/// file mode, which is where Lambda reads the executable bit.
const VERSION_MADE_BY: u16 = (3 << 8) | 20;
const VERSION_NEEDED: u16 = 20;
/// 1980-01-01 00:00, the earliest DOS date: a fixed stamp keeps the bytes reproducible.
const DOS_TIME: u16 = 0;
const DOS_DATE: u16 = (1 << 5) | 1;
/// A regular file, rwxr-xr-x.
const BOOTSTRAP_MODE: u32 = 0o100_755;

/// One file read back from a zip.
#[derive(Debug)]
pub struct Entry {
    pub name: String,
    /// The Unix mode from the external attributes (0 when the zip was not made on Unix).
    pub mode: u32,
    pub data: Vec<u8>,
}

/// A zip holding `contents` as the single file `name`, deflated at the highest level (what
/// releases use).
pub fn write_single(name: &str, contents: &[u8]) -> Result<Vec<u8>, Error> {
    write_single_at(name, contents, Compression::best())
}

/// [`write_single`] at a given deflate level (tests use a fast one).
pub fn write_single_at(name: &str, contents: &[u8], level: Compression) -> Result<Vec<u8>, Error> {
    let size = u32::try_from(contents.len()).map_err(|_| Error::Zip(format!("{name} is over 4 GiB")))?;
    let mut encoder = DeflateEncoder::new(Vec::new(), level);
    encoder
        .write_all(contents)
        .map_err(|e| Error::Zip(format!("deflate: {e}")))?;
    let compressed = encoder.finish().map_err(|e| Error::Zip(format!("deflate: {e}")))?;
    let compressed_size =
        u32::try_from(compressed.len()).map_err(|_| Error::Zip(format!("{name} deflates to over 4 GiB")))?;
    let crc = crc32fast::hash(contents);
    let name_len = u16::try_from(name.len()).map_err(|_| Error::Zip("file name too long".into()))?;

    let mut out = Vec::with_capacity(compressed.len() + 128);
    put32(&mut out, LOCAL_HEADER);
    put16(&mut out, VERSION_NEEDED);
    put16(&mut out, 0); // flags: sizes and CRC are in this header, no data descriptor
    put16(&mut out, DEFLATE);
    put16(&mut out, DOS_TIME);
    put16(&mut out, DOS_DATE);
    put32(&mut out, crc);
    put32(&mut out, compressed_size);
    put32(&mut out, size);
    put16(&mut out, name_len);
    put16(&mut out, 0); // extra field length
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&compressed);

    let central_offset = u32::try_from(out.len()).map_err(|_| Error::Zip("zip over 4 GiB".into()))?;
    put32(&mut out, CENTRAL_HEADER);
    put16(&mut out, VERSION_MADE_BY);
    put16(&mut out, VERSION_NEEDED);
    put16(&mut out, 0);
    put16(&mut out, DEFLATE);
    put16(&mut out, DOS_TIME);
    put16(&mut out, DOS_DATE);
    put32(&mut out, crc);
    put32(&mut out, compressed_size);
    put32(&mut out, size);
    put16(&mut out, name_len);
    put16(&mut out, 0); // extra field length
    put16(&mut out, 0); // comment length
    put16(&mut out, 0); // disk number
    put16(&mut out, 0); // internal attributes
    put32(&mut out, BOOTSTRAP_MODE << 16);
    put32(&mut out, 0); // the local header's offset
    out.extend_from_slice(name.as_bytes());
    let central_size = u32::try_from(out.len()).map_err(|_| Error::Zip("zip over 4 GiB".into()))? - central_offset;

    put32(&mut out, END_OF_CENTRAL_DIRECTORY);
    put16(&mut out, 0);
    put16(&mut out, 0);
    put16(&mut out, 1);
    put16(&mut out, 1);
    put32(&mut out, central_size);
    put32(&mut out, central_offset);
    put16(&mut out, 0);
    Ok(out)
}

/// Every file in a zip (stored or deflated; no zip64, no encryption), its CRC checked.
pub fn read_all(zip: &[u8]) -> Result<Vec<Entry>, Error> {
    let eocd = find_end_of_central_directory(zip)?;
    let entries = usize::from(u16_at(zip, eocd + 10)?);
    let mut at = u32_at(zip, eocd + 16)? as usize;
    let mut out = Vec::with_capacity(entries);
    for _ in 0..entries {
        if u32_at(zip, at)? != CENTRAL_HEADER {
            return Err(Error::Zip(format!("no central directory header at offset {at}")));
        }
        let made_by = u16_at(zip, at + 4)?;
        let flags = u16_at(zip, at + 8)?;
        let method = u16_at(zip, at + 10)?;
        let crc = u32_at(zip, at + 16)?;
        let compressed_size = u32_at(zip, at + 20)? as usize;
        let size = u32_at(zip, at + 24)? as usize;
        let name_len = usize::from(u16_at(zip, at + 28)?);
        let extra_len = usize::from(u16_at(zip, at + 30)?);
        let comment_len = usize::from(u16_at(zip, at + 32)?);
        let external = u32_at(zip, at + 38)?;
        let local = u32_at(zip, at + 42)? as usize;
        let name = String::from_utf8_lossy(slice(zip, at + 46, name_len)?).into_owned();
        at += 46 + name_len + extra_len + comment_len;

        if flags & 1 != 0 {
            return Err(Error::Zip(format!("{name} is encrypted")));
        }
        if u32_at(zip, local)? != LOCAL_HEADER {
            return Err(Error::Zip(format!("{name}: no local header at offset {local}")));
        }
        let data_at = local + 30 + usize::from(u16_at(zip, local + 26)?) + usize::from(u16_at(zip, local + 28)?);
        let raw = slice(zip, data_at, compressed_size)?;
        let data = match method {
            STORED => raw.to_vec(),
            DEFLATE => {
                let mut data = Vec::with_capacity(size);
                DeflateDecoder::new(raw)
                    .read_to_end(&mut data)
                    .map_err(|e| Error::Zip(format!("{name}: inflate: {e}")))?;
                data
            }
            other => return Err(Error::Zip(format!("{name}: compression method {other} not supported"))),
        };
        if data.len() != size || crc32fast::hash(&data) != crc {
            return Err(Error::Zip(format!("{name}: size or CRC does not match its header")));
        }
        let mode = if made_by >> 8 == 3 { external >> 16 } else { 0 };
        out.push(Entry { name, mode, data });
    }
    Ok(out)
}

fn find_end_of_central_directory(zip: &[u8]) -> Result<usize, Error> {
    // The record is 22 bytes plus a comment of at most 64 KiB, at the very end.
    let lowest = zip.len().saturating_sub(22 + usize::from(u16::MAX));
    (lowest..=zip.len().saturating_sub(22))
        .rev()
        .find(|&i| u32_at(zip, i).ok() == Some(END_OF_CENTRAL_DIRECTORY))
        .ok_or_else(|| Error::Zip("not a zip file (no end of central directory record)".into()))
}

fn slice(zip: &[u8], at: usize, len: usize) -> Result<&[u8], Error> {
    zip.get(at..at.saturating_add(len))
        .ok_or_else(|| Error::Zip(format!("truncated at offset {at}")))
}

fn u16_at(zip: &[u8], at: usize) -> Result<u16, Error> {
    let b = slice(zip, at, 2)?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(zip: &[u8], at: usize) -> Result<u32, Error> {
    let b = slice(zip, at, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
