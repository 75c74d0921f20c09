//! The binary codec of the control plane: bincode 2 (serde mode, standard config)
//! for Raft entries and RPC payloads, and a versioned envelope for snapshots so a
//! newer build can read an older snapshot format (and an older build refuses a
//! newer one loudly instead of misreading it).

use serde::{de::DeserializeOwned, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encoding failed: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decoding failed: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("not a Strom snapshot (bad magic)")]
    BadMagic,
    #[error("snapshot format {found} is newer than this build understands (up to {supported})")]
    UnsupportedFormat { found: u32, supported: u32 },
    #[error("{0} trailing bytes after the encoded value")]
    TrailingBytes(usize),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

/// Decode a whole buffer; trailing bytes are an error (they mean a format mismatch).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, config())?;
    if read != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - read));
    }
    Ok(value)
}

const MAGIC: &[u8; 8] = b"STROMSNP";

/// `MAGIC | format (u32 LE) | bincode(body)`.
pub fn encode_envelope<T: Serialize>(format: u32, body: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&format.to_le_bytes());
    out.extend_from_slice(&encode(body)?);
    Ok(out)
}

/// Returns the format number and the body bytes; the caller decodes the body
/// according to the format (older formats are migrated there).
pub fn open_envelope(bytes: &[u8], supported: u32) -> Result<(u32, &[u8]), CodecError> {
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(CodecError::BadMagic);
    }
    let format = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if format > supported {
        return Err(CodecError::UnsupportedFormat {
            found: format,
            supported,
        });
    }
    Ok((format, &bytes[12..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_refuses_newer_formats() {
        let bytes = encode_envelope(1, &("a".to_string(), 7u64)).unwrap();
        let (format, body) = open_envelope(&bytes, 1).unwrap();
        assert_eq!(format, 1);
        let v: (String, u64) = decode(body).unwrap();
        assert_eq!(v, ("a".to_string(), 7));
        assert!(matches!(
            open_envelope(&bytes, 0),
            Err(CodecError::UnsupportedFormat {
                found: 1,
                supported: 0
            })
        ));
        assert!(matches!(
            open_envelope(b"garbage-bytes", 1),
            Err(CodecError::BadMagic)
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&5u32).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<u32>(&bytes),
            Err(CodecError::TrailingBytes(1))
        ));
    }
}
