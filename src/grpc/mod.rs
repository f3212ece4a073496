//! The gRPC transport: generated code (`pb`), and `router()`, which assembles the facevault
//! services, health, reflection (v1 and v1alpha) and message limits. No domain logic.

mod admin_api;
mod auth;
mod convert;
mod face_api;
mod idempotent;
mod import_api;
mod list_api;
mod redact;
pub mod status;
mod user_api;

use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::app::App;
use crate::config::Config;
use crate::error::Error;

/// The application, once start-up has loaded it. Handlers answer UNAVAILABLE before that, while
/// health already reports NOT_SERVING.
#[derive(Debug, Clone, Default)]
pub struct AppSlot(Arc<OnceLock<App>>);

impl AppSlot {
    /// Installs the loaded application; later calls are ignored.
    pub fn set(&self, app: App) {
        let _ = self.0.set(app);
    }

    /// The application, or UNAVAILABLE while the models are still loading.
    pub fn get(&self) -> Result<&App, Error> {
        self.0.get().ok_or_else(|| Error::Unavailable { message: "the models are still loading".into() })
    }
}

/// Generated protobuf and gRPC code of facevault.v1.
#[allow(clippy::all, clippy::pedantic, unreachable_pub, missing_debug_implementations)]
// Generated code: `#[expect]` would fire "unfulfilled" on lints it happens not to trip.
pub mod pb {
    tonic::include_proto!("facevault.v1");
}

/// Encoded descriptor set of facevault.v1 and its imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("facevault_descriptor");

pub use admin_api::AdminApi;
pub use face_api::FaceApi;
pub use list_api::ListApi;
pub use user_api::UserApi;

/// The facevault services plus health and reflection, with message limits that fit the image
/// limit. Returns the routes and the health reporter (the caller flips it to SERVING).
pub async fn router(app: AppSlot, keys: crate::app::KeyRing, config: &Config) -> (Routes, HealthReporter) {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<pb::face_service_server::FaceServiceServer<FaceApi>>().await;
    health.set_not_serving::<pb::user_service_server::UserServiceServer<UserApi>>().await;
    health.set_not_serving::<pb::list_service_server::ListServiceServer<ListApi>>().await;
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;

    let limit = config.max_message_bytes();
    // Credentials, scopes and per-key limits are checked before a request body is decoded.
    let auth = auth::Auth::new(keys.clone(), app.clone(), std::time::Duration::from_secs(config.request_timeout));
    let face = pb::face_service_server::FaceServiceServer::new(FaceApi::new(app.clone(), keys.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let user =
        pb::user_service_server::UserServiceServer::new(UserApi::new(app.clone())).max_decoding_message_size(limit);
    let lists =
        pb::list_service_server::ListServiceServer::new(ListApi::new(app.clone())).max_decoding_message_size(limit);
    let admin = pb::admin_service_server::AdminServiceServer::new(AdminApi::new(app));
    let lists = auth.wrap(lists);
    let face = auth.wrap(face);
    let user = auth.wrap(user);
    let admin = auth.wrap(admin);

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid; this is a bug");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid; this is a bug");

    let routes = Routes::new(health_service)
        .add_service(face)
        .add_service(user)
        .add_service(lists)
        .add_service(admin)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    (routes, health)
}

/// Runs a handler and records its latency and status code in the metrics, also when the call
/// never finishes: tonic drops the handler when the client cancels or its deadline passes.
async fn observed<T>(
    rpc: &'static str,
    deadline: Option<Instant>,
    handler: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    let mut call = Observation { rpc, started: Instant::now(), deadline, done: false };
    let result = handler.await;
    call.done = true;
    let code = match &result {
        Ok(_) => "OK",
        Err(status) => code_name(status.code()),
    };
    crate::metrics::record_rpc(rpc, code, call.started.elapsed());
    result
}

/// One call in progress; dropped unfinished, it records CANCELLED, or DEADLINE_EXCEEDED when
/// the client's deadline or the server's request timeout has passed.
#[derive(Debug)]
struct Observation {
    rpc: &'static str,
    started: Instant,
    deadline: Option<Instant>,
    done: bool,
}

impl Drop for Observation {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The timers start a moment before the call is stamped: allow for that.
        let expired = self.deadline.is_some_and(|d| Instant::now() + DEADLINE_SLACK >= d);
        let code = if expired { "DEADLINE_EXCEEDED" } else { "CANCELLED" };
        crate::metrics::record_rpc(self.rpc, code, self.started.elapsed());
    }
}

const DEADLINE_SLACK: Duration = Duration::from_millis(2);

/// When a call reached the services, before its message was read (where tonic's
/// `grpc-timeout` timer starts too, give or take microseconds), and when the server's own
/// request timeout (`--request-timeout`) runs out. The auth layer stamps it on every call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrived {
    at: Instant,
    server_deadline: Option<Instant>,
}

impl Arrived {
    /// Now, for a call the server gives at most `timeout`.
    pub(crate) fn now(timeout: Duration) -> Self {
        let at = Instant::now();
        Arrived { at, server_deadline: at.checked_add(timeout) }
    }
}

/// The instant the client's `grpc-timeout` (1-8 digits and a unit: H M S m u n) runs out,
/// counted from the call's arrival (reading a large message can take a while).
fn client_deadline<T>(request: &tonic::Request<T>) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    let arrived = request.extensions().get::<Arrived>().map_or_else(Instant::now, |a| a.at);
    arrived.checked_add(timeout)
}

/// The earlier of the client's deadline and the server's request timeout.
fn call_deadline<T>(request: &tonic::Request<T>) -> Option<Instant> {
    let server = request.extensions().get::<Arrived>().and_then(|a| a.server_deadline);
    match (client_deadline(request), server) {
        (Some(client), Some(server)) => Some(client.min(server)),
        (client, server) => client.or(server),
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Marks every service SERVING (after the models are loaded, verified and warmed up).
pub async fn set_serving(health: &HealthReporter) {
    health.set_serving::<pb::face_service_server::FaceServiceServer<FaceApi>>().await;
    health.set_serving::<pb::user_service_server::UserServiceServer<UserApi>>().await;
    health.set_serving::<pb::list_service_server::ListServiceServer<ListApi>>().await;
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
}

/// Marks every service NOT_SERVING (shutdown has begun).
pub async fn set_not_serving(health: &HealthReporter) {
    health.set_not_serving::<pb::face_service_server::FaceServiceServer<FaceApi>>().await;
    health.set_not_serving::<pb::user_service_server::UserServiceServer<UserApi>>().await;
    health.set_not_serving::<pb::list_service_server::ListServiceServer<ListApi>>().await;
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
}

/// The listener's TLS settings from the config: none without `--tls-cert`; a certificate that
/// cannot be read stops the start with a message naming the file.
pub fn tls_config(config: &Config) -> crate::Result<Option<tonic::transport::ServerTlsConfig>> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else { return Ok(None) };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| Error::Unavailable { message: format!("TLS: reading {}: {e}", path.display()) })
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &config.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    tracing::info!(mutual = config.tls_client_ca.is_some(), "TLS on the gRPC listener");
    Ok(Some(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadline_of(timeout: &str) -> Option<Duration> {
        let mut request = tonic::Request::new(());
        let arrived = Instant::now();
        request.extensions_mut().insert(Arrived { at: arrived, server_deadline: None });
        request.metadata_mut().insert("grpc-timeout", timeout.parse().expect("ascii"));
        client_deadline(&request).map(|d| d - arrived)
    }

    #[test]
    fn grpc_timeout_sets_the_deadline_from_the_arrival() {
        assert_eq!(deadline_of("30m"), Some(Duration::from_millis(30)));
        assert_eq!(deadline_of("2S"), Some(Duration::from_secs(2)));
        assert_eq!(deadline_of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(deadline_of("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "5x", "-5m", "5 m"] {
            assert_eq!(deadline_of(bad), None, "{bad:?}");
        }
        assert_eq!(client_deadline(&tonic::Request::new(())), None);
        // The server's request timeout caps the client's deadline.
        let mut request = tonic::Request::new(());
        let arrived = Arrived::now(Duration::from_secs(5));
        request.extensions_mut().insert(arrived);
        request.metadata_mut().insert("grpc-timeout", "1H".parse().expect("ascii"));
        assert_eq!(call_deadline(&request), arrived.server_deadline);
    }
}
