//! Snapshot archives: the registry state in one self-checking file, written by
//! `meshctl snapshot save` and read by `meshctl snapshot restore`.
//!
//! Layout (all integers big-endian), a 36-byte header then the payload:
//!
//! | bytes  | field                                                        |
//! | ------ | ------------------------------------------------------------ |
//! | 0..8   | magic `MESHSNAP`                                             |
//! | 8..12  | format version, u32 (this is version 1)                      |
//! | 12..20 | Raft log index the state reflects, u64                       |
//! | 20..28 | payload length in bytes, u64                                 |
//! | 28..36 | checksum, u64: 64-bit FNV-1a over bytes 0..28 then the payload |
//! | 36..   | payload: the serde_json of a [`StateImage`]                  |
//!
//! The checksum covers the header fields too, so a damaged index is caught as well as a damaged
//! payload. The file ends exactly where the payload does.

use crate::state::StateImage;

/// The first bytes of every archive.
pub const MAGIC: &[u8; 8] = b"MESHSNAP";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Length of the fixed header before the payload.
pub const HEADER_LEN: usize = 36;
/// Length of the checksummed part of the header (everything before the checksum).
const SUMMED_HEADER_LEN: usize = 28;

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(
        "not a snapshot archive: it is {len} bytes, shorter than the {HEADER_LEN}-byte header"
    )]
    TooShort { len: usize },
    #[error("not a meshd snapshot archive: it starts with {found:?} instead of \"MESHSNAP\"")]
    BadMagic { found: String },
    #[error("snapshot archive format version {found} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("snapshot archive is truncated: its header announces a {declared}-byte payload, only {actual} bytes follow")]
    Truncated { declared: u64, actual: u64 },
    #[error("snapshot archive has {extra} unexpected bytes after its {declared}-byte payload")]
    TrailingBytes { declared: u64, extra: u64 },
    #[error("snapshot archive is corrupt: checksum {computed:016x} does not match {stored:016x} in its header")]
    Checksum { stored: u64, computed: u64 },
    #[error("snapshot archive payload is not a registry state image: {0}")]
    Payload(#[source] serde_json::Error),
}

/// Encodes `image`, the state at log `index`, as an archive.
pub fn encode(image: &StateImage, index: u64) -> Vec<u8> {
    // Every map in a state image has string keys and every value is plain data, so JSON
    // serialization cannot fail.
    let payload = serde_json::to_vec(image).expect("a state image always serializes to JSON");
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    let sum = checksum(&out, &payload);
    out.extend_from_slice(&sum.to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes an archive into the state image and the log index it was taken at, checking magic,
/// version, length, checksum and payload, in that order.
pub fn decode(bytes: &[u8]) -> Result<(StateImage, u64), ArchiveError> {
    let Some((header, payload)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(ArchiveError::TooShort { len: bytes.len() });
    };
    let (magic, rest) = split::<8>(header);
    if magic != MAGIC {
        return Err(ArchiveError::BadMagic {
            found: String::from_utf8_lossy(magic).into_owned(),
        });
    }
    let (version, rest) = split::<4>(rest);
    let version = u32::from_be_bytes(*version);
    if version != VERSION {
        return Err(ArchiveError::UnsupportedVersion { found: version });
    }
    let (index, rest) = split::<8>(rest);
    let (declared, rest) = split::<8>(rest);
    let (stored, _) = split::<8>(rest);
    let index = u64::from_be_bytes(*index);
    let declared = u64::from_be_bytes(*declared);
    let stored = u64::from_be_bytes(*stored);
    let actual = payload.len() as u64;
    if actual < declared {
        return Err(ArchiveError::Truncated { declared, actual });
    }
    if actual > declared {
        return Err(ArchiveError::TrailingBytes {
            declared,
            extra: actual - declared,
        });
    }
    let computed = checksum(&header[..SUMMED_HEADER_LEN], payload);
    if computed != stored {
        return Err(ArchiveError::Checksum { stored, computed });
    }
    let image = serde_json::from_slice(payload).map_err(ArchiveError::Payload)?;
    Ok((image, index))
}

/// Splits a fixed-size prefix off a slice that is known to be long enough (the header).
fn split<const N: usize>(b: &[u8]) -> (&[u8; N], &[u8]) {
    match b.split_first_chunk::<N>() {
        Some(parts) => parts,
        // Callers split the 36-byte header into fields that add up to its length.
        None => unreachable!("header field past the end of the header"),
    }
}

fn checksum(header: &[u8], payload: &[u8]) -> u64 {
    fnv1a_continue(fnv1a(header), payload)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a of `data`.
pub fn fnv1a(data: &[u8]) -> u64 {
    fnv1a_continue(FNV_OFFSET, data)
}

/// FNV-1a continued over more data from the hash `h` of what came before.
fn fnv1a_continue(h: u64, data: &[u8]) -> u64 {
    data.iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CaRoot, KvEntry, Node};

    fn image() -> StateImage {
        StateImage {
            nodes: vec![Node {
                node: "n1".into(),
                address: "10.0.0.1".into(),
                create_index: 3,
                modify_index: 4,
                ..Node::default()
            }],
            kv: vec![KvEntry {
                key: "k".into(),
                value: b"v".to_vec(),
                create_index: 5,
                modify_index: 5,
                ..KvEntry::default()
            }],
            ca_roots: vec![CaRoot {
                id: "r1".into(),
                cert_pem: "cert".into(),
                key_pem: "key".into(),
                trust_domain: "mesh.local".into(),
                active: true,
                create_index: 2,
                modify_index: 2,
            }],
            applied: 7,
            ..StateImage::default()
        }
    }

    #[test]
    fn round_trip() {
        let img = image();
        let bytes = encode(&img, 7);
        assert_eq!(&bytes[..8], MAGIC);
        let (back, index) = decode(&bytes).expect("decodes");
        assert_eq!(index, 7);
        assert_eq!(back, img);
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn truncated_archives_are_refused() {
        let bytes = encode(&image(), 7);
        assert!(matches!(
            decode(&bytes[..10]),
            Err(ArchiveError::TooShort { len: 10 })
        ));
        let err = decode(&bytes[..bytes.len() - 1]).expect_err("truncated");
        assert!(matches!(err, ArchiveError::Truncated { .. }), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&image(), 7);
        bytes.extend_from_slice(b"xx");
        let err = decode(&bytes).expect_err("trailing");
        assert!(
            matches!(err, ArchiveError::TrailingBytes { extra: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn wrong_magic_and_version_are_refused() {
        let mut bytes = encode(&image(), 7);
        bytes[0] = b'X';
        let err = decode(&bytes).expect_err("magic");
        assert!(matches!(err, ArchiveError::BadMagic { .. }), "{err}");
        assert!(err.to_string().contains("XESHSNAP"), "{err}");

        let mut bytes = encode(&image(), 7);
        bytes[11] = 2;
        let err = decode(&bytes).expect_err("version");
        assert!(
            matches!(err, ArchiveError::UnsupportedVersion { found: 2 }),
            "{err}"
        );
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = encode(&image(), 7);
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            assert!(
                decode(&damaged).is_err(),
                "a flip at byte {at} went unnoticed"
            );
        }
        let mut damaged = bytes.clone();
        damaged[HEADER_LEN + 3] ^= 0x01;
        assert!(matches!(
            decode(&damaged),
            Err(ArchiveError::Checksum { .. })
        ));
    }

    #[test]
    fn a_valid_checksum_over_bad_json_is_a_payload_error() {
        let payload = b"{not json";
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_be_bytes());
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        let sum = checksum(&bytes, payload);
        bytes.extend_from_slice(&sum.to_be_bytes());
        bytes.extend_from_slice(payload);
        let err = decode(&bytes).expect_err("bad json");
        assert!(matches!(err, ArchiveError::Payload(_)), "{err}");
    }
}
