//! UserService through the real server: CRUD, partial updates, etags, validation codes,
//! paging, re-enrollment tokens, authentication and scopes.

use facevault::grpc::pb::{
    CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUsersRequest, UpdateUserRequest, User, UserRef, user_ref,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{ADMIN_A, ADMIN_B, READER_A, TestServer, Users, reason};

pub(crate) fn by_id(id: &str) -> Option<UserRef> {
    Some(UserRef { r#ref: Some(user_ref::Ref::UserId(id.to_owned())) })
}

pub(crate) fn by_external(id: &str) -> Option<UserRef> {
    Some(UserRef { r#ref: Some(user_ref::Ref::ExternalId(id.to_owned())) })
}

pub(crate) async fn create(users: &mut Users, external_id: &str) -> User {
    let user = User { external_id: external_id.into(), display_name: "Test Person".into(), ..User::default() };
    users
        .create_user(CreateUserRequest { user: Some(user), ..Default::default() })
        .await
        .expect("CreateUser")
        .into_inner()
}

pub(crate) fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() })
}

#[tokio::test]
async fn create_get_update_list_delete() {
    let server = TestServer::start_keyed().await;
    let mut users = server.users_as(ADMIN_A).await;
    let user = User {
        external_id: "cust-001".into(),
        display_name: "José Ñúñez".into(),
        email: "jose@example.com".into(),
        phone: "+34600111222".into(),
        address: "Calle Mayor 1, Madrid".into(),
        metadata: [("tier".to_owned(), "gold".to_owned())].into(),
        ..User::default()
    };
    let created = users
        .create_user(CreateUserRequest { user: Some(user), ..Default::default() })
        .await
        .expect("create")
        .into_inner();
    assert!(created.user_id.starts_with("usr_"));
    assert_eq!(created.enrollment_status, 1, "NOT_ENROLLED");
    assert_eq!(created.face_count, 0);
    assert!(created.create_time.is_some() && !created.etag.is_empty());

    let got = users.get_user(GetUserRequest { user: by_external("cust-001") }).await.expect("get").into_inner();
    assert_eq!(got, created);
    let got = users.get_user(GetUserRequest { user: by_id(&created.user_id) }).await.expect("get").into_inner();
    assert_eq!(got.display_name, "José Ñúñez");

    // Partial update: only the masked field changes, the etag moves on.
    let update = UpdateUserRequest {
        user: by_id(&created.user_id),
        user_update: Some(User { email: "new@example.com".into(), display_name: "ignored".into(), ..User::default() }),
        update_mask: mask(&["email"]),
        etag: created.etag.clone(),
        require_face_reenrollment: false,
        ..Default::default()
    };
    let updated = users.update_user(update.clone()).await.expect("update").into_inner().user.expect("user");
    assert_eq!(updated.email, "new@example.com");
    assert_eq!(updated.display_name, "José Ñúñez");
    assert_ne!(updated.etag, created.etag);
    let secs = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| (t.seconds, t.nanos));
    assert!(secs(&updated.update_time) > secs(&created.update_time));

    // The same request again carries a stale etag.
    let err = users.update_user(update).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::Aborted, "ETAG_MISMATCH"));

    // Renaming the external id moves the index with it.
    let rename = UpdateUserRequest {
        user: by_external("cust-001"),
        user_update: Some(User { external_id: "cust-001b".into(), ..User::default() }),
        update_mask: mask(&["external_id"]),
        ..UpdateUserRequest::default()
    };
    users.update_user(rename).await.expect("rename");
    let err = users.get_user(GetUserRequest { user: by_external("cust-001") }).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::NotFound, "USER_NOT_FOUND"));
    users.get_user(GetUserRequest { user: by_external("cust-001b") }).await.expect("found by the new id");

    for i in 0..4 {
        create(&mut users, &format!("page-{i}")).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page =
            users.list_users(ListUsersRequest { page_size: 2, page_token: token }).await.expect("list").into_inner();
        assert!(page.users.len() <= 2);
        seen.extend(page.users.into_iter().map(|u| u.external_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    assert_eq!(seen, ["cust-001b", "page-0", "page-1", "page-2", "page-3"]);

    users
        .delete_user(DeleteUserRequest { user: by_id(&created.user_id), etag: String::new(), ..Default::default() })
        .await
        .expect("delete");
    let err = users.get_user(GetUserRequest { user: by_id(&created.user_id) }).await.unwrap_err();
    assert_eq!(reason(&err), "USER_NOT_FOUND");
    let err = users
        .delete_user(DeleteUserRequest { user: by_id(&created.user_id), etag: String::new(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::NotFound, "USER_NOT_FOUND"));
}

#[tokio::test]
async fn validation_codes_name_the_field() {
    let server = TestServer::start_keyed().await;
    let mut users = server.users_as(ADMIN_A).await;
    let base = User { external_id: "ok-1".into(), ..User::default() };
    let cases: Vec<(User, &str, &str)> = vec![
        (User { external_id: String::new(), ..base.clone() }, "EXTERNAL_ID_INVALID", "user.external_id"),
        (User { external_id: "has space".into(), ..base.clone() }, "EXTERNAL_ID_INVALID", "user.external_id"),
        (User { email: "not-an-email".into(), ..base.clone() }, "EMAIL_INVALID", "user.email"),
        (User { phone: "0612345678".into(), ..base.clone() }, "PHONE_INVALID", "user.phone"),
        (User { display_name: "R2-D2".into(), ..base.clone() }, "DISPLAY_NAME_INVALID", "user.display_name"),
        (User { address: "x".repeat(501), ..base.clone() }, "ADDRESS_TOO_LONG", "user.address"),
        (
            User { metadata: (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect(), ..base.clone() },
            "METADATA_INVALID",
            "user.metadata",
        ),
    ];
    for (user, want, field) in cases {
        let err = users.create_user(CreateUserRequest { user: Some(user), ..Default::default() }).await.unwrap_err();
        assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, want));
        let details = err.get_error_details();
        let violation = &details.bad_request().expect("BadRequest").field_violations[0];
        assert_eq!(violation.field, field);
    }

    create(&mut users, "taken").await;
    let other = create(&mut users, "other").await;
    let err = users
        .create_user(CreateUserRequest {
            user: Some(User { external_id: "taken".into(), ..User::default() }),
            ..Default::default()
        })
        .await;
    let err = err.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::AlreadyExists, "EXTERNAL_ID_TAKEN"));
    let steal = UpdateUserRequest {
        user: by_id(&other.user_id),
        user_update: Some(User { external_id: "taken".into(), ..User::default() }),
        update_mask: mask(&["external_id"]),
        ..UpdateUserRequest::default()
    };
    let err = users.update_user(steal).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::AlreadyExists, "EXTERNAL_ID_TAKEN"));

    let bad_phone = UpdateUserRequest {
        user: by_id(&other.user_id),
        user_update: Some(User { phone: "12".into(), ..User::default() }),
        update_mask: mask(&["phone"]),
        ..UpdateUserRequest::default()
    };
    let err = users.update_user(bad_phone).await.unwrap_err();
    assert_eq!(reason(&err), "PHONE_INVALID");
    assert_eq!(
        err.get_error_details().bad_request().expect("BadRequest").field_violations[0].field,
        "user_update.phone"
    );

    for paths in [&[][..], &["user_id"][..], &["face_count"][..]] {
        let request =
            UpdateUserRequest { user: by_id(&other.user_id), update_mask: mask(paths), ..UpdateUserRequest::default() };
        let err = users.update_user(request).await.unwrap_err();
        assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, "UPDATE_MASK_INVALID"), "{paths:?}");
    }
    let err = users.get_user(GetUserRequest { user: None }).await.unwrap_err();
    assert_eq!(reason(&err), "USER_REF_INVALID");
    let err = users.get_user(GetUserRequest { user: by_id("usr_0000000000000001") }).await.unwrap_err();
    assert_eq!(reason(&err), "USER_NOT_FOUND");
    // Not an id this server writes: a bad argument, not a lookup (tests/grpc/edges.rs has more).
    let err = users.get_user(GetUserRequest { user: by_id("garbage") }).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, "USER_REF_INVALID"));
    let err = users.list_users(ListUsersRequest { page_size: 5000, page_token: String::new() }).await.unwrap_err();
    assert_eq!(reason(&err), "PAGE_SIZE_INVALID");
    let err = users.list_users(ListUsersRequest { page_size: 5, page_token: "forged".into() }).await.unwrap_err();
    assert_eq!(reason(&err), "PAGE_TOKEN_INVALID");
}

#[tokio::test]
async fn reenrollment_sets_the_status_and_returns_a_token() {
    let server = TestServer::start_keyed().await;
    let mut users = server.users_as(ADMIN_A).await;
    let user = create(&mut users, "reenroll-me").await;
    let request = UpdateUserRequest {
        user: by_id(&user.user_id),
        require_face_reenrollment: true,
        ..UpdateUserRequest::default()
    };
    let reply = users.update_user(request).await.expect("update").into_inner();
    assert!(reply.reenrollment_token.starts_with("rt_") && reply.reenrollment_token.len() > 60);
    assert_eq!(reply.user.expect("user").enrollment_status, 3, "REENROLLMENT_REQUIRED");
    // Only the token's hash is stored: the token itself appears in no tree.
    let store = server.app().store().expect("store");
    for (tree, _) in store.tree_sizes() {
        for (key, value) in store.raw_entries(tree).expect("scan") {
            let needle = reply.reenrollment_token.as_bytes();
            assert!(
                !key.windows(needle.len()).any(|w| w == needle) && !value.windows(needle.len()).any(|w| w == needle)
            );
        }
    }
}

#[tokio::test]
async fn keys_and_scopes_are_enforced() {
    let server = TestServer::start_keyed().await;
    let err = server.users_as(None).await.list_users(ListUsersRequest::default()).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::Unauthenticated, "API_KEY_MISSING"));
    let err = server.users_as(Some("wrong-secret")).await.list_users(ListUsersRequest::default()).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::Unauthenticated, "API_KEY_INVALID"));

    let mut reader = server.users_as(READER_A).await;
    reader.list_users(ListUsersRequest::default()).await.expect("users:read is enough to list");
    let err = reader
        .create_user(CreateUserRequest {
            user: Some(User { external_id: "x".into(), ..User::default() }),
            ..Default::default()
        })
        .await;
    let err = err.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::PermissionDenied, "SCOPE_MISSING"));
    let info = err.get_error_details().error_info().cloned().expect("ErrorInfo");
    assert_eq!(info.metadata.get("scope").map(String::as_str), Some("users:write"));

    // Health needs no key.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health.check(tonic_health::pb::HealthCheckRequest::default()).await.expect("health without a key");
}

#[tokio::test]
async fn tenants_do_not_see_or_collide_with_each_other() {
    let server = TestServer::start_keyed().await;
    let (mut a, mut b) = (server.users_as(ADMIN_A).await, server.users_as(ADMIN_B).await);
    let ua = create(&mut a, "same-external-id").await;
    let ub = create(&mut b, "same-external-id").await;
    assert_ne!(ua.user_id, ub.user_id, "the same external id lives in both tenants");
    let err = b.get_user(GetUserRequest { user: by_id(&ua.user_id) }).await.unwrap_err();
    assert_eq!(reason(&err), "USER_NOT_FOUND");
    let err = b
        .delete_user(DeleteUserRequest { user: by_id(&ua.user_id), etag: String::new(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "USER_NOT_FOUND");
    let listed = b.list_users(ListUsersRequest::default()).await.expect("list").into_inner().users;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].user_id, ub.user_id);
    a.get_user(GetUserRequest { user: by_id(&ua.user_id) }).await.expect("A's user is intact");
}

pub(crate) fn get(user: Option<UserRef>) -> GetUserRequest {
    GetUserRequest { user }
}
