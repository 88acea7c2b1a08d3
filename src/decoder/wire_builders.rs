//! Builders for pgoutput messages, byte for byte as the PostgreSQL docs
//! ("Logical Replication Message Formats", protocol version 1) lay them
//! out. Test and benchmark support, not part of walcast: the decoder's and
//! the capture's unit tests use it as `decoder::wire_builders` (test builds
//! only), the decoder benchmarks (`benches/support/pgoutput.rs`) include
//! this one file by path.

#![allow(dead_code, unused_imports)] // each user takes what it needs

pub enum V<'a> {
    /// 'n'
    Null,
    /// 'u'
    Toast,
    /// 't'
    Text(&'a str),
}

pub use V::{Null, Toast};

pub fn t(text: &str) -> V<'_> {
    V::Text(text)
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

pub fn tuple(out: &mut Vec<u8>, values: &[V<'_>]) {
    out.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for value in values {
        match value {
            V::Null => out.push(b'n'),
            V::Toast => out.push(b'u'),
            V::Text(text) => {
                out.push(b't');
                out.extend_from_slice(&(text.len() as i32).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
}

pub fn begin(final_lsn: u64, commit_time: i64, xid: u32) -> Vec<u8> {
    let mut out = vec![b'B'];
    out.extend_from_slice(&final_lsn.to_be_bytes());
    out.extend_from_slice(&commit_time.to_be_bytes());
    out.extend_from_slice(&xid.to_be_bytes());
    out
}

pub fn commit(commit_lsn: u64, end_lsn: u64, commit_time: i64) -> Vec<u8> {
    let mut out = vec![b'C', 0];
    out.extend_from_slice(&commit_lsn.to_be_bytes());
    out.extend_from_slice(&end_lsn.to_be_bytes());
    out.extend_from_slice(&commit_time.to_be_bytes());
    out
}

/// Columns are (part of the replica identity, name, type oid).
pub fn relation(oid: u32, namespace: &str, name: &str, columns: &[(bool, &str, u32)]) -> Vec<u8> {
    relation_with_identity(oid, namespace, name, b'd', columns)
}

/// `identity` is the replica identity setting: `d`, `n`, `f` or `i`.
pub fn relation_with_identity(
    oid: u32,
    namespace: &str,
    name: &str,
    identity: u8,
    columns: &[(bool, &str, u32)],
) -> Vec<u8> {
    let mut out = vec![b'R'];
    out.extend_from_slice(&oid.to_be_bytes());
    cstr(&mut out, namespace);
    cstr(&mut out, name);
    out.push(identity);
    out.extend_from_slice(&(columns.len() as i16).to_be_bytes());
    for &(is_key, name, type_oid) in columns {
        out.push(u8::from(is_key));
        cstr(&mut out, name);
        out.extend_from_slice(&type_oid.to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes());
    }
    out
}

pub fn type_message(oid: u32, namespace: &str, name: &str) -> Vec<u8> {
    let mut out = vec![b'Y'];
    out.extend_from_slice(&oid.to_be_bytes());
    cstr(&mut out, namespace);
    cstr(&mut out, name);
    out
}

pub fn insert(oid: u32, new: &[V<'_>]) -> Vec<u8> {
    let mut out = vec![b'I'];
    out.extend_from_slice(&oid.to_be_bytes());
    out.push(b'N');
    tuple(&mut out, new);
    out
}

/// `old` is `(b'K' or b'O', values)`.
pub fn update(oid: u32, old: Option<(u8, &[V<'_>])>, new: &[V<'_>]) -> Vec<u8> {
    let mut out = vec![b'U'];
    out.extend_from_slice(&oid.to_be_bytes());
    if let Some((kind, values)) = old {
        out.push(kind);
        tuple(&mut out, values);
    }
    out.push(b'N');
    tuple(&mut out, new);
    out
}

pub fn delete(oid: u32, kind: u8, old: &[V<'_>]) -> Vec<u8> {
    let mut out = vec![b'D'];
    out.extend_from_slice(&oid.to_be_bytes());
    out.push(kind);
    tuple(&mut out, old);
    out
}

pub fn truncate(oids: &[u32], options: u8) -> Vec<u8> {
    let mut out = vec![b'T'];
    out.extend_from_slice(&(oids.len() as u32).to_be_bytes());
    out.push(options);
    for oid in oids {
        out.extend_from_slice(&oid.to_be_bytes());
    }
    out
}

pub fn origin(lsn: u64, name: &str) -> Vec<u8> {
    let mut out = vec![b'O'];
    out.extend_from_slice(&lsn.to_be_bytes());
    cstr(&mut out, name);
    out
}

/// A transactional message at LSN 0x100.
pub fn logical_message(prefix: &str, content: &[u8]) -> Vec<u8> {
    logical_message_with(1, 0x100, prefix, content)
}

/// `flags` bit 1: transactional.
pub fn logical_message_with(flags: u8, lsn: u64, prefix: &str, content: &[u8]) -> Vec<u8> {
    let mut out = vec![b'M', flags];
    out.extend_from_slice(&lsn.to_be_bytes());
    cstr(&mut out, prefix);
    out.extend_from_slice(&(content.len() as i32).to_be_bytes());
    out.extend_from_slice(content);
    out
}
