//! [`ClusterTls`]: the mutual TLS of the cluster port. One set of PEM files
//! (this node's certificate and key, the cluster CA) gives both the server
//! configuration of the cluster listener (a client certificate chaining to
//! the CA is mandatory) and the client configuration of [`ClusterClient`]
//! (the peer's certificate must chain to the CA and name the address
//! called, an IP SAN).
//!
//! Both configurations read the files' current contents through one
//! [`ArcSwap`]: [`ClusterTls::reload`] (on SIGHUP) swaps in what the files
//! hold now, and every handshake from then on uses it; established
//! connections keep the certificates they were made with.
//!
//! [`ClusterClient`]: super::client::ClusterClient

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use llmtrace_cluster_config::ClusterTlsFiles;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{
    ring as provider, verify_tls12_signature, verify_tls13_signature, CryptoProvider,
    WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// What the files held when last read.
struct Loaded {
    key: Arc<CertifiedKey>,
    clients: Arc<dyn ClientCertVerifier>,
    servers: Arc<WebPkiServerVerifier>,
}

/// The cluster's TLS material, reloadable.
pub struct ClusterTls {
    files: ClusterTlsFiles,
    current: ArcSwap<Loaded>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterTls")
            .field("files", &self.files)
            .finish()
    }
}

fn read(key: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("{key} {}: {e}", path.display()))
}

fn certs(key: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read(key, path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{key} {}: no PEM certificate in it", path.display());
    }
    Ok(certs)
}

fn load(files: &ClusterTlsFiles, provider: &Arc<CryptoProvider>) -> anyhow::Result<Loaded> {
    let chain = certs("cluster.tls_cert", &files.cert)?;
    let pem = read("cluster.tls_key", &files.key)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| anyhow::anyhow!("cluster.tls_key {}: {e}", files.key.display()))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "cluster.tls_key {}: no PEM private key in it",
                files.key.display()
            )
        })?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        anyhow::anyhow!(
            "cluster.tls_key {} does not fit cluster.tls_cert {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certs("cluster.tls_ca", &files.ca)? {
        roots
            .add(ca)
            .map_err(|e| anyhow::anyhow!("cluster.tls_ca {}: {e}", files.ca.display()))?;
    }
    let roots = Arc::new(roots);
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| anyhow::anyhow!("cluster.tls_ca {}: {e}", files.ca.display()))?;
    let servers = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| anyhow::anyhow!("cluster.tls_ca {}: {e}", files.ca.display()))?;
    Ok(Loaded {
        key: Arc::new(key),
        clients,
        servers,
    })
}

impl ClusterTls {
    /// Reads the files; the error names the key of the file at fault.
    pub fn load(files: ClusterTlsFiles) -> anyhow::Result<Arc<Self>> {
        let provider = Arc::new(provider::default_provider());
        let loaded = load(&files, &provider)?;
        Ok(Arc::new(ClusterTls {
            files,
            current: ArcSwap::from_pointee(loaded),
            provider,
        }))
    }

    /// Reads the files again; on error the previous material stays in use.
    pub fn reload(&self) -> anyhow::Result<()> {
        self.current
            .store(Arc::new(load(&self.files, &self.provider)?));
        Ok(())
    }

    /// The cluster listener's configuration (HTTP/1.1).
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(Current(self.clone())))
            .with_cert_resolver(Arc::new(Current(self.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The node-to-node client's configuration (HTTP/1.1).
    pub fn client_config(self: &Arc<Self>) -> anyhow::Result<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Current(self.clone())))
            .with_client_cert_resolver(Arc::new(Current(self.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Resolves and verifies with whatever [`ClusterTls`] holds at the time of
/// the handshake.
#[derive(Debug)]
struct Current(Arc<ClusterTls>);

impl Current {
    fn now(&self) -> arc_swap::Guard<Arc<Loaded>> {
        self.0.current.load()
    }

    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.0.provider.signature_verification_algorithms
    }

    /// A handshake signature by `cert` (the same check for both sides;
    /// the certificate itself was verified against the CA before).
    fn signature(
        &self,
        tls13: bool,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if tls13 {
            verify_tls13_signature(message, cert, dss, self.algorithms())
        } else {
            verify_tls12_signature(message, cert, dss, self.algorithms())
        }
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.now().key.clone())
    }
}

impl ResolvesClientCert for Current {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.now().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for Current {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would borrow from material a reload may drop; peers
        // have one certificate to offer anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.now()
            .clients
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(false, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(true, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

impl ServerCertVerifier for Current {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.now().servers.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(false, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(true, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}
