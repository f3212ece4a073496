//! `UserService` handlers: authorise, convert, call `App`, convert back.

use tonic::{Request, Response, Status};

use super::AppSlot;
use super::auth::caller;
use super::convert;
use super::idempotent::{idempotency, replayed};
use super::pb;
use super::pb::user_service_server::UserService;
use super::{call_deadline, observed};
use crate::app::{Written, parse_etag};
use crate::domain::{Scope, User};

/// UpdateUser's response (a replay's has no token: the server keeps only its hash).
fn update_response((user, token): &(User, Option<String>)) -> pb::UpdateUserResponse {
    pb::UpdateUserResponse { user: Some(user.clone().into()), reenrollment_token: token.clone().unwrap_or_default() }
}

/// The UserService implementation.
#[derive(Debug, Clone)]
pub struct UserApi {
    app: AppSlot,
}

impl UserApi {
    pub fn new(app: AppSlot) -> Self {
        UserApi { app }
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(&self, request: Request<pb::CreateUserRequest>) -> Result<Response<pb::User>, Status> {
        observed("CreateUser", call_deadline(&request), async move {
            let who = caller(&request, Scope::UsersWrite)?;
            let mut request = request.into_inner();
            let request_id = std::mem::take(&mut request.request_id);
            let idem = idempotency("CreateUser", request_id, &request, |u: &User| pb::User::from(u.clone()))?;
            let pb::CreateUserRequest { user, request_id: _ } = request;
            Ok(Response::new(match self.app.get()?.create_user(&who, convert::new_user(user), idem).await? {
                Written::Done(user) => user.into(),
                Written::Replayed(bytes) => replayed(&bytes)?,
            }))
        })
        .await
    }

    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        observed("GetUser", call_deadline(&request), async move {
            let who = caller(&request, Scope::UsersRead)?;
            let pb::GetUserRequest { user } = request.into_inner();
            let user = self.app.get()?.get_user(&who, &convert::user_ref(user, "user")?).await?;
            Ok(Response::new(user.into()))
        })
        .await
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        observed("UpdateUser", call_deadline(&request), async move {
            let who = caller(&request, Scope::UsersWrite)?;
            let mut request = request.into_inner();
            let request_id = std::mem::take(&mut request.request_id);
            let idem = idempotency("UpdateUser", request_id, &request, update_response)?;
            let pb::UpdateUserRequest {
                user,
                user_update,
                update_mask,
                etag,
                require_face_reenrollment,
                request_id: _,
            } = request;
            let target = convert::user_ref(user, "user")?;
            let mut update = convert::user_update(user_update, update_mask, require_face_reenrollment)?;
            update.expected_version = parse_etag(&etag)?;
            Ok(Response::new(match self.app.get()?.update_user(&who, &target, update, idem).await? {
                Written::Done(done) => update_response(&done),
                Written::Replayed(bytes) => replayed(&bytes)?,
            }))
        })
        .await
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        observed("DeleteUser", call_deadline(&request), async move {
            let who = caller(&request, Scope::UsersWrite)?;
            let mut request = request.into_inner();
            let request_id = std::mem::take(&mut request.request_id);
            let idem = idempotency("DeleteUser", request_id, &request, |_: &()| pb::DeleteUserResponse {})?;
            let pb::DeleteUserRequest { user, etag, request_id: _ } = request;
            let target = convert::user_ref(user, "user")?;
            self.app.get()?.delete_user(&who, &target, parse_etag(&etag)?, idem).await?;
            Ok(Response::new(pb::DeleteUserResponse {}))
        })
        .await
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        observed("ListUsers", call_deadline(&request), async move {
            let who = caller(&request, Scope::UsersRead)?;
            let pb::ListUsersRequest { page_size, page_token } = request.into_inner();
            let (users, next_page_token) = self.app.get()?.list_users(&who, page_size, &page_token).await?;
            Ok(Response::new(pb::ListUsersResponse {
                users: users.into_iter().map(Into::into).collect(),
                next_page_token,
            }))
        })
        .await
    }
}
