//! A client of trustee's Key Broker Service protocol (RCAR v0.4.0, REFERENCE.md
//! section 9) for the relay side of provisioning (feature `std`).
//!
//! The messages are `kbs-types`' (Request, Challenge, Attestation); the SNP evidence
//! is the report as the `sev` crate serializes it with serde plus the certificate
//! chain from the report's certificate table, so the KBS need not reach AMD. The
//! client holds no secret: the tee-pubkey is the vault's session key, the resource
//! is a JWE only the vault can open. Every KBS refusal comes back as
//! [`KbsError::Refused`] with its RFC 7807 body; 5xx answers and transport
//! failures are retried, every request has a timeout.

use std::time::Duration;

use kbs_types::{Attestation, Challenge, CompositeEvidence, Request, RuntimeData, Tee, TeePubKey};
use serde_json::{json, Value};
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::{CertTableEntry, CertType};
use sev::parser::ByteParser;

/// The protocol version spoken.
pub const PROTOCOL_VERSION: &str = "0.4.0";

/// Why a KBS exchange failed.
#[derive(Debug)]
pub enum KbsError {
    /// The KBS answered with an error status: the endpoint, the status, the RFC
    /// 7807 `type` (its last path segment) and `detail`.
    Refused {
        /// `auth`, `attest` or `resource/...`.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The error's name (`AttestationError`, `PolicyDeny`, ...), or empty.
        kind: String,
        /// The detail, or the raw body.
        detail: String,
    },
    /// The KBS could not be reached (after the retries), or timed out.
    Transport(String),
    /// The KBS answered something that is not the protocol's.
    Protocol(String),
    /// The evidence could not be put in the KBS's form.
    Evidence(String),
}

impl std::fmt::Display for KbsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused {
                endpoint,
                status,
                kind,
                detail,
            } => write!(
                f,
                "KBS refused /kbs/v0/{endpoint} ({status} {kind}): {detail}"
            ),
            Self::Transport(m) => write!(f, "KBS unreachable: {m}"),
            Self::Protocol(m) => write!(f, "KBS answered outside the protocol: {m}"),
            Self::Evidence(m) => write!(f, "evidence: {m}"),
        }
    }
}

/// A KBS session (the cookie it set at /auth).
#[derive(Debug)]
pub struct KbsClient {
    base: String,
    agent: ureq::Agent,
    retries: u32,
    cookie: Option<String>,
}

impl KbsClient {
    /// A client of the KBS at `url` (`http://host:port` or `https://...`), each
    /// request limited to `timeout`, retried up to `retries` times on 5xx answers
    /// and transport failures.
    pub fn new(url: &str, timeout: Duration, retries: u32) -> Result<Self, KbsError> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(KbsError::Transport(format!(
                "{url}: the KBS URL must start with http:// or https://"
            )));
        }
        let agent = ureq::AgentBuilder::new().timeout(timeout).build();
        Ok(Self {
            base,
            agent,
            retries,
            cookie: None,
        })
    }

    fn post(
        &mut self,
        endpoint: &str,
        body: &Value,
    ) -> Result<(Vec<u8>, Option<String>), KbsError> {
        let text = body.to_string();
        self.send(endpoint, |agent, url, cookie| {
            let mut r = agent.post(url).set("Content-Type", "application/json");
            if let Some(c) = cookie {
                r = r.set("Cookie", c);
            }
            r.send_string(&text).map_err(Box::new)
        })
    }

    fn get(&mut self, endpoint: &str) -> Result<Vec<u8>, KbsError> {
        self.send(endpoint, |agent, url, cookie| {
            let mut r = agent.get(url);
            if let Some(c) = cookie {
                r = r.set("Cookie", c);
            }
            r.call().map_err(Box::new)
        })
        .map(|(body, _)| body)
    }

    /// One request with retries; returns the body and the session cookie set.
    fn send(
        &mut self,
        endpoint: &str,
        request: impl Fn(&ureq::Agent, &str, Option<&str>) -> Result<ureq::Response, Box<ureq::Error>>,
    ) -> Result<(Vec<u8>, Option<String>), KbsError> {
        let url = format!("{}/kbs/v0/{endpoint}", self.base);
        let mut attempt = 0;
        loop {
            let last = attempt >= self.retries;
            match request(&self.agent, &url, self.cookie.as_deref()).map_err(|e| *e) {
                Ok(resp) => {
                    let cookie = resp
                        .header("Set-Cookie")
                        .and_then(|c| c.split(';').next())
                        .filter(|c| c.starts_with("kbs-session-id="))
                        .map(str::to_string);
                    return Ok((read_body(resp)?, cookie));
                }
                Err(ureq::Error::Status(code, resp)) if code >= 500 && !last => {
                    drop(resp);
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let body = read_body(resp).unwrap_or_default();
                    return Err(refusal(endpoint, code, &body));
                }
                Err(ureq::Error::Transport(t)) if last => {
                    return Err(KbsError::Transport(format!(
                        "{url}: {t} (after {} attempt(s))",
                        attempt + 1
                    )))
                }
                Err(ureq::Error::Transport(_)) => {}
            }
            attempt += 1;
            std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
        }
    }

    /// `POST /kbs/v0/auth`: open a session; returns the challenge nonce.
    pub fn auth(&mut self) -> Result<String, KbsError> {
        let req = Request {
            version: PROTOCOL_VERSION.into(),
            tee: Tee::Snp,
            extra_params: Value::String(String::new()),
        };
        let body = serde_json::to_value(&req).map_err(|e| KbsError::Protocol(e.to_string()))?;
        let (answer, cookie) = self.post("auth", &body)?;
        self.cookie = Some(
            cookie
                .ok_or_else(|| KbsError::Protocol("/auth set no kbs-session-id cookie".into()))?,
        );
        let challenge: Challenge = serde_json::from_slice(&answer)
            .map_err(|e| KbsError::Protocol(format!("/auth answer: {e}")))?;
        Ok(challenge.nonce)
    }

    /// `POST /kbs/v0/attest`: the runtime data (the nonce and the vault's JWK) and
    /// the SNP evidence; returns the attestation token.
    pub fn attest(&mut self, nonce: &str, jwk: &[u8], evidence: Value) -> Result<String, KbsError> {
        let tee_pubkey: TeePubKey = serde_json::from_slice(jwk)
            .map_err(|e| KbsError::Evidence(format!("the vault's JWK: {e}")))?;
        let attestation = Attestation {
            init_data: None,
            runtime_data: RuntimeData {
                nonce: nonce.to_string(),
                tee_pubkey,
            },
            tee_evidence: CompositeEvidence {
                primary_evidence: evidence,
                additional_evidence: String::new(),
            },
        };
        let body =
            serde_json::to_value(&attestation).map_err(|e| KbsError::Protocol(e.to_string()))?;
        let (answer, _) = self.post("attest", &body)?;
        let v: Value = serde_json::from_slice(&answer)
            .map_err(|e| KbsError::Protocol(format!("/attest answer: {e}")))?;
        v.get("token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| KbsError::Protocol("/attest answered no token".into()))
    }

    /// `GET /kbs/v0/resource/REPO/TYPE/TAG` in the attested session: the JWE, as
    /// received.
    pub fn resource(&mut self, path: &str) -> Result<Vec<u8>, KbsError> {
        self.get(&format!("resource/{path}"))
    }
}

fn read_body(resp: ureq::Response) -> Result<Vec<u8>, KbsError> {
    use std::io::Read;
    let mut body = Vec::new();
    resp.into_reader()
        .take(1 << 20)
        .read_to_end(&mut body)
        .map_err(|e| KbsError::Transport(format!("reading the answer: {e}")))?;
    Ok(body)
}

/// An error answer: its RFC 7807 `type` name and `detail` when the body is one.
fn refusal(endpoint: &str, status: u16, body: &[u8]) -> KbsError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let kind = field("type")
        .map(|t| t.rsplit('/').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    let detail = field("detail").unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    KbsError::Refused {
        endpoint: endpoint.split('/').next().unwrap_or(endpoint).to_string()
            + if endpoint.contains('/') { "/..." } else { "" },
        status,
        kind,
        detail,
    }
}

/// The SNP evidence in the KBS's form: `{"attestation_report": <the report as
/// sev serializes it>, "cert_chain": [{"cert_type", "data"}, ...]}`, the chain
/// taken from the report's certificate table (VCEK or VLEK, ASK, ARK).
pub fn snp_evidence(report: &[u8], certificates: &[u8]) -> Result<Value, KbsError> {
    let parsed = AttestationReport::from_bytes(report)
        .map_err(|e| KbsError::Evidence(format!("report: {e}")))?;
    let mut chain = Vec::new();
    for entry in nitride_protocol::snp::certs::entries(certificates) {
        let (kind, bytes) =
            entry.map_err(|e| KbsError::Evidence(format!("certificate table: {e:?}")))?;
        use nitride_protocol::snp::CertKind;
        let cert_type = match kind {
            CertKind::Vcek => CertType::VCEK,
            CertKind::Vlek => CertType::VLEK,
            CertKind::Ask => CertType::ASK,
            CertKind::Ark => CertType::ARK,
            CertKind::Other(_) => continue,
        };
        chain.push(CertTableEntry::new(cert_type, bytes.to_vec()));
    }
    if chain.is_empty() {
        return Err(KbsError::Evidence(
            "the report came without certificates: the KBS needs the VCEK chain".into(),
        ));
    }
    Ok(json!({
        "attestation_report": serde_json::to_value(parsed)
            .map_err(|e| KbsError::Evidence(e.to_string()))?,
        "cert_chain": serde_json::to_value(&chain).map_err(|e| KbsError::Evidence(e.to_string()))?,
    }))
}

/// Whether `path` is a resource name as trustee's grammar has it: three segments
/// of `[A-Za-z0-9_-][A-Za-z0-9_.-]*`.
pub fn resource_path(path: &str) -> Result<String, String> {
    let parts: Vec<&str> = path.split('/').collect();
    let ok = parts.len() == 3
        && parts.iter().all(|p| {
            let mut chars = p.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        });
    if ok {
        Ok(path.to_string())
    } else {
        Err(format!(
            "{path:?}: a resource is REPO/TYPE/TAG, each of [A-Za-z0-9_-][A-Za-z0-9_.-]*"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_follow_trustee() {
        assert!(resource_path("nitride/key/disk").is_ok());
        assert!(resource_path("a_b/c-d/e.f").is_ok());
        for bad in ["a/b", "a/b/c/d", ".a/b/c", "a//c", "a/b/c d", "../b/c"] {
            assert!(resource_path(bad).is_err(), "{bad}");
        }
    }

    /// The runtime data the vault hashes into REPORT_DATA (built without JSON
    /// machinery in `nitride_protocol::provision`) are the bytes the KBS computes:
    /// the same members serialized with `kbs-types`' `TeePubKey` and serde_json
    /// (members sorted, no whitespace: RFC 8785 for these ASCII strings).
    #[test]
    fn runtime_data_matches_kbs_types_serialization() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let key = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let point =
            p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key.public_key(), false);
        let (x, y) = (
            b64.encode(point.x().unwrap()),
            b64.encode(point.y().unwrap()),
        );
        for nonce in [
            "bm9uY2U=",
            "TWFueSBoYW5kcyBtYWtlIGxpZ2h0IHdvcmsu",
            "a-b_c+d/e",
        ] {
            let mut ours = String::new();
            let range =
                nitride_protocol::provision::runtime_data(nonce, &x, &y, |p| ours.push_str(p));
            let tee_pubkey = TeePubKey::EC {
                crv: "P-256".into(),
                alg: "ECDH-ES+A256KW".into(),
                x: x.clone(),
                y: y.clone(),
            };
            let theirs = serde_json::to_string(&json!({
                "nonce": nonce,
                "tee-pubkey": serde_json::to_value(&tee_pubkey).unwrap(),
                "additional-evidence": "",
            }))
            .unwrap();
            assert_eq!(ours, theirs);
            let jwk: TeePubKey = serde_json::from_str(&ours[range]).unwrap();
            assert_eq!(
                serde_json::to_value(jwk).unwrap(),
                serde_json::to_value(tee_pubkey).unwrap()
            );
        }
    }

    /// A loopback HTTP server answering each connection with the next of `answers`
    /// (status, body); returns its URL and the number of requests it served.
    fn server(answers: Vec<(u16, &'static str)>) -> (String, std::thread::JoinHandle<usize>) {
        use std::io::{BufRead as _, BufReader, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = std::thread::spawn(move || {
            let mut served = 0;
            for (status, body) in answers {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                }
                let mut request_body = vec![0u8; length];
                std::io::Read::read_exact(&mut reader, &mut request_body).unwrap();
                let mut stream = reader.into_inner();
                write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                     Set-Cookie: kbs-session-id=s1; Path=/kbs\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
                served += 1;
            }
            served
        });
        (url, served)
    }

    /// 5xx answers are retried (up to `retries` times), then reported with their
    /// status; a 4xx is not retried.
    #[test]
    fn server_errors_are_retried_then_reported() {
        let challenge = r#"{"nonce":"bm9uY2U=","extra-params":""}"#;
        let busy = r#"{"type":"https://example/errors/Busy","detail":"try later"}"#;
        let (url, served) = server(vec![(503, busy), (502, "bad gateway"), (200, challenge)]);
        let mut c = KbsClient::new(&url, Duration::from_secs(5), 2).unwrap();
        assert_eq!(c.auth().unwrap(), "bm9uY2U=");
        assert_eq!(served.join().unwrap(), 3);

        let (url, served) = server(vec![(503, busy), (503, busy)]);
        let mut c = KbsClient::new(&url, Duration::from_secs(5), 1).unwrap();
        let e = c.auth().unwrap_err().to_string();
        assert_eq!(e, "KBS refused /kbs/v0/auth (503 Busy): try later");
        assert_eq!(served.join().unwrap(), 2);

        let denied = r#"{"type":"https://example/errors/PolicyDeny","detail":"no"}"#;
        let (url, served) = server(vec![(401, denied)]);
        let mut c = KbsClient::new(&url, Duration::from_secs(5), 3).unwrap();
        let e = c.auth().unwrap_err().to_string();
        assert_eq!(e, "KBS refused /kbs/v0/auth (401 PolicyDeny): no");
        assert_eq!(served.join().unwrap(), 1, "a 4xx is not retried");
    }

    #[test]
    fn refusals_show_the_rfc7807_body() {
        let body = br#"{"type":"https://github.com/confidential-containers/kbs/errors/PolicyDeny","detail":"Resource policy denied: measurement"}"#;
        let e = refusal("resource/a/b/c", 401, body).to_string();
        assert_eq!(
            e,
            "KBS refused /kbs/v0/resource/... (401 PolicyDeny): Resource policy denied: measurement"
        );
        let e = refusal("auth", 502, b"bad gateway").to_string();
        assert!(e.contains("502") && e.contains("bad gateway"), "{e}");
    }
}
