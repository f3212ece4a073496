//! `Store::verify`: a read-only check of every invariant that spans trees, for crash tests and
//! for an operator who wants to know a store is whole. Problems name trees and ids only, never
//! personal fields or biometric data.

use std::collections::{HashMap, HashSet};

use prost::Message;

use super::files::FileKind;
use super::records::pb;
use super::{Store, db_error, faces, keys};
use crate::domain::Tenant;
use crate::error::Result;

/// What `Store::verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Integrity {
    pub users: usize,
    pub faces: usize,
    /// One line per broken invariant; empty when the store is whole.
    pub problems: Vec<String>,
}

fn unauthentic(tree: &str, face: u64) -> String {
    format!("{tree}: face {face:016x} fails authentication (tampered with, moved or sealed with another key)")
}

impl Store {
    /// Checks that every user's faces have a record, an embedding, an original and a thumbnail
    /// that belong to that user (and, in an encrypted store, open with its key); that no face
    /// data exists that no user lists; that no user has more than `max_faces` faces or lists one
    /// twice; that external ids and re-enrollment tokens point at the users that hold them.
    pub fn verify(&self, max_faces: usize) -> Result<Integrity> {
        let mut report = Integrity::default();
        let mut problems = Vec::new();
        let active = self.slot_tree(self.model_state()?.active);
        // (tenant, face) -> user, for every face some user lists.
        let mut listed: HashMap<(Tenant, u64), u64> = HashMap::new();
        let mut token_holders: HashMap<Vec<u8>, (Tenant, u64)> = HashMap::new();
        let mut external: HashMap<Vec<u8>, u64> = HashMap::new();
        for entry in self.users.iter() {
            let (key, value) = entry.map_err(db_error)?;
            let Some((tenant, id)) = keys::split_id_key(&key) else {
                problems.push("users: a malformed key".to_owned());
                continue;
            };
            let Ok(record) = pb::UserRecord::decode(value.as_ref()) else {
                problems.push(format!("users: user {id:016x} of tenant {} does not decode", tenant.as_str()));
                continue;
            };
            report.users += 1;
            if record.id != id {
                problems.push(format!("users: key {id:016x} holds the record of {:016x}", record.id));
            }
            if record.face_ids.len() > max_faces {
                problems.push(format!("users: user {id:016x} lists {} faces", record.face_ids.len()));
            }
            if external.insert(keys::external_key(&tenant, &record.external_id), id).is_some() {
                problems.push(format!("users: user {id:016x} shares its external id with another user"));
            }
            if !record.reenrollment_token_hash.is_empty() {
                token_holders.insert(record.reenrollment_token_hash.clone(), (tenant.clone(), id));
            }
            for &face in &record.face_ids {
                if listed.insert((tenant.clone(), face), id).is_some() {
                    problems.push(format!("users: face {face:016x} is listed twice"));
                }
            }
        }
        report.faces = listed.len();
        for ((tenant, face), user) in &listed {
            let key = keys::face_key(tenant, crate::domain::FaceId(*face));
            match self.faces.get(&key).map_err(db_error)? {
                Some(bytes) => match pb::FaceRecord::decode(bytes.as_ref()) {
                    Ok(record) if record.user_id == *user && record.id == *face => {}
                    _ => problems.push(format!("faces: face {face:016x} does not belong to user {user:016x}")),
                },
                None => problems.push(format!("faces: face {face:016x} of user {user:016x} has no record")),
            }
            match active.get(&key).map_err(db_error)? {
                Some(bytes) => match self.unseal(keys::EMBEDDINGS, &key, &bytes) {
                    Ok(plain) => match faces::embedding_owner(&plain) {
                        Some(owner) if owner.0 == *user => {}
                        _ => problems
                            .push(format!("embeddings: face {face:016x} is malformed or not user {user:016x}'s")),
                    },
                    Err(_) => problems.push(unauthentic(keys::EMBEDDINGS, *face)),
                },
                None => problems.push(format!("embeddings: face {face:016x} of user {user:016x} has none")),
            }
            for (name, kind) in [(keys::IMAGES, FileKind::Original), (keys::THUMBNAILS, FileKind::Thumbnail)] {
                match self.files.get(&key, kind)? {
                    Some(bytes) if self.unseal(name, &key, &bytes).is_ok() => {}
                    Some(_) => problems.push(unauthentic(name, *face)),
                    None => problems.push(format!("{name}: face {face:016x} of user {user:016x} has none")),
                }
            }
        }
        for (name, tree) in
            [(keys::FACES, &self.faces), (keys::EMBEDDINGS, &self.embeddings), (keys::EMBEDDINGS_1, &self.embeddings_1)]
        {
            for entry in tree.iter().keys() {
                let key = entry.map_err(db_error)?;
                orphan_check(name, &key, &listed, &mut problems);
            }
        }
        for (key, kind) in self.files.keys()? {
            let name = if kind == FileKind::Original { keys::IMAGES } else { keys::THUMBNAILS };
            orphan_check(name, &key, &listed, &mut problems);
        }
        let mut seen_external = HashSet::new();
        for entry in self.external_ids.iter() {
            let (key, value) = entry.map_err(db_error)?;
            let points_at = <[u8; 8]>::try_from(value.as_ref()).map(u64::from_be_bytes).ok();
            match (external.get(key.as_ref()), points_at) {
                (Some(&user), Some(target)) if user == target => {
                    seen_external.insert(key.to_vec());
                }
                _ => problems.push(format!("external_ids: an entry points at {points_at:016x?}, not its user")),
            }
        }
        if seen_external.len() != external.len() {
            problems.push(format!("external_ids: {} users have no entry", external.len() - seen_external.len()));
        }
        for entry in self.tokens.iter() {
            let (key, value) = entry.map_err(db_error)?;
            let holder =
                pb::TokenRecord::decode(value.as_ref()).ok().and_then(|t| Some((Tenant::new(&t.tenant)?, t.user_id)));
            if holder.is_none() || token_holders.get(key.as_ref()) != holder.as_ref() {
                problems.push("reenrollment_tokens: a token its user does not hold".to_owned());
            }
        }
        report.problems = problems;
        Ok(report)
    }
}

/// Records a problem when `key` holds face data that no user lists.
fn orphan_check(name: &str, key: &[u8], listed: &HashMap<(Tenant, u64), u64>, problems: &mut Vec<String>) {
    match keys::split_id_key(key) {
        Some(id) if listed.contains_key(&id) => {}
        Some((_, face)) => problems.push(format!("{name}: orphan face {face:016x}")),
        None => problems.push(format!("{name}: a malformed key")),
    }
}
