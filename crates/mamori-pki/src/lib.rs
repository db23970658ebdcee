//! Mamori's trust material.
//!
//! * The server's own certificate authority ([`Ca`]): created on first start, it signs the
//!   server's TLS certificate and every agent's client certificate. Agents pin it by the
//!   SHA-256 [`fingerprint`] of its DER encoding, given to them with their enrollment token.
//! * Agent identities: an agent makes its own key pair and a certificate signing request
//!   ([`agent_key_and_csr`]); the server signs the request's public key with an identity it
//!   chooses itself (the agent id as common name, the tenant as organisational unit), never
//!   the names the request asks for ([`Ca::sign_agent`]).
//! * Secrets (admin API tokens, enrollment tokens): random, shown once, stored only as
//!   SHA-256 hashes and compared in constant time ([`Secret`]).
//!
//! * Command signatures: the server signs every response command with the CA key
//!   ([`Ca::sign`]); an agent checks it against the CA it pinned ([`verify`]), so a command
//!   cannot be forged or altered by anything between them.
//!
//! Keys are ECDSA P-256 (rcgen with *ring*).

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use sha2::{Digest, Sha256};

/// Why trust material could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Generating, parsing or signing failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// The input is not what it claims to be.
    #[error("{0}")]
    Invalid(String),
}

/// `sha256:` followed by the lowercase hex SHA-256 of `der`.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(der)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks that `signature` is the CA's signature of `message` ([`Ca::sign`]), with the CA
/// certificate the caller trusts.
pub fn verify(ca_pem: &str, message: &[u8], signature: &[u8]) -> Result<(), PkiError> {
    let der = pem_to_der(ca_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::Invalid(format!("CA certificate: {e}")))?;
    let key = cert.public_key().subject_public_key.data.as_ref();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
        .verify(message, signature)
        .map_err(|_| PkiError::Invalid("bad signature".into()))
}

/// A DER certificate as PEM text.
pub fn der_to_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// The DER bytes of the first certificate in a PEM text.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let p = pem::parse(pem).map_err(|e| PkiError::Invalid(format!("not PEM: {e}")))?;
    if p.tag() != "CERTIFICATE" {
        return Err(PkiError::Invalid(format!(
            "expected a CERTIFICATE, found {}",
            p.tag()
        )));
    }
    Ok(p.into_contents())
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that disagree.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    SerialNumber::from_slice(&b)
}

/// The server's certificate authority.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    signer: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

impl Ca {
    /// Makes a new CA, valid for ten years.
    pub fn generate(name: &str) -> Result<Ca, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Mamori");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        validity(&mut params, 3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ca::load(&cert.pem(), &key.serialize_pem())
    }

    /// Loads a CA from its certificate and key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let der = pem_to_der(cert_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            der,
            issuer,
            signer: KeyPair::from_pem(key_pem)?,
        })
    }

    /// The CA certificate (what agents and API clients trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (to be stored with mode 0600, never logged).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The pin agents are given: the SHA-256 of the CA certificate.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.der)
    }

    /// An ECDSA P-256 / SHA-256 signature (ASN.1 DER) of `message` with the CA key.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        use rcgen::SigningKey;
        Ok(self.signer.sign(message)?)
    }

    /// A server certificate for these DNS names and IP addresses, valid for a year.
    pub fn issue_server(&self, names: &[String]) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "mamori-server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        validity(&mut params, 365);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs an agent's certificate request: the public key is the agent's, the identity is
    /// the server's choice (`agent_id` as common name, `tenant` as organisational unit),
    /// valid for `days`. Returns the certificate PEM and its serial (hex).
    pub fn sign_agent(
        &self,
        csr_pem: &str,
        agent_id: &str,
        tenant: &str,
        days: i64,
    ) -> Result<(String, String), PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, agent_id);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, tenant);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let serial = random_serial();
        let serial_hex = hex(&serial.to_bytes());
        params.serial_number = Some(serial);
        validity(&mut params, days);
        csr.params = params;
        let cert = csr.signed_by(&self.issuer)?;
        Ok((cert.pem(), serial_hex))
    }
}

/// An agent's new key pair and a certificate request for it.
pub fn agent_key_and_csr(hostname: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, hostname);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// A secret shown once and stored as a hash.
#[derive(Debug, Clone, Copy)]
pub struct Secret;

impl Secret {
    /// A new random secret with a readable prefix (`mamori_admin_…`, `mamori_enroll_…`) and
    /// its stored form.
    pub fn generate(prefix: &str) -> (String, String) {
        let bytes: [u8; 32] = rand::random();
        let token = format!("{prefix}_{}", hex(&bytes));
        let hash = Secret::hash(&token);
        (token, hash)
    }

    /// The stored form of a secret.
    pub fn hash(token: &str) -> String {
        format!("sha256:{}", hex(&Sha256::digest(token.as_bytes())))
    }

    /// Whether `token` is the secret whose stored form is `hash` (constant time in the
    /// hash's length).
    pub fn verify(token: &str, hash: &str) -> bool {
        let h = Secret::hash(token);
        h.len() == hash.len()
            && h.bytes()
                .zip(hash.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_verify_only_with_the_signing_ca_and_unaltered() {
        let ca = Ca::generate("test").unwrap();
        let other = Ca::generate("other").unwrap();
        let msg = br#"{"action":"isolate"}"#;
        let sig = ca.sign(msg).unwrap();
        verify(ca.cert_pem(), msg, &sig).unwrap();
        assert!(verify(other.cert_pem(), msg, &sig).is_err(), "another CA");
        assert!(
            verify(ca.cert_pem(), br#"{"action":"release"}"#, &sig).is_err(),
            "altered"
        );
        let mut bad = sig.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(
            verify(ca.cert_pem(), msg, &bad).is_err(),
            "altered signature"
        );
        assert!(verify(ca.cert_pem(), msg, &[]).is_err());
        assert!(verify("not pem", msg, &sig).is_err());
    }

    #[test]
    fn ca_signs_agents_with_the_servers_choice_of_identity() {
        let ca = Ca::generate("test CA").unwrap();
        assert!(ca.fingerprint().starts_with("sha256:"));
        assert_eq!(ca.fingerprint().len(), 7 + 64);
        let again = Ca::load(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        let (_key, csr) = agent_key_and_csr("evil-name-asked-for").unwrap();
        let (cert, serial) = ca.sign_agent(&csr, "agent-123", "acme", 30).unwrap();
        assert_eq!(serial.len(), 32);
        let der = pem_to_der(&cert).unwrap();
        assert_eq!(pem_to_der(&der_to_pem(&der)).unwrap(), der);
        // The subject is the agent id; the name the request asked for is not there.
        let text = String::from_utf8_lossy(&der);
        assert!(text.contains("agent-123"));
        assert!(text.contains("acme"));
        assert!(!text.contains("evil-name-asked-for"));
        assert!(ca.sign_agent("not a csr", "a", "t", 1).is_err());
        let server = ca
            .issue_server(&["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        assert!(server.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(
            !format!("{server:?}").contains("PRIVATE"),
            "keys never in Debug"
        );
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn secrets_are_stored_as_hashes() {
        let (token, hash) = Secret::generate("mamori_enroll");
        assert!(token.starts_with("mamori_enroll_"));
        assert!(!hash.contains(&token));
        assert!(Secret::verify(&token, &hash));
        assert!(!Secret::verify(&format!("{token}x"), &hash));
        assert!(!Secret::verify("", &hash));
        let (other, _) = Secret::generate("mamori_enroll");
        assert_ne!(token, other);
    }
}
