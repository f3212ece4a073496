//! A raw export of the sled store for `facevault migrate`: each user with everything stored
//! with it (face records, embeddings, originals, thumbnails, its re-enrollment token), values as
//! stored. Sealed values stay sealed: both backends seal with the same associated data (tree
//! name and `keys::face_key`), so they move byte for byte. Also `Tally`, the per-tenant counts
//! and checksum that the migration computes on both sides and compares.

use prost::Message;
use sha2::{Digest, Sha256};

use super::files::FileKind;
use super::records::pb;
use super::{Store, db_error, decode, keys};
use crate::domain::{FaceId, Tenant};
use crate::error::{Error, Result};

/// A user as stored, with what is stored with it.
pub(crate) struct RawUser {
    pub(crate) tenant: Tenant,
    pub(crate) id: u64,
    pub(crate) external_id: String,
    /// The encoded `UserRecord`.
    pub(crate) record: Vec<u8>,
    pub(crate) token: Option<RawToken>,
    /// In the order the user lists them.
    pub(crate) faces: Vec<RawFace>,
}

/// A re-enrollment token: its hash (the key), expiry and encoded `TokenRecord`.
pub(crate) struct RawToken {
    pub(crate) hash: Vec<u8>,
    pub(crate) expires_ns: i64,
    pub(crate) record: Vec<u8>,
}

/// A face: its encoded `FaceRecord` and its sealed (or plain) embedding, original, thumbnail.
pub(crate) struct RawFace {
    pub(crate) id: u64,
    pub(crate) record: Vec<u8>,
    pub(crate) embedding: Vec<u8>,
    pub(crate) original: Vec<u8>,
    pub(crate) thumbnail: Vec<u8>,
}

/// What importing a user into another store did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Imported {
    Copied,
    /// The same user (its record byte for byte) was there already: copied by an earlier run.
    Present,
}

/// A store that is not whole refuses to be exported.
fn not_whole(what: String) -> Error {
    Error::Unavailable { message: format!("the source store is not whole: {what}; `facevault verify` says more") }
}

impl Store {
    /// Users and face records stored (the totals of a migration's progress).
    pub(crate) fn export_sizes(&self) -> (usize, usize) {
        (self.users.len(), self.faces.len())
    }

    /// Every user in key order (tenant, then id) with what is stored with it. A face that a
    /// user lists without its record, embedding or an image is an error; face data no user
    /// lists and tokens no user holds (both reported by `verify`) are left out.
    pub(crate) fn export_users(&self) -> impl Iterator<Item = Result<RawUser>> + '_ {
        self.users.iter().map(|entry| {
            let (key, value) = entry.map_err(db_error)?;
            self.export_user(&key, value.to_vec())
        })
    }

    fn export_user(&self, key: &[u8], record: Vec<u8>) -> Result<RawUser> {
        let (tenant, id) = keys::split_id_key(key).ok_or_else(|| not_whole("a malformed user key".into()))?;
        let user: pb::UserRecord = decode(&record, "decoding a user record")?;
        let token = match user.reenrollment_token_hash.as_slice() {
            [] => None,
            hash => match self.tokens.get(hash).map_err(db_error)? {
                Some(bytes) => {
                    let token: pb::TokenRecord = decode(&bytes, "decoding a token record")?;
                    Some(RawToken { hash: hash.to_vec(), expires_ns: token.expires_at_ns, record: bytes.to_vec() })
                }
                None => None, // purged while the record kept its hash: nothing to copy
            },
        };
        let active = self.slot_tree(self.model_state()?.active);
        let mut faces = Vec::with_capacity(user.face_ids.len());
        for &face in &user.face_ids {
            let key = keys::face_key(&tenant, FaceId(face));
            let missing = |what: &str| not_whole(format!("user {id:016x} lists face {face:016x}, which has no {what}"));
            let record = self.faces.get(&key).map_err(db_error)?.ok_or_else(|| missing("record"))?;
            let embedding = active.get(&key).map_err(db_error)?.ok_or_else(|| missing("embedding"))?;
            let original = self.files.get(&key, FileKind::Original)?.ok_or_else(|| missing("original"))?;
            let thumbnail = self.files.get(&key, FileKind::Thumbnail)?.ok_or_else(|| missing("thumbnail"))?;
            faces.push(RawFace {
                id: face,
                record: record.to_vec(),
                embedding: embedding.to_vec(),
                original,
                thumbnail,
            });
        }
        Ok(RawUser { tenant, id, external_id: user.external_id, record, token, faces })
    }
}

/// A tenant's users, faces and tokens counted, and a checksum of them all. The checksum is a
/// multiset hash: the sum, modulo 2^256, of one sha256 per user, face and token, each over a
/// kind tag and its length-prefixed fields (ids, the external-id column, records and stored
/// values as bytes). Being order-free, it lets each side be read in its own order, streaming
/// and without memory per face: sled by user, PostgreSQL table by table. Any changed,
/// missing or extra element changes the sum (but for a sha256 collision).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) users: u64,
    pub(crate) faces: u64,
    pub(crate) tokens: u64,
    /// Little-endian 64-bit limbs.
    sum: [u64; 4],
}

/// How a field that is absent (an image row a face lacks) is hashed: a length no value has.
const ABSENT: u64 = u64::MAX;

impl Tally {
    pub(crate) fn add_user(&mut self, id: u64, external_id: &str, record: &[u8]) {
        self.users += 1;
        self.add(b"user", &[Some(&id.to_be_bytes()), Some(external_id.as_bytes()), Some(record)]);
    }

    pub(crate) fn add_token(&mut self, hash: &[u8], expires_ns: i64, record: &[u8]) {
        self.tokens += 1;
        self.add(b"token", &[Some(hash), Some(&expires_ns.to_be_bytes()), Some(record)]);
    }

    /// A face; `None` for what a row lacks (only a broken target lacks anything).
    pub(crate) fn add_face(&mut self, id: u64, user: u64, values: [Option<&[u8]>; 4]) {
        self.faces += 1;
        let [record, embedding, original, thumbnail] = values;
        let ids = (id.to_be_bytes(), user.to_be_bytes());
        self.add(b"face", &[Some(&ids.0), Some(&ids.1), record, embedding, original, thumbnail]);
    }

    /// An exported user with its token and faces.
    pub(crate) fn add_raw(&mut self, user: &RawUser) {
        self.add_user(user.id, &user.external_id, &user.record);
        if let Some(token) = &user.token {
            self.add_token(&token.hash, token.expires_ns, &token.record);
        }
        for face in &user.faces {
            let values = [&face.record, &face.embedding, &face.original, &face.thumbnail];
            self.add_face(face.id, user.id, values.map(|v| Some(v.as_slice())));
        }
    }

    fn add(&mut self, kind: &[u8], fields: &[Option<&[u8]>]) {
        let mut hash = Sha256::new();
        hash.update(kind);
        for field in fields {
            hash.update(field.map_or(ABSENT, |f| f.len() as u64).to_be_bytes());
            hash.update(field.unwrap_or_default());
        }
        let digest = hash.finalize();
        let mut carry = false;
        for (limb, bytes) in self.sum.iter_mut().zip(digest.rchunks_exact(8)) {
            let value = u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
            let (partial, over1) = limb.overflowing_add(value);
            let (total, over2) = partial.overflowing_add(u64::from(carry));
            *limb = total;
            carry = over1 || over2;
        }
    }

    /// The checksum in hex (most significant digit first).
    pub(crate) fn checksum(&self) -> String {
        self.sum.iter().rev().map(|limb| format!("{limb:016x}")).collect()
    }
}

/// The tenant of a token record (tokens are keyed by hash; the record names its tenant).
pub(crate) fn token_tenant(record: &[u8]) -> Result<Tenant> {
    let token = pb::TokenRecord::decode(record).map_err(|e| Error::internal("decoding a token record", e))?;
    Tenant::new(&token.tenant).ok_or_else(|| Error::bug("a token record names a bad tenant"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_is_order_free_and_sees_every_field() {
        let (a, b) = (Some(&b"a"[..]), Some(&b"b"[..]));
        let mut one = Tally::default();
        one.add_user(1, "x", b"record");
        one.add_face(7, 1, [a, b, a, b]);
        let mut other = Tally::default();
        other.add_face(7, 1, [a, b, a, b]);
        other.add_user(1, "x", b"record");
        assert_eq!(one, other);
        assert_eq!(one.checksum().len(), 64);
        let changed = |face: [Option<&[u8]>; 4]| {
            let mut t = Tally::default();
            t.add_user(1, "x", b"record");
            t.add_face(7, 1, face);
            t
        };
        // Swapped, moved or missing values all count.
        for face in [[b, a, a, b], [a, b, a, None], [Some(&b"ab"[..]), Some(&b""[..]), a, b]] {
            assert_ne!(changed(face), one, "{face:?}");
        }
        // Carries cross limbs: the sum of many hashes stays order-free.
        let (mut up, mut down) = (Tally::default(), Tally::default());
        (0..1000).for_each(|i| up.add_token(&[i as u8], i, b"t"));
        (0..1000).rev().for_each(|i| down.add_token(&[i as u8], i, b"t"));
        assert_eq!(up, down);
    }
}
