//! The cluster port's mutual TLS settings: [`ClusterTlsFiles`] (this node's
//! certificate and key, the cluster CA), given all three or none, each file
//! checked to be readable PEM of the right kind at start.

use std::path::{Path, PathBuf};

use crate::error::ConfigError;

/// The PEM files of the cluster's mutual TLS: this node's certificate (used
/// as server and as client) and key, and the CA every peer's must chain to.
/// Read at start and again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// All three TLS files or none; each must be a readable PEM file holding
/// what its key says.
pub(crate) fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<Option<ClusterTlsFiles>, ConfigError> {
    let (cert, key, ca) = match (cert, key, ca) {
        (None, None, None) => return Ok(None),
        (Some(cert), Some(key), Some(ca)) => (cert, key, ca),
        (cert, key, _) => {
            let missing = if cert.is_none() {
                "cluster.tls_cert"
            } else if key.is_none() {
                "cluster.tls_key"
            } else {
                "cluster.tls_ca"
            };
            return Err(ConfigError::invalid(
                missing,
                "cluster.tls_cert, cluster.tls_key and cluster.tls_ca go together",
            ));
        }
    };
    pem_file("cluster.tls_cert", &cert, &["CERTIFICATE"])?;
    pem_file("cluster.tls_key", &key, &["PRIVATE KEY"])?;
    pem_file("cluster.tls_ca", &ca, &["CERTIFICATE"])?;
    Ok(Some(ClusterTlsFiles { cert, key, ca }))
}

/// `path` is readable and holds a PEM block whose label ends with one of
/// `labels` (`PRIVATE KEY` also matches `RSA PRIVATE KEY`, `EC PRIVATE KEY`).
fn pem_file(key: &'static str, path: &Path, labels: &[&str]) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", path.display())))?;
    let found = text.lines().any(|l| {
        l.strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
            .is_some_and(|label| labels.iter().any(|w| label.ends_with(w)))
    });
    if !found {
        return Err(ConfigError::invalid(
            key,
            format!("{}: no PEM {} in it", path.display(), labels.join(" or ")),
        ));
    }
    Ok(())
}
