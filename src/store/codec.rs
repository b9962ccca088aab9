//! The on-disk layout of the sled engine. All records live in one sled tree so that a
//! write (object, log entry, revision counter) is one atomic batch:
//!
//! - `o<key>`       → revision (8 bytes, big endian) ++ value
//! - `l<revision>`  → an encoded log [`Record`]
//! - `m<name>`      → metadata (`mrevision`, `mcompacted`), 8 bytes each

use super::{Event, EventKind, KeyValue, Revision, StoreError};
use bytes::Bytes;

pub const OBJECT: u8 = b'o';
pub const LOG: u8 = b'l';
pub const META_REVISION: &[u8] = b"mrevision";
pub const META_COMPACTED: &[u8] = b"mcompacted";

pub fn object_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(OBJECT);
    k.extend_from_slice(key.as_bytes());
    k
}

pub fn log_key(revision: Revision) -> [u8; 9] {
    let mut k = [LOG; 9];
    k[1..].copy_from_slice(&revision.to_be_bytes());
    k
}

pub fn revision_from_log_key(key: &[u8]) -> Result<Revision, StoreError> {
    let bytes: [u8; 8] = key.get(1..9).and_then(|b| b.try_into().ok()).ok_or_else(|| corrupt("log key"))?;
    Ok(Revision::from_be_bytes(bytes))
}

pub fn encode_u64(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn decode_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| corrupt("counter"))?;
    Ok(u64::from_be_bytes(bytes))
}

pub fn encode_object(revision: Revision, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&revision.to_be_bytes());
    v.extend_from_slice(value);
    v
}

pub fn decode_object(key: &str, bytes: &[u8]) -> Result<KeyValue, StoreError> {
    if bytes.len() < 8 {
        return Err(corrupt("object"));
    }
    Ok(KeyValue { key: key.to_owned(), mod_revision: decode_u64(&bytes[..8])?, value: Bytes::copy_from_slice(&bytes[8..]) })
}

/// A log entry as stored: the event plus the wall-clock time of the write, which
/// time-based compaction uses.
pub struct Record {
    pub event: Event,
    pub unix_millis: u64,
}

pub fn encode_record(record: &Record) -> Vec<u8> {
    let e = &record.event;
    let mut out = Vec::with_capacity(
        32 + e.key.len() + e.value.as_ref().map_or(0, |v| v.len()) + e.prev.as_ref().map_or(0, |p| p.value.len()),
    );
    out.push(match e.kind {
        EventKind::Created => 0,
        EventKind::Updated => 1,
        EventKind::Deleted => 2,
    });
    out.extend_from_slice(&record.unix_millis.to_be_bytes());
    put_bytes(&mut out, e.key.as_bytes());
    match &e.value {
        Some(v) => {
            out.push(1);
            put_bytes(&mut out, v);
        }
        None => out.push(0),
    }
    match &e.prev {
        Some(p) => {
            out.push(1);
            out.extend_from_slice(&p.mod_revision.to_be_bytes());
            put_bytes(&mut out, &p.value);
        }
        None => out.push(0),
    }
    out
}

pub fn decode_record(revision: Revision, bytes: &[u8]) -> Result<Record, StoreError> {
    let mut r = Reader { bytes, pos: 0 };
    let kind = match r.u8()? {
        0 => EventKind::Created,
        1 => EventKind::Updated,
        2 => EventKind::Deleted,
        _ => return Err(corrupt("log entry kind")),
    };
    let unix_millis = r.u64()?;
    let key = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| corrupt("log key"))?;
    let value = if r.u8()? == 1 { Some(Bytes::copy_from_slice(r.bytes()?)) } else { None };
    let prev = if r.u8()? == 1 {
        let mod_revision = r.u64()?;
        Some(KeyValue { key: key.clone(), mod_revision, value: Bytes::copy_from_slice(r.bytes()?) })
    } else {
        None
    };
    Ok(Record { event: Event { revision, kind, key, value, prev }, unix_millis })
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.bytes.len()).ok_or_else(|| corrupt("log entry"))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        decode_u64(self.take(8)?)
    }
    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        self.take(len)
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Engine(format!("corrupt {what} record"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_and_without_optional_parts() {
        let prev = KeyValue { key: "/a".into(), value: Bytes::from_static(b"old"), mod_revision: 3 };
        for (kind, value, prev) in [
            (EventKind::Created, Some(Bytes::from_static(b"new")), None),
            (EventKind::Updated, Some(Bytes::from_static(b"new")), Some(prev.clone())),
            (EventKind::Deleted, None, Some(prev.clone())),
        ] {
            let event = Event { revision: 7, kind, key: "/a".into(), value, prev };
            let bytes = encode_record(&Record { event: event.clone(), unix_millis: 42 });
            let decoded = decode_record(7, &bytes).unwrap();
            assert_eq!(decoded.event, event);
            assert_eq!(decoded.unix_millis, 42);
        }
    }

    #[test]
    fn truncated_records_are_reported_not_panicked_on() {
        let event = Event { revision: 1, kind: EventKind::Created, key: "/k".into(), value: Some(Bytes::from_static(b"v")), prev: None };
        let bytes = encode_record(&Record { event, unix_millis: 0 });
        for len in 0..bytes.len() {
            assert!(decode_record(1, &bytes[..len]).is_err(), "prefix of {len} bytes decoded");
        }
    }
}
