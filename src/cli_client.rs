//! What the operator commands (`facevault admin`, `facevault import`) share: the connection to
//! a server (plain or TLS with the operator's CA) and the API key sent with every call.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Sends the API key with every call.
#[derive(Clone)]
pub struct ApiKey(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl tonic::service::Interceptor for ApiKey {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(key) = &self.0 {
            request.metadata_mut().insert("x-api-key", key.clone());
        }
        Ok(request)
    }
}

/// A channel with the API key attached.
pub type Authed = InterceptedService<Channel, ApiKey>;

/// Connects to `server` (https: trusting `ca_cert` when given) with `api_key` on every call.
pub async fn connect(
    server: &str,
    api_key: Option<&str>,
    ca_cert: Option<&std::path::Path>,
) -> Result<(Channel, ApiKey), String> {
    let mut endpoint = Endpoint::from_shared(server.to_owned()).map_err(|e| format!("--server: {e}"))?;
    if let Some(ca) = ca_cert {
        let pem = std::fs::read(ca).map_err(|e| format!("--ca-cert {}: {e}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .map_err(|e| format!("TLS: {e}"))?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("cannot reach {server}: {e}"))?;
    let key = match api_key {
        Some(key) => Some(MetadataValue::try_from(key).map_err(|_| "--api-key is not ASCII".to_owned())?),
        None => None,
    };
    Ok((channel, ApiKey(key)))
}

/// The ErrorInfo reason of a status ("" without one).
pub fn reason_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_error_details().error_info().map(|info| info.reason.clone()).unwrap_or_default()
}

/// `h:mm:ss` of a number of seconds.
pub fn clock(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}
