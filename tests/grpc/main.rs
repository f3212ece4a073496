//! Integration tests: the real server over gRPC, with the real models and photos.

mod common;
mod cookbook;
mod detect;
mod enroll;
mod errors;
mod grpcurl;
mod health_reflection;
mod identify;
mod metrics;
mod parity;
mod users;
