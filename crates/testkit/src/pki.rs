//! A throwaway certificate authority for tests: a CA and the certificates it issues, as PEM
//! files in a directory, the way a Kubernetes Secret would mount them.

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::path::{Path, PathBuf};

/// PEM files of one issued certificate.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority whose files live in `dir`.
pub struct Pki {
    dir: PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
}

impl Pki {
    /// Creates a CA named `name` and writes `<dir>/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).expect("pki dir");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, cert.pem()).expect("write CA");
        Pki {
            dir: dir.to_path_buf(),
            ca_cert: cert,
            ca_key: key,
            ca,
        }
    }

    /// Issues a certificate for `names` (DNS names or IP addresses), usable by servers and
    /// clients both, as `<dir>/<file>.pem` and `<dir>/<file>-key.pem`.
    pub fn issue(&self, file: &str, names: &[&str]) -> CertFiles {
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        };
        self.issue_into(&files, names);
        files
    }

    /// Issues a new certificate for `names` over existing files (a rotation), writing each file
    /// whole through a rename so a reader never sees half of one.
    pub fn issue_into(&self, files: &CertFiles, names: &[&str]) {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("certificate params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("sign");
        write_atomically(&files.key, &key.serialize_pem());
        write_atomically(&files.cert, &cert.pem());
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write PEM");
    std::fs::rename(&tmp, path).expect("rename PEM");
}
