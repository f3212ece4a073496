//! `ListService` handlers: authorise, convert, call `App` (app/lists.rs), convert back.

use tonic::{Request, Response, Status};

use super::AppSlot;
use super::auth::caller;
use super::convert::timestamp;
use super::idempotent::{idempotency, replayed};
use super::pb;
use super::pb::list_service_server::ListService;
use super::{call_deadline, observed};
use crate::app::{AddedEntry, App, EntrySource, NewList, Written};
use crate::domain::{FaceList, ListEntry, ListKind, ListMatch, Scope};
use crate::error::{Error, Reason};

impl From<ListKind> for pb::ListKind {
    fn from(kind: ListKind) -> Self {
        match kind {
            ListKind::Block => pb::ListKind::Block,
            ListKind::Watch => pb::ListKind::Watch,
            ListKind::Allow => pb::ListKind::Allow,
        }
    }
}

impl From<ListMatch> for pb::ListMatch {
    fn from(m: ListMatch) -> Self {
        pb::ListMatch {
            list_id: m.list_id.to_string(),
            list_name: m.list_name,
            kind: pb::ListKind::from(m.kind) as i32,
            entry_id: m.entry_id.to_string(),
            similarity: m.similarity,
        }
    }
}

/// A list as the wire reports it: its threshold resolved (the active model's match threshold
/// when it sets none).
fn list_response(app: &App, list: FaceList) -> Result<pb::FaceList, Error> {
    let threshold = app.list_threshold(&list)?;
    Ok(pb::FaceList {
        list_id: list.id.to_string(),
        name: list.name,
        kind: pb::ListKind::from(list.kind) as i32,
        threshold,
        entry_count: i32::try_from(list.entry_count).unwrap_or(i32::MAX),
        create_time: Some(timestamp(list.create_time)),
    })
}

fn entry_response(entry: ListEntry, thumbnail: Vec<u8>) -> pb::ListEntry {
    let face = crate::domain::AnalyzedFace {
        detection: entry.detection,
        quality: entry.quality,
        embedding: None,
        other_embedding: None,
        thumbnail: (!thumbnail.is_empty()).then_some(thumbnail),
    };
    pb::ListEntry {
        entry_id: entry.id.to_string(),
        list_id: entry.list_id.to_string(),
        detection: Some(face.into()),
        comment: entry.comment,
        added_by: entry.added_by,
        source_face_id: entry.source_face.map(|f| f.to_string()).unwrap_or_default(),
        create_time: Some(timestamp(entry.create_time)),
    }
}

/// AddListEntry's response (the thumbnail and matches empty in a recorded one).
fn added_response(out: &AddedEntry) -> pb::AddListEntryResponse {
    pb::AddListEntryResponse {
        entry: Some(entry_response(out.entry.clone(), out.thumbnail.clone())),
        enrolled_matches: out.enrolled_matches.iter().cloned().map(Into::into).collect(),
    }
}

fn list_kind(value: i32) -> Result<ListKind, Error> {
    match pb::ListKind::try_from(value) {
        Ok(pb::ListKind::Block) => Ok(ListKind::Block),
        Ok(pb::ListKind::Watch) => Ok(ListKind::Watch),
        Ok(pb::ListKind::Allow) => Ok(ListKind::Allow),
        Ok(pb::ListKind::Unspecified) | Err(_) => {
            Err(Error::invalid(Reason::ListKindInvalid, "list.kind", "kind must be BLOCK, WATCH or ALLOW")
                .with_meta("kind", value))
        }
    }
}

/// The ListService implementation.
#[derive(Debug, Clone)]
pub struct ListApi {
    app: AppSlot,
}

impl ListApi {
    pub fn new(app: AppSlot) -> Self {
        ListApi { app }
    }
}

#[tonic::async_trait]
impl ListService for ListApi {
    async fn create_face_list(
        &self,
        request: Request<pb::CreateFaceListRequest>,
    ) -> Result<Response<pb::FaceList>, Status> {
        observed("CreateFaceList", call_deadline(&request), async move {
            let who = caller(&request, Scope::ListsWrite)?;
            let list = request.into_inner().list.unwrap_or_default();
            let new = NewList { name: list.name, kind: list_kind(list.kind)?, threshold: list.threshold };
            let app = self.app.get()?;
            let created = app.create_face_list(&who, new).await?;
            Ok(Response::new(list_response(app, created)?))
        })
        .await
    }

    async fn get_face_list(&self, request: Request<pb::GetFaceListRequest>) -> Result<Response<pb::FaceList>, Status> {
        observed("GetFaceList", call_deadline(&request), async move {
            let who = caller(&request, Scope::ListsRead)?;
            let app = self.app.get()?;
            let list = app.get_face_list(&who, &request.get_ref().list_id).await?;
            Ok(Response::new(list_response(app, list)?))
        })
        .await
    }

    async fn list_face_lists(
        &self,
        request: Request<pb::ListFaceListsRequest>,
    ) -> Result<Response<pb::ListFaceListsResponse>, Status> {
        observed("ListFaceLists", call_deadline(&request), async move {
            let who = caller(&request, Scope::ListsRead)?;
            let pb::ListFaceListsRequest { page_size, page_token } = request.into_inner();
            let app = self.app.get()?;
            let (lists, next_page_token) = app.list_face_lists(&who, page_size, &page_token).await?;
            let lists = lists.into_iter().map(|l| list_response(app, l)).collect::<Result<_, _>>()?;
            Ok(Response::new(pb::ListFaceListsResponse { lists, next_page_token }))
        })
        .await
    }

    async fn delete_face_list(
        &self,
        request: Request<pb::DeleteFaceListRequest>,
    ) -> Result<Response<pb::DeleteFaceListResponse>, Status> {
        observed("DeleteFaceList", call_deadline(&request), async move {
            let who = caller(&request, Scope::ListsWrite)?;
            self.app.get()?.delete_face_list(&who, &request.get_ref().list_id).await?;
            Ok(Response::new(pb::DeleteFaceListResponse {}))
        })
        .await
    }

    async fn add_list_entry(
        &self,
        request: Request<pb::AddListEntryRequest>,
    ) -> Result<Response<pb::AddListEntryResponse>, Status> {
        observed("AddListEntry", call_deadline(&request), async move {
            let who = caller(&request, Scope::ListsWrite)?;
            // Copying a stored face reads it: faces:read too.
            if matches!(request.get_ref().source, Some(pb::add_list_entry_request::Source::FaceId(_))) {
                caller(&request, Scope::FacesRead)?;
            }
            let mut message = request.into_inner();
            let request_id = std::mem::take(&mut message.request_id);
            let idem = idempotency("AddListEntry", request_id, &message, |out: &AddedEntry| added_response(out))?;
            let pb::AddListEntryRequest { list_id, source, comment, request_id: _ } = message;
            let source = match source {
                Some(pb::add_list_entry_request::Source::Image(image)) => EntrySource::Image(image),
                Some(pb::add_list_entry_request::Source::FaceId(id)) => EntrySource::Face(id),
                None => {
                    return Err(Error::invalid(Reason::ImageEmpty, "image", "give an image or a face_id").into());
                }
            };
            let app = self.app.get()?;
            match app.add_list_entry(&who, &list_id, source, comment, idem).await? {
                Written::Done(out) => Ok(Response::new(added_response(&out))),
                Written::Replayed(bytes) => {
                    let mut response: pb::AddListEntryResponse = replayed(&bytes)?;
                    // The stored thumbnail, and who matches the entry now, as a first call finds.
                    if let Some(entry) = &mut response.entry {
                        let matches = app.entry_matches(&who, &entry.entry_id).await?;
                        response.enrolled_matches = matches.into_iter().map(Into::into).collect();
                        let thumbnail = app.entry_thumbnail(&who, &entry.entry_id).await?;
                        if let Some(detection) = &mut entry.detection {
                            detection.thumbnail = thumbnail.into();
                        }
                    }
                    Ok(Response::new(response))
                }
            }
        })
        .await
    }

    async fn list_list_entries(
        &self,
        request: Request<pb::ListListEntriesRequest>,
    ) -> Result<Response<pb::ListListEntriesResponse>, Status> {
        observed("ListListEntries", call_deadline(&request), async move {
            let who = caller(&request, Scope::ListsRead)?;
            let pb::ListListEntriesRequest { list_id, page_size, page_token } = request.into_inner();
            let (entries, next_page_token) =
                self.app.get()?.list_list_entries(&who, &list_id, page_size, &page_token).await?;
            let entries = entries.into_iter().map(|(e, thumbnail)| entry_response(e, thumbnail)).collect();
            Ok(Response::new(pb::ListListEntriesResponse { entries, next_page_token }))
        })
        .await
    }

    async fn delete_list_entry(
        &self,
        request: Request<pb::DeleteListEntryRequest>,
    ) -> Result<Response<pb::DeleteListEntryResponse>, Status> {
        observed("DeleteListEntry", call_deadline(&request), async move {
            let who = caller(&request, Scope::ListsWrite)?;
            self.app.get()?.delete_list_entry(&who, &request.get_ref().entry_id).await?;
            Ok(Response::new(pb::DeleteListEntryResponse {}))
        })
        .await
    }
}
