//! Integration tests: the real server over gRPC, with the real models and photos.

mod abuse;
mod bounds;
mod common;
mod cookbook;
mod crash;
mod detect;
mod edges;
mod encryption;
mod enroll;
mod errors;
mod flood;
mod grpcurl;
mod health_reflection;
mod hostile;
mod identify;
mod limits;
mod logs;
mod metrics;
mod parity;
mod security;
mod tls;
mod tokens;
mod users;
mod verify_cli;
