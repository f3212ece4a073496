//! ImportFaces items (design/API-2.md, "Bulk import"): each item is one face of the user its
//! external id names, created with the item's fields when absent; otherwise UploadFace's rules.
//! A user created for an item whose face then fails is removed again, so a failed item leaves
//! nothing behind (a crash between the two leaves the user without a face; the item's retry
//! finds it and adds the face).

use super::requests::{Idempotency, Written};
use super::users::{NewUser, validate_new_user};
use super::{App, EnrollOutcome, FaceUpload, UserRef, validate};
use crate::domain::Principal;
use crate::error::{Error, Reason, Result};

/// Longest ImportItem.item_id.
pub(super) const MAX_ITEM_ID_LEN: usize = 200;

/// ITEM_ID_INVALID for an item_id over [`MAX_ITEM_ID_LEN`] bytes.
pub fn validate_item_id(item_id: &str) -> Result<()> {
    if item_id.len() <= MAX_ITEM_ID_LEN {
        return Ok(());
    }
    Err(Error::invalid(Reason::ItemIdInvalid, "item.item_id", format!("item_id is over {MAX_ITEM_ID_LEN} characters"))
        .with_meta("length", item_id.len()))
}

impl App {
    /// One ImportFaces item: the face of `upload` for the user `user.external_id` names,
    /// created with `user`'s fields when there is none.
    pub async fn import_item(
        &self,
        caller: &Principal,
        user: NewUser,
        upload: FaceUpload,
        idem: Option<Idempotency<EnrollOutcome>>,
    ) -> Result<Written<EnrollOutcome>> {
        validate_new_user("item.user", &user)?;
        validate::comment(&upload.comment, "item.comment")?;
        self.idempotent(&caller.tenant, idem.as_ref(), || async {
            // Another item of the same new external id may remove the user it created (its own
            // face failed) between this item finding the user and adding the face: once more.
            for _ in 0..2 {
                match self.import_once(caller, user.clone(), upload.clone(), idem.as_ref()).await {
                    Err(e) if e.reason() == Reason::UserNotFound => continue,
                    done => return done,
                }
            }
            self.import_once(caller, user, upload, idem.as_ref()).await
        })
        .await
    }

    async fn import_once(
        &self,
        caller: &Principal,
        user: NewUser,
        upload: FaceUpload,
        idem: Option<&Idempotency<EnrollOutcome>>,
    ) -> Result<EnrollOutcome> {
        let key = UserRef::External(user.external_id.clone());
        match self.resolve_user(&caller.tenant, &key).await {
            Ok(found) => return self.add_face(caller, found.id, upload, idem, false).await,
            Err(e) if e.reason() == Reason::UserNotFound => {}
            Err(e) => return Err(e),
        }
        let created = match self.create_user(caller, user, None).await {
            Ok(Written::Done(created)) => created,
            Ok(Written::Replayed(_)) => return Err(Error::bug("a create without a request id was replayed")),
            // Another item (or call) created the user meanwhile: add the face to it.
            Err(e) if e.reason() == Reason::ExternalIdTaken => {
                let found = self.resolve_user(&caller.tenant, &key).await?;
                return self.add_face(caller, found.id, upload, idem, false).await;
            }
            Err(e) => return Err(e),
        };
        match self.add_face(caller, created.id, upload, idem, true).await {
            Ok(done) => Ok(done),
            Err(err) => {
                // Removed only as created (its version unchanged): a face another item added
                // to it meanwhile keeps it.
                let undo = self.delete_user(caller, &UserRef::Id(created.id), Some(created.version), None).await;
                if let Err(undo) = undo
                    && undo.reason() != Reason::EtagMismatch
                    && undo.reason() != Reason::UserNotFound
                {
                    tracing::warn!(error = %undo, "removing the user an import item created failed");
                }
                Err(err)
            }
        }
    }
}
