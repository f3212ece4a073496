//! The Prometheus endpoint as a scraper sees it.

use crate::common::{ADMIN_A, TestServer, fixture_bytes};
use crate::enroll::upload;
use crate::users::create;

#[tokio::test]
async fn metrics_count_rpcs_stages_and_index_size() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let server = TestServer::start_keyed_with(|c| {
        c.metrics_listen = Some(metrics);
        c.metrics_tenant_labels = true;
    })
    .await;
    create(&mut server.users_as(ADMIN_A).await, "m").await;
    let mut faces = server.faces_as(ADMIN_A).await;
    upload(&mut faces, "m", fixture_bytes("yaoming.jpg")).await.expect("upload");
    let _ = upload(&mut faces, "nobody", fixture_bytes("yaoming.jpg")).await.unwrap_err();
    // Refused by the auth layer before any handler: counted too.
    let mut intruder = server.users_as(Some("not-a-key")).await;
    let _ = intruder.get_user(crate::users::get(crate::users::by_external("m"))).await.unwrap_err();

    let text = crate::common::scrape(metrics, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("Content-Type: text/plain; version=0.0.4"));
    // Counters are process-wide (tests share the process), so check presence, not exact values.
    assert!(text.contains("facevault_rpc_duration_seconds_count{rpc=\"UploadFace\",code=\"OK\"}"), "{text}");
    assert!(text.contains("facevault_rpc_duration_seconds_count{rpc=\"UploadFace\",code=\"NOT_FOUND\"}"));
    assert!(text.contains("facevault_rpc_duration_seconds_bucket{rpc=\"CreateUser\",code=\"OK\",le=\"+Inf\"}"));
    assert!(text.contains("facevault_rpc_duration_seconds_count{rpc=\"GetUser\",code=\"UNAUTHENTICATED\"}"), "{text}");
    for stage in ["decode", "detect", "align", "embed", "thumbnail", "store", "search"] {
        assert!(text.contains(&format!("facevault_stage_duration_seconds_count{{stage=\"{stage}\"}}")), "{stage}");
    }
    assert!(text.contains("facevault_inference_queue_depth 0"));
    // The engine of each model, as `auto` resolved it on this CPU: the embedder on OpenVINO
    // bf16 where the CPU has bf16, ONNX Runtime elsewhere; the detector on ONNX Runtime.
    use facevault::inference::backend::{CpuFeatures, Engine, Precision};
    let backend = server.app().pool().backend();
    let cpu = CpuFeatures::detect();
    let openvino = cpu.bf16 && server.config().openvino_loads(cpu).is_ok();
    let embedder = if openvino { Engine::OpenVino(Precision::Bf16) } else { Engine::Ort };
    assert_eq!((backend.detector, backend.embedder), (Engine::Ort, embedder));
    for (model, engine) in [("detector", backend.detector), ("embedder", backend.embedder)] {
        let (name, precision) = (engine.name(), engine.precision_name());
        let line = format!(
            "facevault_inference_backend_info{{model=\"{model}\",backend=\"{name}\",precision=\"{precision}\"}} 1"
        );
        assert!(text.contains(&line), "{line} in {text}");
    }
    assert!(text.contains("facevault_overload_rejections_total"));
    // --metrics-tenant-labels: per tenant, by name (tests/grpc/edges.rs: without it, a total).
    assert!(text.contains("facevault_index_faces{tenant=\"alpha\"} 1"), "{text}");
    assert!(crate::common::scrape(metrics, "/other").await.starts_with("HTTP/1.1 404"));
}
