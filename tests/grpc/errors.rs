//! Bad input through the real server: status code, ErrorInfo reason and details.

use facevault::grpc::pb::DetectFacesRequest;
use tonic::Code;
use tonic_types::StatusExt;

use image::ImageEncoder;

use crate::common::{TestServer, fixture_bytes, reason};

fn request(image: Vec<u8>) -> DetectFacesRequest {
    DetectFacesRequest { image: image.into(), include_embeddings: false, include_thumbnails: false }
}

#[tokio::test]
async fn image_errors_carry_reason_codes_and_field_violations() {
    let server = TestServer::start().await;
    let mut client = server.faces().await;

    let err = client.detect_faces(request(Vec::new())).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, "IMAGE_EMPTY"));
    let details = err.get_error_details();
    assert_eq!(details.error_info().expect("ErrorInfo").domain, "facevault");
    let violations = &details.bad_request().expect("BadRequest").field_violations;
    assert_eq!(violations[0].field, "image");

    let err = client.detect_faces(request(b"definitely not a picture".to_vec())).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, "IMAGE_UNDECODABLE"));

    let jpeg = fixture_bytes("t1.jpg");
    let err = client.detect_faces(request(jpeg[..jpeg.len() / 3].to_vec())).await.unwrap_err();
    assert_eq!(reason(&err), "IMAGE_UNDECODABLE", "truncated JPEG: {err:?}");

    // Just over the 2 MiB image limit: refused by the image check, with the numbers.
    let mut big = jpeg.clone();
    big.resize(2 * 1024 * 1024 + 1, 0);
    let err = client.detect_faces(request(big)).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, "IMAGE_TOO_LARGE"));
    let info = err.get_error_details().error_info().cloned().expect("ErrorInfo");
    assert_eq!(info.metadata.get("max_bytes").map(String::as_str), Some("2097152"));

    // A ~50 KB PNG that decodes to 7000 x 7000 pixels (49 MP, over the 40 MP limit): refused on
    // its header, before any large allocation.
    let bomb = png_bomb(7000, 7000);
    assert!(bomb.len() < 128 * 1024, "{} bytes", bomb.len());
    let err = client.detect_faces(request(bomb)).await.unwrap_err();
    assert_eq!(reason(&err), "IMAGE_DIMENSIONS_TOO_LARGE");
    let info = err.get_error_details().error_info().cloned().expect("ErrorInfo");
    assert_eq!(info.metadata.get("width").map(String::as_str), Some("7000"));

    // Far over the gRPC message limit: refused by the transport, the server stays up.
    let err = client.detect_faces(request(vec![0u8; 4 * 1024 * 1024])).await.unwrap_err();
    assert!(matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted), "{err:?}");
    let ok = client.detect_faces(request(fixture_bytes("yaoming.jpg"))).await.expect("still serving");
    assert_eq!(ok.into_inner().faces.len(), 1);
}

/// A real, complete PNG of `width` x `height` black pixels: zlib squeezes it to a few KB.
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    let image = image::GrayImage::new(width, height);
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::NoFilter,
    )
    .write_image(image.as_raw(), width, height, image::ExtendedColorType::L8)
    .expect("encode");
    out
}

#[tokio::test]
async fn a_full_queue_answers_overloaded_with_retry_info() {
    let server = TestServer::start_with(|c| {
        c.workers = 1;
        c.queue_capacity = 1;
    })
    .await;
    let image = fixture_bytes("t1.jpg");
    let mut calls = Vec::new();
    for _ in 0..12 {
        let mut client = server.faces().await;
        let image = image.clone();
        calls.push(tokio::spawn(async move { client.detect_faces(request(image)).await }));
    }
    let (mut ok, mut overloaded) = (0, 0);
    for call in calls {
        match call.await.expect("task") {
            Ok(reply) => {
                assert_eq!(reply.into_inner().faces.len(), 6);
                ok += 1;
            }
            Err(err) => {
                assert_eq!((err.code(), reason(&err).as_str()), (Code::ResourceExhausted, "OVERLOADED"));
                assert!(err.get_error_details().retry_info().is_some(), "RetryInfo attached");
                overloaded += 1;
            }
        }
    }
    assert!(ok >= 1 && overloaded >= 1, "ok {ok}, overloaded {overloaded}");
}
