//! Integration tests: the real server over gRPC, with the real models and photos.

mod common;
mod detect;
mod errors;
mod grpcurl;
mod health_reflection;
mod parity;
