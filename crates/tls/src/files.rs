//! PEM files into rustls configs, with errors that name the file at fault.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a TLS config could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("the certificate {cert} and the key {key} do not make a usable identity: {problem}")]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        problem: String,
    },
}

/// A server's certificate chain and key, and the CA its clients must chain to, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA bundle. When given, clients must present a certificate chaining to it.
    pub client_ca: Option<PathBuf>,
}

/// What a client trusts, and the identity it presents, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFiles {
    /// PEM CA bundle the server's certificate must chain to.
    pub ca: PathBuf,
    /// PEM certificate chain and key to present (mutual TLS).
    pub identity: Option<(PathBuf, PathBuf)>,
}

pub(crate) fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, TlsError> {
    paths
        .iter()
        .map(|p| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.clone(),
                source,
            })
        })
        .collect()
}

fn invalid(path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "holds no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

fn key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        invalid(
            path,
            format!("holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })
}

fn roots(path: &Path, pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(path, pem)? {
        store
            .add(cert)
            .map_err(|e| invalid(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerFiles {
    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.cert.clone(), self.key.clone()];
        paths.extend(self.client_ca.clone());
        paths
    }

    /// Builds the config from the files' contents, in [`Self::paths`] order.
    pub(crate) fn build(
        &self,
        contents: &[Vec<u8>],
        alpn: Vec<Vec<u8>>,
    ) -> Result<ServerConfig, TlsError> {
        let chain = certs(&self.cert, &contents[0])?;
        let key = key(&self.key, &contents[1])?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    roots(ca, &contents[2])?,
                    provider(),
                )
                .build()
                .map_err(|e| invalid(ca, format!("cannot verify clients with it: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Identity {
                cert: self.cert.clone(),
                key: self.key.clone(),
                problem: e.to_string(),
            })?;
        config.alpn_protocols = alpn;
        Ok(config)
    }
}

impl ClientFiles {
    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.ca.clone()];
        if let Some((cert, key)) = &self.identity {
            paths.push(cert.clone());
            paths.push(key.clone());
        }
        paths
    }

    /// Builds the config from the files' contents, in [`Self::paths`] order.
    pub(crate) fn build(
        &self,
        contents: &[Vec<u8>],
        alpn: Vec<Vec<u8>>,
    ) -> Result<ClientConfig, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots(&self.ca, &contents[0])?);
        let mut config = match &self.identity {
            Some((cert, key_path)) => {
                let chain = certs(cert, &contents[1])?;
                let key = key(key_path, &contents[2])?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::Identity {
                        cert: cert.clone(),
                        key: key_path.clone(),
                        problem: e.to_string(),
                    })?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn;
        Ok(config)
    }
}
