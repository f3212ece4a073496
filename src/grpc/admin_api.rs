//! `AdminService` handlers: the models and their rollout (app/reindex.rs). Scope admin, checked
//! by the auth layer and again here.

use tonic::{Request, Response, Status};

use super::AppSlot;
use super::auth::caller;
use super::pb;
use super::pb::admin_service_server::AdminService;
use super::{call_deadline, observed};
use crate::app::models::ModelCatalog;
use crate::domain::Scope;
use crate::storage::{EmbedderRecord, ModelState};

/// The AdminService implementation.
#[derive(Debug, Clone)]
pub struct AdminApi {
    app: AppSlot,
}

impl AdminApi {
    pub fn new(app: AppSlot) -> Self {
        AdminApi { app }
    }
}

/// A model as reported: its thresholds are this node's configuration of it (none when this
/// node does not have it).
fn model_info(catalog: &ModelCatalog, record: Option<&EmbedderRecord>) -> Option<pb::ModelInfo> {
    let record = record?;
    let configured = catalog.index_of(record).map(|i| catalog.models[i].thresholds);
    Some(pb::ModelInfo {
        embedder_id: record.id.clone(),
        sha256: record.sha256.clone(),
        match_threshold: configured.map_or(0.0, |t| t.matched),
        possible_match_threshold: configured.map_or(0.0, |t| t.possible),
    })
}

fn timestamp(time: Option<std::time::SystemTime>) -> Option<prost_types::Timestamp> {
    time.map(prost_types::Timestamp::from)
}

fn job(catalog: &ModelCatalog, state: &ModelState) -> pb::ReindexJob {
    let started = state.state != crate::storage::ReindexState::None;
    pb::ReindexJob {
        state: state.state.as_i32(),
        total: state.total as i64,
        done: state.done as i64,
        failed: state.failed as i64,
        top1_agreement: state.top1_agreement,
        start_time: timestamp(state.start_time),
        update_time: timestamp(state.update_time),
        from: if started { model_info(catalog, state.slots[state.from_slot].as_ref()) } else { None },
        to: if started { model_info(catalog, state.slots[state.to_slot].as_ref()) } else { None },
        worker: state.worker.clone(),
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_status(&self, request: Request<pb::GetStatusRequest>) -> Result<Response<pb::ServiceStatus>, Status> {
        observed("GetStatus", call_deadline(&request), async move {
            caller(&request, Scope::Admin)?;
            let app = self.app.get()?;
            let state = app.reindex_state().await?;
            let catalog = app.catalog();
            Ok(Response::new(pb::ServiceStatus {
                active: model_info(catalog, state.active_embedder().ok()),
                candidate: model_info(catalog, catalog.candidate().map(|c| &c.record)),
                faces_per_tenant: app
                    .faces_per_tenant()
                    .into_iter()
                    .map(|(t, n)| (t.as_str().to_owned(), n as i64))
                    .collect(),
                reindex: Some(job(catalog, &state)),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }))
        })
        .await
    }

    async fn start_reindex(
        &self,
        request: Request<pb::StartReindexRequest>,
    ) -> Result<Response<pb::ReindexJob>, Status> {
        observed("StartReindex", call_deadline(&request), async move {
            caller(&request, Scope::Admin)?;
            let app = self.app.get()?;
            let state = app.start_reindex().await?;
            Ok(Response::new(job(app.catalog(), &state)))
        })
        .await
    }

    async fn get_reindex(&self, request: Request<pb::GetReindexRequest>) -> Result<Response<pb::ReindexJob>, Status> {
        observed("GetReindex", call_deadline(&request), async move {
            caller(&request, Scope::Admin)?;
            let app = self.app.get()?;
            let state = app.reindex_state().await?;
            Ok(Response::new(job(app.catalog(), &state)))
        })
        .await
    }

    async fn cutover_reindex(
        &self,
        request: Request<pb::CutoverReindexRequest>,
    ) -> Result<Response<pb::ReindexJob>, Status> {
        observed("CutoverReindex", call_deadline(&request), async move {
            caller(&request, Scope::Admin)?;
            let app = self.app.get()?;
            let state = app.cutover_reindex().await?;
            Ok(Response::new(job(app.catalog(), &state)))
        })
        .await
    }

    async fn rollback_reindex(
        &self,
        request: Request<pb::RollbackReindexRequest>,
    ) -> Result<Response<pb::ReindexJob>, Status> {
        observed("RollbackReindex", call_deadline(&request), async move {
            caller(&request, Scope::Admin)?;
            let app = self.app.get()?;
            let state = app.rollback_reindex().await?;
            Ok(Response::new(job(app.catalog(), &state)))
        })
        .await
    }

    async fn finish_reindex(
        &self,
        request: Request<pb::FinishReindexRequest>,
    ) -> Result<Response<pb::ReindexJob>, Status> {
        observed("FinishReindex", call_deadline(&request), async move {
            caller(&request, Scope::Admin)?;
            let app = self.app.get()?;
            let state = app.finish_reindex().await?;
            Ok(Response::new(job(app.catalog(), &state)))
        })
        .await
    }
}
