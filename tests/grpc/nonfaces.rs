//! Photos of no human face: animals (a cat, a quokka, a drawn chimp), drawings, textures and
//! objects, from the scikit-image, scikit-learn, imgaug and pygame wheels (`scripts/setup.sh`;
//! not used to calibrate the face check, which saw Debian's and npm's photos). DetectFaces
//! reports no face in any of them, any way up, and UploadFace refuses them; the face check is
//! what removes the drawn chimp, which the detector scores 0.70.

use facevault::grpc::pb::{DetectFacesRequest, DetectedFace, UploadFaceRequest};

use crate::common::{ADMIN_A, TestServer, reason, root};

const NONFACES: [&str; 15] = [
    "alien1.png",
    "brick.png",
    "chelsea.png",
    "chimp.png",
    "china.jpg",
    "coffee.png",
    "flower.jpg",
    "grass.png",
    "horse.png",
    "logo.png",
    "moon.png",
    "motorcycle_left.png",
    "quokka.jpg",
    "rocket.jpg",
    "text.png",
];

fn nonface(name: &str) -> Vec<u8> {
    let path = root().join("tests/fixtures/nonfaces").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (make setup fetches it)", path.display()))
}

/// DetectFaces without embeddings, as admin A of a keyed server.
pub(crate) async fn detect(server: &TestServer, image: Vec<u8>) -> Vec<DetectedFace> {
    let request = DetectFacesRequest { image: image.into(), include_embeddings: false, include_thumbnails: false };
    let mut faces = server.faces_as(ADMIN_A).await;
    faces.detect_faces(request).await.expect("DetectFaces").into_inner().faces
}

#[tokio::test]
async fn photos_of_no_human_face_give_no_face_and_never_enroll() {
    let server = TestServer::start_keyed().await;
    for name in NONFACES {
        let found = detect(&server, nonface(name)).await;
        let scores: Vec<f32> = found.iter().map(|f| f.score).collect();
        assert!(found.is_empty(), "{name}: faces with scores {scores:?}");
    }

    let mut users = server.users_as(ADMIN_A).await;
    crate::users::create(&mut users, "pet").await;
    let mut faces = server.faces_as(ADMIN_A).await;
    for name in ["chimp.png", "chelsea.png", "quokka.jpg"] {
        let upload = UploadFaceRequest {
            user: crate::users::by_external("pet"),
            image: nonface(name).into(),
            ..Default::default()
        };
        let err = faces.upload_face(upload).await.expect_err(name);
        assert_eq!(reason(&err), "NO_FACE_DETECTED", "{name}: {err:?}");
    }

    // Without the face check the detector's face on the chimp comes back: the check, not the
    // detector's threshold, removes it.
    let unchecked = TestServer::start_keyed_with(|c| c.min_face_norm = 0.0).await;
    let found = detect(&unchecked, nonface("chimp.png")).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].score > 0.6, "score {}", found[0].score);
}

/// The faces the check embeds (here every face: `--face-check-below-score 1`) carry no
/// embedding unless the request asks for embeddings.
#[tokio::test]
async fn checked_faces_carry_embeddings_only_when_asked() {
    let server = TestServer::start_keyed_with(|c| c.face_check_below_score = 1.0).await;
    let mut faces = server.faces_as(ADMIN_A).await;
    let mut run = async |embeddings: bool| {
        let request = DetectFacesRequest {
            image: crate::common::fixture_bytes("players.jpg").into(),
            include_embeddings: embeddings,
            include_thumbnails: false,
        };
        faces.detect_faces(request).await.expect("DetectFaces").into_inner().faces
    };
    let without = run(false).await;
    assert!(without.len() >= 15, "the checked faces of the team: {}", without.len());
    assert!(without.iter().all(|f| f.embedding.is_empty()), "no embedding was asked for");
    let with = run(true).await;
    assert_eq!(with.len(), without.len());
    for face in &with {
        assert_eq!(face.embedding.len(), 512);
        let norm: f32 = face.embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "normalised: {norm}");
    }
}

/// A main face that fails the check is refused at enrollment for what it is, not dropped to
/// leave a smaller passer-by for DOMINANT to enroll. Made to happen with a check raised to
/// every face and a norm of 21: yaoming.jpg, twice the size and blurred (sigma 8), reads about
/// 20; a sharp 140 px face beside it about 22.8.
#[tokio::test]
async fn a_main_face_failing_the_check_is_refused_not_replaced() {
    use facevault::grpc::pb::enrollment::MultipleFacesPolicy;
    use image::imageops;

    let server = TestServer::start_keyed_with(|c| {
        c.face_check_below_score = 1.0;
        c.min_face_norm = 21.0;
    })
    .await;
    let yao = crate::common::fixture_rgb("yaoming.jpg");
    let big = imageops::blur(&imageops::resize(&yao, 466, 574, imageops::FilterType::Triangle), 8.0);
    let small =
        imageops::resize(&crate::common::fixture_rgb("Tom_Hanks_54745.png"), 140, 140, imageops::FilterType::Triangle);
    let mut canvas = image::RgbImage::from_pixel(800, 600, image::Rgb([128, 128, 128]));
    imageops::replace(&mut canvas, &big, 0, 13);
    imageops::replace(&mut canvas, &small, 600, 20);
    let photo = crate::common::png(&canvas);

    let found = detect(&server, photo.clone()).await;
    assert_eq!(
        found.len(),
        1,
        "DetectFaces drops the blurred face: {:?}",
        found.iter().map(|f| f.score).collect::<Vec<_>>()
    );
    assert!(crate::common::bbox(&found[0])[0] > 550.0, "the sharp face is left");

    let mut users = server.users_as(ADMIN_A).await;
    crate::users::create(&mut users, "blurred").await;
    let mut faces = server.faces_as(ADMIN_A).await;
    let upload = UploadFaceRequest {
        user: crate::users::by_external("blurred"),
        image: photo.into(),
        multiple_faces_policy: MultipleFacesPolicy::Dominant as i32,
        ..Default::default()
    };
    let err = faces.upload_face(upload).await.expect_err("the blurred main face is refused");
    assert_eq!(reason(&err), "LOW_FACE_QUALITY", "{err:?}");
    assert!(err.message().contains("LOW_CONFIDENCE") || format!("{err:?}").contains("LOW_CONFIDENCE"), "{err:?}");
}
