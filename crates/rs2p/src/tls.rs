//! TLS on every connection: py2p's "SSL" mode, with rustls.
//!
//! Compatible default (what py2p does): each node has a fresh self-signed
//! certificate and nobody verifies anybody: TLS then protects against
//! passive eavesdropping only. Beyond py2p, peers can be verified against a
//! CA or pinned certificate fingerprints ([`TlsConfig::verify_ca`],
//! [`TlsConfig::pin`]); nodes then also present their certificate as
//! clients and check each other both ways.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

use rs2p_proto::mesh::TlsFailure;

use crate::Error;

/// How peers' certificates are checked.
#[derive(Clone, Debug, Default)]
pub enum Verify {
    /// Not at all (py2p's behaviour, the compatible default).
    #[default]
    None,
    /// Against these root certificates (the peer's certificate must also
    /// name the address we dial).
    Ca(Vec<CertificateDer<'static>>),
    /// The peer's certificate must have one of these sha256 fingerprints
    /// (see [`crate::MeshSocket::tls_fingerprint`]).
    Pinned(Vec<[u8; 32]>),
}

/// TLS settings of a node.
#[derive(Clone, Default)]
pub struct TlsConfig {
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    verify: Verify,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("identity", &self.identity.as_ref().map(|(c, _)| c.len()))
            .field("verify", &self.verify)
            .finish()
    }
}

impl TlsConfig {
    /// A fresh self-signed certificate, no verification (py2p's SSL mode).
    pub fn new() -> Self {
        TlsConfig::default()
    }

    /// Uses this certificate chain and private key instead of a fresh
    /// self-signed certificate.
    pub fn identity(mut self, chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        self.identity = Some((chain, Arc::new(key)));
        self
    }

    /// Verifies peers against these root certificates.
    pub fn verify_ca(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.verify = Verify::Ca(roots);
        self
    }

    /// Accepts only peers whose certificate has one of these sha256
    /// fingerprints.
    pub fn pin(mut self, fingerprints: Vec<[u8; 32]>) -> Self {
        self.verify = Verify::Pinned(fingerprints);
        self
    }
}

/// The built TLS machinery of a running node.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) fingerprint: [u8; 32],
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// The sha256 fingerprint of a DER certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(cert.as_ref()).into()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    pub(crate) fn build(cfg: &TlsConfig) -> Result<Tls, Error> {
        let tls_err = |e: &dyn fmt::Display| Error::Config(format!("TLS: {e}"));
        let (chain, key) = match &cfg.identity {
            Some((c, k)) => (c.clone(), k.clone_key()),
            None => {
                let ck = rcgen::generate_simple_self_signed(vec!["rs2p".to_string()]).map_err(|e| tls_err(&e))?;
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
                (vec![ck.cert.der().clone()], key)
            }
        };
        let leaf = chain.first().ok_or_else(|| Error::Config("TLS: empty certificate chain".into()))?;
        let fp = fingerprint(leaf);
        let provider = provider();
        let algs = provider.signature_verification_algorithms;

        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(&e))?;
        let server = match &cfg.verify {
            Verify::None => server.with_no_client_auth(),
            Verify::Ca(roots) => {
                let mut store = rustls::RootCertStore::empty();
                for r in roots {
                    store.add(r.clone()).map_err(|e| tls_err(&e))?;
                }
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()
                    .map_err(|e| tls_err(&e))?;
                server.with_client_cert_verifier(v)
            }
            Verify::Pinned(pins) => server.with_client_cert_verifier(Arc::new(Pinned { pins: pins.clone(), algs })),
        }
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| tls_err(&e))?;

        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(&e))?;
        let client = match &cfg.verify {
            Verify::None => {
                client.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify { algs })).with_no_client_auth()
            }
            Verify::Ca(roots) => {
                let mut store = rustls::RootCertStore::empty();
                for r in roots {
                    store.add(r.clone()).map_err(|e| tls_err(&e))?;
                }
                client.with_root_certificates(store).with_client_auth_cert(chain, key).map_err(|e| tls_err(&e))?
            }
            Verify::Pinned(pins) => client
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { pins: pins.clone(), algs }))
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_err(&e))?,
        };
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            fingerprint: fp,
        })
    }

    /// The name to present when dialing `host`.
    pub(crate) fn server_name(host: &str) -> ServerName<'static> {
        ServerName::try_from(host.to_string())
            .unwrap_or_else(|_| ServerName::try_from("rs2p".to_string()).expect("valid DNS name"))
    }
}

/// Explains a TLS handshake failure, naming the likely cause.
pub(crate) fn explain(e: &std::io::Error) -> TlsFailure {
    let text = e.to_string();
    if text.contains("InvalidContentType")
        || text.contains("corrupt message")
        || text.contains("HandshakePayloadTooLarge")
    {
        TlsFailure::NotTls
    } else {
        TlsFailure::Rejected(text)
    }
}

/// Accepts any certificate (py2p never verifies), but still checks that the
/// handshake is signed by the key the certificate names.
#[derive(Debug)]
struct NoVerify {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Accepts exactly the pinned certificates, both as client and as server.
#[derive(Debug)]
struct Pinned {
    pins: Vec<[u8; 32]>,
    algs: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if self.pins.contains(&fingerprint(cert)) {
            Ok(())
        } else {
            Err(rustls::Error::General("peer certificate is not pinned".into()))
        }
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
