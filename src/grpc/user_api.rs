//! `UserService` handlers: convert, call `App`, convert back.

use tonic::{Request, Response, Status};

use super::AppSlot;
use super::pb;
use super::pb::user_service_server::UserService;
use super::status::unimplemented;

/// The UserService implementation.
#[derive(Debug, Clone)]
pub struct UserApi {
    #[expect(dead_code, reason = "the user rpcs arrive with the enrollment service")]
    app: AppSlot,
}

impl UserApi {
    pub fn new(app: AppSlot) -> Self {
        UserApi { app }
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(&self, _: Request<pb::CreateUserRequest>) -> Result<Response<pb::User>, Status> {
        Err(unimplemented("CreateUser"))
    }

    async fn get_user(&self, _: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        Err(unimplemented("GetUser"))
    }

    async fn update_user(&self, _: Request<pb::UpdateUserRequest>) -> Result<Response<pb::UpdateUserResponse>, Status> {
        Err(unimplemented("UpdateUser"))
    }

    async fn delete_user(&self, _: Request<pb::DeleteUserRequest>) -> Result<Response<pb::DeleteUserResponse>, Status> {
        Err(unimplemented("DeleteUser"))
    }

    async fn list_users(&self, _: Request<pb::ListUsersRequest>) -> Result<Response<pb::ListUsersResponse>, Status> {
        Err(unimplemented("ListUsers"))
    }
}
