//! Health and reflection (v1 and v1alpha) as a client sees them, and graceful stop.

use facevault::grpc::pb::DetectFacesRequest;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::common::{TestServer, fixture_bytes};

#[tokio::test]
async fn health_reports_each_service_serving() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "facevault.v1.FaceService", "facevault.v1.UserService"] {
        let reply = health.check(HealthCheckRequest { service: service.into() }).await.expect("Check").into_inner();
        assert_eq!(reply.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "nope.Service".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn reflection_v1_lists_services_and_describes_types() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = TestServer::start().await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("facevault.v1.FaceService".into())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("google.rpc.ErrorInfo".into())),
        },
    ];
    let mut replies = client.server_reflection_info(tokio_stream::iter(requests)).await.expect("stream").into_inner();
    let Some(Ok(first)) = replies.next().await else { panic!("no list reply") };
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else { panic!("not a list") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["facevault.v1.FaceService", "facevault.v1.UserService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    for _ in 0..2 {
        let Some(Ok(reply)) = replies.next().await else { panic!("no file reply") };
        let Some(MessageResponse::FileDescriptorResponse(files)) = reply.message_response else {
            panic!("symbol not found: {:?}", reply.message_response)
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }
}

#[tokio::test]
async fn stop_drains_and_the_port_closes() {
    let server = TestServer::start().await;
    let mut client = server.faces().await;
    let request = DetectFacesRequest { image: fixture_bytes("yaoming.jpg").into(), ..Default::default() };
    assert_eq!(client.detect_faces(request).await.expect("served").into_inner().faces.len(), 1);
    let addr = server.addr;
    server.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener closed after stop");
}
