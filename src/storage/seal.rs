//! Encryption at rest: AES-256-GCM sealing of the values of the `images`, `thumbnails` and
//! `embeddings` trees, and the key check that ties a store to its key. A sealed value is
//! `0x01 ‖ 12-byte random nonce ‖ ciphertext ‖ 16-byte tag`, authenticated with
//! `tree ‖ 0x00 ‖ sled key` as associated data. Never formats or logs key material.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};

use super::{Store, db_error, keys, random_bytes};
use crate::error::{Error, Result};

/// Format byte of a sealed value; a later format (another cipher, a key id) takes another.
const FORMAT: u8 = 0x01;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// What the key check in the `meta` tree seals: opening it proves the key is the store's.
pub(super) const CHECK_PLAINTEXT: &[u8] = b"facevault encryption key check v1";

/// The key that seals stored values. Cheap to clone; `Debug` never shows it.
#[derive(Clone)]
pub struct EncryptionKey(Arc<Aes256Gcm>);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

/// The error of a value that does not open: tampered with, moved, or sealed with another key.
fn unauthentic() -> Error {
    Error::bug("stored data failed authentication")
}

/// `tree ‖ 0x00 ‖ key`: binds a sealed value to its record (tree names never contain 0x00).
fn associated_data(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(tree.len() + 1 + key.len());
    aad.extend_from_slice(tree.as_bytes());
    aad.push(0);
    aad.extend_from_slice(key);
    aad
}

impl EncryptionKey {
    /// A key from its 32 raw bytes (app::keys loads them from the key file).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        EncryptionKey(Arc::new(Aes256Gcm::new(bytes.into())))
    }

    /// Seals `plain` as the value of `key` in `tree`, under a fresh random nonce.
    pub(crate) fn seal(&self, tree: &str, key: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let nonce = random_bytes::<NONCE_LEN>()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len() + TAG_LEN);
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let body = &mut out[1 + NONCE_LEN..];
        let tag = self
            .0
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &associated_data(tree, key), body)
            .map_err(|_| Error::bug("sealing a stored value"))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a value sealed by `seal` for the same tree and key.
    pub(crate) fn open(&self, tree: &str, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let Some((&FORMAT, rest)) = sealed.split_first() else { return Err(unauthentic()) };
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(unauthentic());
        }
        let (nonce, rest) = rest.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut plain = body.to_vec();
        self.0
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                &associated_data(tree, key),
                &mut plain,
                Tag::from_slice(tag),
            )
            .map_err(|_| unauthentic())?;
        Ok(plain)
    }

    /// Seals `buf` in place under a fresh random nonce, authenticated with `aad`; returns the
    /// nonce and the tag (the index snapshot seals its chunks so, with its own associated data).
    pub(crate) fn seal_detached(&self, aad: &[u8], buf: &mut [u8]) -> Result<([u8; NONCE_LEN], [u8; TAG_LEN])> {
        let nonce = random_bytes::<NONCE_LEN>()?;
        let tag = self
            .0
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, buf)
            .map_err(|_| Error::bug("sealing a chunk"))?;
        Ok((nonce, tag.into()))
    }

    /// Opens in place what `seal_detached` sealed with the same `aad`; an error (and `buf`
    /// unspecified) when it fails authentication.
    pub(crate) fn open_detached(
        &self,
        aad: &[u8],
        nonce: &[u8; NONCE_LEN],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        self.0
            .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf, Tag::from_slice(tag))
            .map_err(|_| unauthentic())
    }

    pub(super) fn opens_check(&self, stored: &[u8]) -> bool {
        self.open(keys::META, keys::ENCRYPTION_CHECK_KEY, stored).is_ok_and(|plain| plain == CHECK_PLAINTEXT)
    }
}

/// The bytes to store as the value of `key` in `tree` (a sled tree, or the PostgreSQL column
/// of the same name): sealed when there is a key. Both backends seal alike, so a sealed value
/// moves between them as it is.
pub(super) fn seal_with<'a>(
    encryption: Option<&EncryptionKey>,
    tree: &str,
    key: &[u8],
    plain: &'a [u8],
) -> Result<Cow<'a, [u8]>> {
    match encryption {
        Some(k) => k.seal(tree, key, plain).map(Cow::Owned),
        None => Ok(Cow::Borrowed(plain)),
    }
}

/// The plain bytes of a value `seal_with` stored; an internal error when a sealed value fails
/// authentication (its bytes are never returned).
pub(super) fn unseal_with<'a>(
    encryption: Option<&EncryptionKey>,
    tree: &str,
    key: &[u8],
    stored: &'a [u8],
) -> Result<Cow<'a, [u8]>> {
    match encryption {
        Some(k) => k.open(tree, key, stored).map(Cow::Owned),
        None => Ok(Cow::Borrowed(stored)),
    }
}

fn refuse(message: String) -> Error {
    Error::Unavailable { message }
}

impl Store {
    /// Whether values of the sealed trees are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.encryption.is_some()
    }

    /// The bytes to store as the value of `key` in `tree`: sealed when the store is encrypted.
    pub(super) fn seal<'a>(&self, tree: &str, key: &[u8], plain: &'a [u8]) -> Result<Cow<'a, [u8]>> {
        seal_with(self.encryption.as_ref(), tree, key, plain)
    }

    /// The plain bytes of a stored value of `key` in `tree`; an internal error when a sealed
    /// value fails authentication (its bytes are never returned).
    pub(super) fn unseal<'a>(&self, tree: &str, key: &[u8], stored: &'a [u8]) -> Result<Cow<'a, [u8]>> {
        unseal_with(self.encryption.as_ref(), tree, key, stored)
    }

    /// At open: ties a new (or face-less) store to the configured key, or checks that the key
    /// is the store's. Refuses an encrypted store without its key, with another key, and a
    /// plain store that holds faces with a key (encrypting in place is not supported).
    pub(super) fn check_encryption(&self, meta: &sled::Tree, path: &Path) -> Result<()> {
        let place = path.display();
        let stored = meta.get(keys::ENCRYPTION_CHECK_KEY).map_err(db_error)?;
        match (stored, &self.encryption) {
            (None, None) => Ok(()),
            (Some(_), None) => Err(refuse(format!(
                "the store at {place} is encrypted: start with --encryption-key-file (FACEVAULT_ENCRYPTION_KEY_FILE) \
                 naming the file of its key"
            ))),
            (Some(check), Some(key)) if key.opens_check(&check) => Ok(()),
            (Some(_), Some(_)) => Err(refuse(format!(
                "the store at {place} is encrypted with a different key than the one in --encryption-key-file"
            ))),
            (None, Some(key)) => {
                if self.holds_face_data()? {
                    return Err(refuse(format!(
                        "the store at {place} holds unencrypted faces and cannot be encrypted in place: start without \
                         --encryption-key-file, or with it on a new --data-dir"
                    )));
                }
                let check = key.seal(keys::META, keys::ENCRYPTION_CHECK_KEY, CHECK_PLAINTEXT)?;
                meta.insert(keys::ENCRYPTION_CHECK_KEY, check).map_err(db_error)?;
                meta.flush().map_err(db_error)?;
                Ok(())
            }
        }
    }

    fn holds_face_data(&self) -> Result<bool> {
        // The change log holds embeddings too (of faces since deleted, until it is compacted).
        let log = self.log_bounds()?;
        Ok([&self.faces, &self.embeddings].iter().any(|tree| !tree.is_empty())
            || log.head > log.compacted
            || !self.files.keys()?.is_empty())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::domain::{Detection, EMBEDDING_DIM, Embedding, Face, FaceId, FaceQuality, Tenant, User, UserId};
    use crate::storage::{NewFace, Replace};

    const KEY: [u8; 32] = [7; 32];

    fn key() -> EncryptionKey {
        EncryptionKey::from_bytes(&KEY)
    }

    #[test]
    fn seal_open_round_trip_with_fresh_nonces() {
        let k = key();
        let plain = b"an original image, or an embedding";
        let a = k.seal(keys::IMAGES, b"t\0id", plain).unwrap();
        let b = k.seal(keys::IMAGES, b"t\0id", plain).unwrap();
        assert_eq!(a.len(), 1 + NONCE_LEN + plain.len() + TAG_LEN);
        assert_eq!(a[0], FORMAT);
        assert_ne!(a, b, "every seal takes a fresh nonce");
        assert!(!a.windows(16).any(|w| plain.windows(16).any(|p| p == w)), "no plaintext in the sealed value");
        assert_eq!(k.open(keys::IMAGES, b"t\0id", &a).unwrap(), plain);
        assert_eq!(k.open(keys::IMAGES, b"t\0id", &b).unwrap(), plain);
        assert_eq!(k.open(keys::IMAGES, b"", &k.seal(keys::IMAGES, b"", b"").unwrap()).unwrap(), b"");
    }

    #[test]
    fn any_flipped_byte_fails_authentication() {
        let k = key();
        let sealed = k.seal(keys::EMBEDDINGS, b"t\0id", b"0123456789abcdef").unwrap();
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            let err = k.open(keys::EMBEDDINGS, b"t\0id", &tampered).unwrap_err();
            assert!(err.to_string().contains("stored data failed authentication"), "byte {i}: {err}");
        }
        for cut in [0, 1, 1 + NONCE_LEN, sealed.len() - 1] {
            assert!(k.open(keys::EMBEDDINGS, b"t\0id", &sealed[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_value_moved_to_another_record_or_tree_fails() {
        let k = key();
        let sealed = k.seal(keys::IMAGES, b"t\0face-1", b"image").unwrap();
        assert!(k.open(keys::IMAGES, b"t\0face-2", &sealed).is_err());
        assert!(k.open(keys::THUMBNAILS, b"t\0face-1", &sealed).is_err());
        assert!(k.open(keys::IMAGES, b"u\0face-1", &sealed).is_err());
        // The 0x00 separator keeps ("ab", "c…") and ("a", "bc…") apart.
        let sealed = k.seal("ab", b"c", b"x").unwrap();
        assert!(k.open("a", b"bc", &sealed).is_err());
    }

    #[test]
    fn another_key_fails_and_debug_hides_the_key() {
        let sealed = key().seal(keys::IMAGES, b"k", b"image").unwrap();
        let other = EncryptionKey::from_bytes(&[8; 32]);
        assert!(other.open(keys::IMAGES, b"k", &sealed).is_err());
        assert!(key().opens_check(&key().seal(keys::META, keys::ENCRYPTION_CHECK_KEY, CHECK_PLAINTEXT).unwrap()));
        assert!(!other.opens_check(&key().seal(keys::META, keys::ENCRYPTION_CHECK_KEY, CHECK_PLAINTEXT).unwrap()));
        assert_eq!(format!("{other:?}"), "EncryptionKey(<redacted>)");
    }

    pub(crate) fn new_face(user: UserId, id: u64, seed: f32) -> NewFace {
        let raw = (0..EMBEDDING_DIM).map(|i| (i as f32 * seed).sin()).collect();
        let face = Face {
            id: FaceId(id),
            user_id: user,
            detection: Detection { bbox: Default::default(), score: 0.9, landmarks: Default::default(), rotation: 0 },
            quality: FaceQuality::default(),
            comment: String::new(),
            uploaded_by: "test".into(),
            create_time: std::time::SystemTime::now(),
            model: "w600k_mbf".into(),
            mime_type: "image/png".into(),
            width: 1,
            height: 1,
        };
        NewFace {
            face,
            embedding: Embedding::from_raw(raw).unwrap(),
            other: None,
            original: format!("original image {id} ").repeat(8).into_bytes(),
            thumbnail: format!("thumbnail {id} ").repeat(8).into_bytes(),
        }
    }

    #[test]
    fn faces_are_sealed_in_the_store_and_a_swapped_value_never_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_key(dir.path(), Some(key())).unwrap();
        let tenant = Tenant::new("acme").unwrap();
        let now = std::time::SystemTime::now();
        let user = User::unenrolled("u", now);
        let user = store.create_user(&tenant, user, None).unwrap();
        let (a, b) = (new_face(user.id, 1, 0.1), new_face(user.id, 2, 0.2));
        for face in [&a, &b] {
            store.put_face(&tenant, face, Replace::Nothing, 5, None).unwrap();
        }
        let id = a.face.id;
        assert_eq!(store.face_image(&tenant, id, false).unwrap().unwrap(), a.original);
        assert_eq!(store.face_image(&tenant, id, true).unwrap().unwrap(), a.thumbnail);
        assert_eq!(store.face_embedding(&tenant, id, "w600k_mbf").unwrap().unwrap(), a.embedding);
        assert_eq!(store.embeddings(0).map(|e| e.unwrap().face_id).collect::<Vec<_>>(), vec![id, b.face.id]);
        let raw = store.raw_entries(keys::IMAGES).unwrap();
        assert!(raw.iter().all(|(_, v)| !v.windows(14).any(|w| w == b"original image")), "images are sealed");
        assert!(store.verify(5).unwrap().problems.is_empty());

        // Face b's sealed original and embedding, written under face a: neither reads.
        let (key_a, key_b) = (keys::face_key(&tenant, id), keys::face_key(&tenant, b.face.id));
        let original_b = store.files.get(&key_b, super::super::files::FileKind::Original).unwrap().unwrap();
        store.files.put(&key_a, super::super::files::FileKind::Original, &original_b).unwrap();
        store.embeddings.insert(&key_a, store.embeddings.get(&key_b).unwrap().unwrap()).unwrap();
        let err = store.face_image(&tenant, id, false).unwrap_err();
        assert!(matches!(err, Error::Internal { .. }) && err.to_string().contains("failed authentication"));
        assert!(store.face_embedding(&tenant, id, "w600k_mbf").is_err());
        assert!(store.embeddings(0).any(|e| e.is_err()), "the index rebuild stops on it");
        let problems = store.verify(5).unwrap().problems;
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().all(|p| p.contains("fails authentication")), "{problems:?}");
    }

    fn message(result: Result<Store>) -> String {
        match result {
            Ok(_) => panic!("the store opened"),
            Err(err) => {
                assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
                err.to_string()
            }
        }
    }

    #[test]
    fn a_store_opens_only_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_key(dir.path(), Some(key())).unwrap();
        assert!(store.is_encrypted());
        store.embeddings.insert(b"t\0face", store.seal(keys::IMAGES, b"t\0face", b"image").unwrap().as_ref()).unwrap();
        drop(store);

        let without = message(Store::open(dir.path()));
        assert!(without.contains("is encrypted") && without.contains("--encryption-key-file"), "{without}");
        let other = message(Store::open_with_key(dir.path(), Some(EncryptionKey::from_bytes(&[9; 32]))));
        assert!(other.contains("different key"), "{other}");

        let store = Store::open_with_key(dir.path(), Some(key())).unwrap();
        let stored = store.embeddings.get(b"t\0face").unwrap().unwrap();
        assert_eq!(store.unseal(keys::IMAGES, b"t\0face", &stored).unwrap().as_ref(), b"image");
        assert!(store.unseal(keys::THUMBNAILS, b"t\0face", &stored).is_err());
    }

    #[test]
    fn a_plain_store_may_become_encrypted_only_while_it_holds_no_faces() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.is_encrypted());
        assert_eq!(store.seal(keys::IMAGES, b"k", b"plain").unwrap().as_ref(), b"plain");
        store.faces.insert(b"t\0face", b"record".as_slice()).unwrap();
        drop(store);
        let refused = message(Store::open_with_key(dir.path(), Some(key())));
        assert!(refused.contains("unencrypted faces"), "{refused}");
        // Refusing wrote nothing: the store still opens plain.
        let store = Store::open(dir.path()).unwrap();
        store.faces.remove(b"t\0face").unwrap();
        drop(store);
        assert!(Store::open_with_key(dir.path(), Some(key())).unwrap().is_encrypted());
        assert!(message(Store::open(dir.path())).contains("is encrypted"));
    }
}
