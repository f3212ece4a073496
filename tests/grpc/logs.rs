//! No personal or biometric data in logs: the server binary runs a whole scenario at debug
//! level with JSON logs — users with personal fields, uploads, duplicates, search, verify,
//! image reads, a re-enrollment token, wrong keys, bad images, a graceful stop — and then its
//! log is scanned for every secret, personal field, token, embedding value and image byte
//! sequence the scenario used.

use facevault::grpc::pb::{
    CreateUserRequest, DetectFacesRequest, GetFaceImageRequest, ImageKind, SearchFacesRequest, UpdateFaceRequest,
    UpdateUserRequest, UploadFaceRequest, User, VerifyFaceRequest,
};

use crate::common::{ADMIN_A, ChildServer, KEYS, faces_client, people, users_client};
use crate::users::{by_external, by_id, mask};

/// A few distinctive fragments of a byte string, as they could appear in a log: hex and
/// base64 of 12-byte windows, and the Debug form of a 6-byte window.
fn fragments(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for start in [bytes.len() / 3, bytes.len() / 2, 2 * bytes.len() / 3] {
        let window = &bytes[start..(start + 12).min(bytes.len())];
        out.push(window.iter().map(|b| format!("{b:02x}")).collect());
        out.push(base64(window));
        out.push(format!("{:?}", &window[..6]).trim_matches(['[', ']']).to_owned());
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    bytes
        .chunks(3)
        .flat_map(|c| {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            (0..=c.len()).map(move |i| ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char)
        })
        .collect()
}

#[tokio::test]
async fn logs_hold_no_keys_tokens_personal_fields_embeddings_or_image_bytes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ChildServer::spawn_with_env(dir.path(), &[], &[("RUST_LOG", "debug,ort=warn")]).await;
    let channel = server.channel().await;
    let mut users = users_client(channel.clone(), ADMIN_A);
    let mut faces = faces_client(channel.clone(), ADMIN_A, None);
    let personal = [
        "Zebulon Quixote-Marchetti",
        "zebulon.qm@example.org",
        "+4915112345678",
        "17 Rue des Exemples, Lyon",
        "ext-zq-7731",
        "meta-value-5521",
    ];
    let person = User {
        external_id: personal[4].into(),
        display_name: personal[0].into(),
        email: personal[1].into(),
        phone: personal[2].into(),
        address: personal[3].into(),
        metadata: [("crm".to_owned(), personal[5].to_owned())].into(),
        ..User::default()
    };
    let created = users
        .create_user(CreateUserRequest { user: Some(person), ..Default::default() })
        .await
        .expect("create")
        .into_inner();
    let photo = people()[0].clone();
    let other = people()[1].clone();
    let upload = |image: Vec<u8>| UploadFaceRequest {
        user: by_external(personal[4]),
        image: image.into(),
        ..Default::default()
    };
    let face = faces.upload_face(upload(photo.clone())).await.expect("upload").into_inner().face.expect("face");
    faces.upload_face(upload(photo.clone())).await.expect("a second face of the same person");
    let detected = faces
        .detect_faces(DetectFacesRequest {
            image: photo.clone().into(),
            include_embeddings: true,
            include_thumbnails: true,
        })
        .await
        .expect("detect")
        .into_inner();
    let embedding = detected.faces[0].embedding.clone();
    let search = SearchFacesRequest { image: photo.clone().into(), ..Default::default() };
    assert!(!faces.search_faces(search).await.expect("search").into_inner().matches.is_empty());
    let verify = VerifyFaceRequest { user: by_id(&created.user_id), image: other.clone().into() };
    faces.verify_face(verify).await.expect("verify");
    let original = faces
        .get_face_image(GetFaceImageRequest { face_id: face.face_id.clone(), kind: ImageKind::Original as i32 })
        .await
        .expect("image")
        .into_inner();
    let thumbnail = faces
        .get_face_image(GetFaceImageRequest { face_id: face.face_id.clone(), kind: ImageKind::Thumbnail as i32 })
        .await
        .expect("thumbnail")
        .into_inner();
    let token = users
        .update_user(UpdateUserRequest {
            user: by_id(&created.user_id),
            user_update: Some(User { address: "22 Other Street".into(), ..User::default() }),
            update_mask: mask(&["address"]),
            require_face_reenrollment: true,
            ..Default::default()
        })
        .await
        .expect("require re-enrollment")
        .into_inner()
        .reenrollment_token;
    let mut with_token = faces_client(channel.clone(), None, Some(&token));
    let replace =
        UpdateFaceRequest { user: by_id(&created.user_id), image: photo.clone().into(), ..Default::default() };
    with_token.update_face(replace.clone()).await.expect("token update");
    with_token.update_face(replace).await.expect_err("the token is spent");
    let mut wrong = users_client(channel.clone(), Some("not-a-real-key-4471"));
    wrong.create_user(CreateUserRequest::default()).await.expect_err("bad key");
    let bad_email = User { external_id: "x2".into(), email: "broken-email-9932@".into(), ..User::default() };
    users
        .create_user(CreateUserRequest { user: Some(bad_email), ..Default::default() })
        .await
        .expect_err("invalid email");
    faces.upload_face(upload(b"garbage-bytes-8810".to_vec())).await.expect_err("bad image");
    assert!(server.terminate(std::time::Duration::from_secs(60)).await.success(), "graceful stop");

    let log = std::fs::read_to_string(dir.path().join("server.log")).expect("server log");
    assert!(log.lines().count() >= 5, "the scenario logged: {} lines", log.lines().count());
    assert!(log.contains("\"level\":\"DEBUG\""), "debug level was on");
    let mut needles: Vec<String> = personal.iter().map(|s| (*s).to_owned()).collect();
    needles.extend(
        ["22 Other Street", "broken-email-9932@", "not-a-real-key-4471", "garbage-bytes-8810"].map(String::from),
    );
    needles.extend(KEYS.iter().map(|k| k.3.to_owned()));
    needles.push(token.clone());
    needles.push(token.trim_start_matches("rt_").to_owned());
    // Full-precision values (as Debug or Display would print them): 8 or more characters, so a
    // logged timing cannot match by chance.
    needles.extend(embedding.iter().take(8).map(|value| format!("{value}")));
    for bytes in [&photo[..], &other[..], &original.data[..], &thumbnail.data[..]] {
        needles.extend(fragments(bytes));
    }
    let leaks: Vec<&String> = needles.iter().filter(|n| n.len() >= 8 && log.contains(n.as_str())).collect();
    assert!(leaks.is_empty(), "the log contains {leaks:?}");
    println!("log scan: {} lines, {} needles, no leak", log.lines().count(), needles.len());
}
