//! Certificates for the cluster's mutual TLS, made at run time with rcgen
//! (no network, no openssl): a CA and a node certificate it signs, for
//! 127.0.0.1, usable as server and as client. [`ClusterCerts::flags`] are
//! the node flags that turn mutual TLS on.

use crate::TempDir;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::PathBuf;

/// A CA with its key, able to sign node certificates.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        TestCa { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for 127.0.0.1 (IP SAN), server and client use.
    pub fn node_cert(&self, name: &str) -> Issued {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("node params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("node key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("node certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }
}

/// A certificate and its key (PKCS#8), PEM and DER.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

/// A CA and one node certificate it signed, written to files.
pub struct ClusterCerts {
    pub ca: TestCa,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_file: PathBuf,
    dir: TempDir,
}

impl ClusterCerts {
    pub fn new() -> ClusterCerts {
        let dir = TempDir::new("certs");
        let ca = TestCa::new("llmtrace test cluster CA");
        let node = ca.node_cert("node");
        ClusterCerts {
            cert: dir.write("node.pem", &node.cert_pem),
            key: dir.write("node-key.pem", &node.key_pem),
            ca_file: dir.write("ca.pem", &ca.pem()),
            ca,
            dir,
        }
    }

    /// Writes `text` to `name` in the same directory.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        self.dir.write(name, text)
    }

    /// `--cluster-tls-cert`, `--cluster-tls-key`, `--cluster-tls-ca` with
    /// these files.
    pub fn flags(&self) -> [(&'static str, String); 3] {
        [
            ("cluster-tls-cert", self.cert.display().to_string()),
            ("cluster-tls-key", self.key.display().to_string()),
            ("cluster-tls-ca", self.ca_file.display().to_string()),
        ]
    }
}

impl Default for ClusterCerts {
    fn default() -> Self {
        Self::new()
    }
}
