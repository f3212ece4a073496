//! Generates the facevault.v1 gRPC code and its descriptor set (for reflection) into OUT_DIR.
//! Uses the vendored protoc unless PROTOC names another one. Never writes into src/.

use std::path::PathBuf;

/// facevault.v1 messages whose Debug src/grpc/redact.rs writes by hand.
const REDACTED: [&str; 12] = [
    "DetectFacesRequest",
    "UploadFaceRequest",
    "UpdateFaceRequest",
    "SearchFacesRequest",
    "VerifyFaceRequest",
    "UpdateUserResponse",
    "FaceImage",
    "UploadFaceResponse",
    "UpdateFaceResponse",
    "DetectedFace",
    "ImportItem",
    "AddListEntryRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/facevault/v1/types.proto",
        "proto/facevault/v1/user_service.proto",
        "proto/facevault/v1/face_service.proto",
        "proto/facevault/v1/admin_service.proto",
        "proto/facevault/v1/list_service.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-changed=proto/google/rpc/status.proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Image fields are `bytes::Bytes`: the enrollment flow keeps the original without copying.
    // Messages with images, embeddings or tokens get a hand-written Debug (src/grpc/redact.rs)
    // that prints lengths, so a `{:?}` in a log or a panic never carries them.
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("facevault_descriptor.bin"))
        .bytes(".facevault.v1")
        // Maps encode in key order: a request's fingerprint (app/requests.rs) is its encoding.
        .btree_map(".facevault.v1")
        .extern_path(".google.rpc", "::tonic_types::pb")
        .skip_debug(REDACTED.map(|m| format!(".facevault.v1.{m}")))
        .compile_protos(&protos.map(PathBuf::from), &[PathBuf::from("proto"), include.clone()])?;
    let records = "proto/facevault/storage/v1/records.proto";
    println!("cargo:rerun-if-changed={records}");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_protos(&[PathBuf::from(records)], &[PathBuf::from("proto"), include])?;
    Ok(())
}
