//! The README's grpcurl cookbook, run as written (address swapped for the test server's)
//! against a real server with the development keys file, using the real grpcurl binary.

use std::process::Command;

use crate::common::{TestServer, root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_cookbook_works_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let start = readme.find("<!-- cookbook:begin -->").expect("cookbook start marker");
    let end = readme.find("<!-- cookbook:end -->").expect("cookbook end marker");
    let block = &readme[start..end];
    let script: String =
        block.lines().filter(|l| !l.starts_with("```") && !l.starts_with("<!--")).map(|l| format!("{l}\n")).collect();
    assert!(script.contains("127.0.0.1:50051"));

    let server = TestServer::start_with(|c| {
        c.keys_file = Some(root().join("config/dev-keys.json"));
        c.insecure_dev_mode = false;
    })
    .await;
    let script = script.replace("127.0.0.1:50051", &server.addr.to_string());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash").arg("-c").arg(script).current_dir(root()).output().expect("bash runs")
    })
    .await
    .expect("join");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    for expected in [
        "facevault.v1.FaceService",
        "rpc UploadFace ( .facevault.v1.UploadFaceRequest ) returns ( .facevault.v1.UploadFaceResponse )",
        "\"status\": \"SERVING\"",
        "\"externalId\": \"alice-001\"",
        "\"faceId\": \"fce_",
        "\"comment\": \"passport photo\"",
        "\"decision\": \"MATCH\"",
        "\"match\": true",
        "\"phone\": \"+4915112345678\"",
        "\"imageWidth\": 1280",
        "Code: InvalidArgument",
        "Message: email is not a valid e-mail address",
        "\"reason\":\"EMAIL_INVALID\"",
        "\"field\":\"user.email\"",
        "\"itemId\": \"row-1\"",
        "\"listId\": \"lst_",
        "\"comment\": \"chargeback 2026-11\"",
        "Code: FailedPrecondition",
        "\"reason\":\"FACE_IN_BLOCKLIST\"",
        "\"results\": [",
    ] {
        assert!(text.contains(expected), "cookbook output lacks {expected:?}:\n{text}");
    }
    // The retried CreateUser answered twice, the same user.
    assert_eq!(text.matches("\"externalId\": \"carol-001\"").count(), 2, "{text}");
    // The blocklist's entry names the user imported with that photo.
    let added = text.find("\"comment\": \"chargeback 2026-11\"").expect("the entry");
    assert!(text[added..].contains("\"externalId\": \"dave-001\""), "{text}");
    // Only the blocked upload and the error example fail.
    assert_eq!(text.matches("ERROR:").count(), 2, "{text}");
    assert!(!text.contains("Error invoking method"), "{text}");
}
