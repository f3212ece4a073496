//! TLS on the listener (rustls), with certificates generated here: a CA, a server certificate
//! for localhost, and client certificates for mutual TLS. Calls work over TLS with the CA
//! trusted; a plaintext client, a client trusting another CA, and (with --tls-client-ca) a
//! client without a certificate or with one from another CA are all refused.

use facevault::grpc::pb::{CreateUserRequest, DetectFacesRequest, User};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::common::{ADMIN_A, TestServer, faces_client, fixture_bytes, users_client};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA") }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` signed by this CA: (certificate PEM, key PEM).
    fn issue(&self, names: &[&str]) -> (String, String) {
        let params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &std::path::Path, name: &str, pem: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write PEM");
    path
}

async fn tls_channel(server: &TestServer, ca: &str, identity: Option<(String, String)>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Channel::from_shared(format!("https://localhost:{}", server.addr.port())).expect("url");
    endpoint.tls_config(tls).expect("tls").connect().await.map_err(|e| format!("{e:?}"))
}

/// A CreateUser through `channel`; the error text when it fails.
async fn create_user(channel: Channel, external_id: &str) -> Result<(), String> {
    let user = User { external_id: external_id.into(), ..User::default() };
    users_client(channel, ADMIN_A)
        .create_user(CreateUserRequest { user: Some(user), ..Default::default() })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_listener_speaks_tls_and_refuses_plaintext_and_unknown_cas() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, other) = (Ca::new("facevault test CA"), Ca::new("someone else"));
    let (cert, key) = ca.issue(&["localhost"]);
    let (cert_path, key_path) = (write(dir.path(), "server.pem", &cert), write(dir.path(), "server.key", &key));
    let server = TestServer::start_tls(ca.pem().into_bytes(), None, |config| {
        config.tls_cert = Some(cert_path);
        config.tls_key = Some(key_path);
    })
    .await;

    let channel = server.channel().await;
    create_user(channel.clone(), "over-tls").await.expect("CreateUser over TLS");
    let request = DetectFacesRequest { image: fixture_bytes("yaoming.jpg").into(), ..Default::default() };
    let detected = faces_client(channel, ADMIN_A, None).detect_faces(request).await.expect("DetectFaces over TLS");
    assert_eq!(detected.into_inner().faces.len(), 1);

    let plain = Channel::from_shared(format!("http://{}", server.addr)).expect("url").connect().await;
    let refused = match plain {
        Ok(channel) => create_user(channel, "plain").await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a plaintext client gets nowhere");
    let untrusted = match tls_channel(&server, &other.pem(), None).await {
        Ok(channel) => create_user(channel, "untrusted").await.is_err(),
        Err(_) => true,
    };
    assert!(untrusted, "a client that does not trust the server's CA gets nowhere");
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, other) = (Ca::new("facevault test CA"), Ca::new("someone else"));
    let (cert, key) = ca.issue(&["localhost"]);
    let paths = (
        write(dir.path(), "server.pem", &cert),
        write(dir.path(), "server.key", &key),
        write(dir.path(), "clients.pem", &ca.pem()),
    );
    let server = TestServer::start_tls(ca.pem().into_bytes(), Some(ca.issue(&["health-checker"])), |config| {
        config.tls_cert = Some(paths.0);
        config.tls_key = Some(paths.1);
        config.tls_client_ca = Some(paths.2);
    })
    .await;
    let good = tls_channel(&server, &ca.pem(), Some(ca.issue(&["backend"]))).await.expect("handshake");
    create_user(good, "with-client-cert").await.expect("a client certificate from the client CA is admitted");
    for (what, identity) in [("no certificate", None), ("another CA's certificate", Some(other.issue(&["intruder"])))] {
        let refused = match tls_channel(&server, &ca.pem(), identity).await {
            Ok(channel) => create_user(channel, "intruder").await.is_err(),
            Err(_) => true,
        };
        assert!(refused, "a client with {what} is refused");
    }
}
