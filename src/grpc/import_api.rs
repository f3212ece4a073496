//! ImportFaces (design/API-2.md, "Bulk import"): reads items while fewer than
//! `--import-max-in-flight` are being worked on, runs each as `App::import_item`, and streams
//! each result back as it finishes. The only backpressure is the bounded work: while it is
//! full nothing more is read, so HTTP/2 flow control slows the sender; a reader that does not
//! take results fills the result channel, which stops the work the same way.

use std::pin::Pin;
use std::sync::Arc;

use prost::Message;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::Stream;
use tonic::{Status, Streaming};

use super::idempotent::{current_duplicates, idempotency, recorded_duplicates, replayed};
use super::{AppSlot, convert, pb};
use crate::app::{App, EnrollOutcome, FaceUpload, KeyRing, UserRef, Written, validate_item_id};
use crate::domain::Principal;
use crate::error::Error;

pub(super) type ResultStream = Pin<Box<dyn Stream<Item = Result<pb::ImportFacesResponse, Status>> + Send>>;

type Outcome = pb::import_result::ImportOutcome;

/// The recorded (and first) result of an item's enrollment.
fn item_result(out: &EnrollOutcome) -> pb::ImportResult {
    pb::ImportResult {
        outcome: if out.created_user { Outcome::Created } else { Outcome::Added } as i32,
        user_id: out.user.id.to_string(),
        face: Some(out.face.clone().into()),
        duplicates: out.duplicates.iter().cloned().map(Into::into).collect(),
        list_matches: out.list_matches.iter().cloned().map(Into::into).collect(),
        warnings: out.warnings.clone(),
        ..Default::default()
    }
}

/// A FAILED result carrying the status UploadFace would have returned.
fn failed(status: Status) -> pb::ImportResult {
    // A status made from an Error carries its google.rpc.Status (code, message, ErrorInfo) in
    // its details; one made otherwise is rebuilt from code and message.
    let error = tonic_types::pb::Status::decode(status.details()).ok().filter(|s| s.code == status.code() as i32);
    let error = error.unwrap_or_else(|| tonic_types::pb::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    });
    pb::ImportResult { outcome: Outcome::Failed as i32, error: Some(error), ..Default::default() }
}

/// How a stream runs: its bound, its idle limit, and the key's call slot it holds.
struct Limits {
    in_flight: usize,
    idle: std::time::Duration,
    /// The stream counts as one call of its key for its whole life (the auth layer's slot ends
    /// when the handler returns the stream).
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// Starts the import of `inbound` for `who` (checked for users:write and faces:write).
pub(super) fn start(
    app: AppSlot,
    keys: KeyRing,
    who: Arc<Principal>,
    inbound: Streaming<pb::ImportFacesRequest>,
) -> Result<ResultStream, Status> {
    let settings = app.get()?.settings();
    let limits = Limits {
        in_flight: settings.import_max_in_flight.max(1),
        idle: settings.import_idle,
        _slot: keys.concurrency_permit(&who)?,
    };
    let (results, rx) = mpsc::channel(limits.in_flight);
    tokio::spawn(run(app, keys, who, inbound, results, limits));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

async fn run(
    app: AppSlot,
    keys: KeyRing,
    who: Arc<Principal>,
    mut inbound: Streaming<pb::ImportFacesRequest>,
    results: mpsc::Sender<Result<pb::ImportFacesResponse, Status>>,
    limits: Limits,
) {
    let in_flight = limits.in_flight;
    let started = std::time::Instant::now();
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut code = "OK";
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { break };
        let next = tokio::time::timeout(limits.idle, inbound.message()).await.unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "no item came for {} s (the server's request timeout)",
                limits.idle.as_secs()
            )))
        });
        let item = match next {
            Ok(Some(request)) => request.item.unwrap_or_default(),
            Ok(None) => break,
            Err(status) => {
                // The sender's stream broke (cancelled, a message over the size limit): the
                // items read so far still finish; the caller learns why the rest were not read.
                code = super::code_name(status.code());
                let _ = results.send(Err(status)).await;
                break;
            }
        };
        // Each item spends one of the key's rate-limit tokens, waiting for it (the wait holds
        // the stream back like any other slow item).
        while let Err(Error::ResourceExhausted { retry_after, .. }) = keys.admit(&who) {
            tokio::time::sleep(retry_after.unwrap_or(std::time::Duration::from_millis(100))).await;
        }
        let (app, who, results) = (app.clone(), who.clone(), results.clone());
        tokio::spawn(async move {
            let result = match app.get() {
                Ok(app) => import_one(app, &who, item).await,
                Err(e) => failed(e.into()),
            };
            crate::metrics::record_import_item(result.outcome as usize);
            // A caller that went away takes no results; the item was done all the same.
            let _ = results.send(Ok(pb::ImportFacesResponse { result: Some(result) })).await;
            drop(slot);
        });
    }
    // Every item read finishes before the stream ends.
    let _ = slots.acquire_many(in_flight as u32).await;
    crate::metrics::record_rpc("ImportFaces", code, started.elapsed());
}

/// How often an item the inference queue had no room for is tried again (100 ms apart):
/// other traffic may fill the queue, and an import waits rather than failing its items.
const OVERLOAD_RETRIES: usize = 100;

/// One item: its result, FAILED with the error UploadFace would have given when it fails.
async fn import_one(app: &App, who: &Principal, mut item: pb::ImportItem) -> pb::ImportResult {
    let item_id = std::mem::take(&mut item.item_id);
    let mut tries = 0;
    let mut result = loop {
        match import_item(app, who, &item_id, item.clone()).await {
            Ok(result) => break result,
            Err(status) if status.code() == tonic::Code::ResourceExhausted && tries < OVERLOAD_RETRIES => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(status) => break failed(status),
        }
    };
    result.item_id = item_id;
    result
}

async fn import_item(
    app: &App,
    who: &Principal,
    item_id: &str,
    mut item: pb::ImportItem,
) -> Result<pb::ImportResult, Status> {
    validate_item_id(item_id)?;
    let request_id = std::mem::take(&mut item.request_id);
    let idem = idempotency("ImportFaces", request_id, &item, |out: &EnrollOutcome| {
        let mut result = item_result(out);
        recorded_duplicates(&mut result.duplicates);
        result
    })?;
    let pb::ImportItem { item_id: _, request_id: _, user, image, comment, duplicate_policy, multiple_faces_policy } =
        item;
    let user = convert::new_user(user);
    let upload = FaceUpload {
        user: UserRef::External(user.external_id.clone()),
        image,
        comment,
        reject_duplicates: convert::reject_duplicates(duplicate_policy)?,
        multiple_faces: convert::multiple_faces(multiple_faces_policy)?,
    };
    Ok(match app.import_item(who, user, upload, idem).await? {
        Written::Done(out) => item_result(&out),
        Written::Replayed(bytes) => {
            let mut result: pb::ImportResult = replayed(&bytes)?;
            current_duplicates(app, &who.tenant, &mut result.duplicates).await?;
            result.replayed_outcome = result.outcome;
            result.outcome = Outcome::Replayed as i32;
            result
        }
    })
}
