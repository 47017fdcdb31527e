//! Client public keys: a PEM public key (SPKI, or PKCS#1 for RSA) or a JWK
//! turned into the JWK fhirlake registers, with the RFC 7638 thumbprint as
//! its `kid` unless one is given.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p384::elliptic_curve::sec1::{Coordinates, ToEncodedPoint};
use pkcs1::RsaPublicKey;
use serde_json::{Value, json};
use spki::der::{Decode, pem};
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};

/// Why a key file was not usable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

// The crates export these OIDs only behind features that pull in more crates
// (pkcs8, ECDSA).
/// `rsaEncryption` (RFC 8017).
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// `id-ecPublicKey` (RFC 5480).
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `secp384r1`, the curve ES384 signs on.
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// The public JWK (`alg` RS384 or ES384, `use` sig, `kid`) for the key in
/// `text`: a PEM `PUBLIC KEY` / `RSA PUBLIC KEY`, or a JWK as JSON (private
/// members are dropped). `kid` overrides the key's own or the thumbprint.
pub fn public_jwk(text: &str, kid: Option<&str>) -> Result<Value, KeyError> {
    let trimmed = text.trim_start();
    let mut jwk = if trimmed.starts_with('{') {
        from_jwk_json(trimmed)?
    } else {
        from_pem(trimmed)?
    };
    let kid = match kid
        .map(str::to_string)
        .or_else(|| jwk["kid"].as_str().map(str::to_string))
    {
        Some(kid) => kid,
        None => thumbprint(&jwk)?,
    };
    jwk["kid"] = Value::String(kid);
    jwk["use"] = Value::String("sig".into());
    Ok(jwk)
}

fn from_jwk_json(text: &str) -> Result<Value, KeyError> {
    let jwk: Value = serde_json::from_str(text).map_err(|e| KeyError(format!("not a JWK: {e}")))?;
    let string = |name: &str| {
        jwk[name]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| KeyError(format!("the JWK has no '{name}'")))
    };
    let mut public = match jwk["kty"].as_str() {
        Some("RSA") => json!({"kty": "RSA", "n": string("n")?, "e": string("e")?, "alg": "RS384"}),
        Some("EC") if jwk["crv"] == "P-384" => {
            json!({"kty": "EC", "crv": "P-384", "x": string("x")?, "y": string("y")?, "alg": "ES384"})
        }
        Some("EC") => return Err(KeyError("EC keys must use curve P-384 (ES384)".into())),
        other => {
            return Err(KeyError(format!(
                "unsupported key type {other:?}: RSA (RS384) or EC P-384 (ES384)"
            )));
        }
    };
    if let Some(alg) = jwk["alg"].as_str()
        && alg != public["alg"]
    {
        return Err(KeyError(format!(
            "the JWK says alg {alg}; fhirlake accepts RS384 for RSA and ES384 for EC P-384"
        )));
    }
    if let Some(kid) = jwk["kid"].as_str() {
        public["kid"] = Value::String(kid.to_string());
    }
    Ok(public)
}

fn from_pem(text: &str) -> Result<Value, KeyError> {
    // pem-rfc7468 reads a single block: keep the first, as a file may go on
    // with another (a certificate).
    let block = match text.find("-----END ") {
        Some(end) => text[end..].find('\n').map_or(text, |eol| &text[..end + eol]),
        None => text,
    };
    let block = block.trim_end();
    // The label alone decides a refusal, so a private key is named as one
    // whatever its body holds.
    let label = pem::decode_label(block.as_bytes()).map_err(|e| {
        KeyError(if text.contains("-----BEGIN ") {
            format!("malformed PEM: {e}")
        } else {
            "neither a PEM public key nor a JWK".into()
        })
    })?;
    if label.ends_with("PRIVATE KEY") {
        return Err(KeyError(
            "this is a private key: register the public key (openssl pkey -pubout)".into(),
        ));
    }
    // Other tools than openssl wrap the base64 at other widths than 64: take
    // the first line's (the decoder wants one width throughout).
    let width = block
        .find("-----BEGIN ")
        .and_then(|begin| block[begin..].lines().nth(1));
    let width = width.map_or(0, |line| line.trim_end().len());
    let mut der = Vec::new();
    pem::Decoder::new_wrapped(block.as_bytes(), width)
        .and_then(|mut decoder| decoder.decode_to_end(&mut der).map(|_| ()))
        .map_err(|e| KeyError(format!("bad PEM base64: {e}")))?;
    match label {
        "PUBLIC KEY" => from_spki(&der),
        "RSA PUBLIC KEY" => rsa_jwk(&der),
        other => Err(KeyError(format!("unsupported PEM block '{other}'"))),
    }
}

fn from_spki(der: &[u8]) -> Result<Value, KeyError> {
    let spki = SubjectPublicKeyInfoRef::from_der(der).map_err(|e| KeyError(format!("malformed public key: {e}")))?;
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| KeyError("malformed public key bits".into()))?;
    let algorithm = spki.algorithm.oid;
    if algorithm == RSA_ENCRYPTION {
        rsa_jwk(key)
    } else if algorithm == EC_PUBLIC_KEY {
        if spki.algorithm.parameters_oid().ok() != Some(SECP384R1) {
            return Err(KeyError("EC keys must use curve P-384 (ES384)".into()));
        }
        // Checks the point is on the curve and decompresses a compressed one.
        let point = p384::PublicKey::from_sec1_bytes(key)
            .map_err(|_| KeyError("not a valid P-384 public key point".into()))?
            .to_encoded_point(false);
        let Coordinates::Uncompressed { x, y } = point.coordinates() else {
            return Err(KeyError("not a valid P-384 public key point".into()));
        };
        Ok(json!({
            "kty": "EC", "crv": "P-384",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
            "alg": "ES384",
        }))
    } else {
        Err(KeyError(
            "unsupported key algorithm: RSA (RS384) or EC P-384 (ES384)".into(),
        ))
    }
}

/// The JWK for a PKCS#1 `RSAPublicKey` (also the key inside an RSA SPKI).
fn rsa_jwk(der: &[u8]) -> Result<Value, KeyError> {
    let key = RsaPublicKey::from_der(der).map_err(|e| KeyError(format!("malformed RSA public key: {e}")))?;
    // `as_bytes` has the leading zeros stripped, as JWK wants them.
    let n = key.modulus.as_bytes();
    if n.len() < 256 {
        return Err(KeyError("RSA keys must have at least 2048 bits".into()));
    }
    Ok(json!({
        "kty": "RSA",
        "n": URL_SAFE_NO_PAD.encode(n),
        "e": URL_SAFE_NO_PAD.encode(key.public_exponent.as_bytes()),
        "alg": "RS384",
    }))
}

/// RFC 7638 JWK thumbprint (SHA-256 over the required members, sorted).
fn thumbprint(jwk: &Value) -> Result<String, KeyError> {
    let member = |name: &str| jwk[name].as_str().unwrap_or_default().to_string();
    let canonical = match jwk["kty"].as_str() {
        Some("RSA") => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, member("e"), member("n")),
        Some("EC") => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            member("crv"),
            member("x"),
            member("y")
        ),
        _ => return Err(KeyError("unsupported key type".into())),
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    Ok(URL_SAFE_NO_PAD.encode(digest.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-384 public key made by `openssl ecparam -name secp384r1 -genkey | openssl ec -pubout`.
    const EC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEF/7JBwg4Q+RnQ1mC0U4cQsK/UkeRyOMa
qH+iTHMZyjSgP/IKEot+lQzLQbmLMvREup8d1uMCg7sTWTtVZQLXWHcUJaOnY72K
9JSqHgxiMXeyMxJfPlzHvfTQ0Ckwi7F9
-----END PUBLIC KEY-----";

    /// The same point compressed (`openssl ec -pubin -pubout -conv_form compressed`).
    const EC_COMPRESSED_PEM: &str = "-----BEGIN PUBLIC KEY-----
MEYwEAYHKoZIzj0CAQYFK4EEACIDMgADF/7JBwg4Q+RnQ1mC0U4cQsK/UkeRyOMa
qH+iTHMZyjSgP/IKEot+lQzLQbmLMvRE
-----END PUBLIC KEY-----";

    /// `openssl ec -pubin -text` of `EC_PEM`, the bytes after `04`, as base64url.
    const EC_X: &str = "F_7JBwg4Q-RnQ1mC0U4cQsK_UkeRyOMaqH-iTHMZyjSgP_IKEot-lQzLQbmLMvRE";
    const EC_Y: &str = "up8d1uMCg7sTWTtVZQLXWHcUJaOnY72K9JSqHgxiMXeyMxJfPlzHvfTQ0Ckwi7F9";

    /// A 2048-bit RSA key: `openssl genpkey -algorithm RSA | openssl pkey -pubout`.
    const RSA_SPKI_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAn51RGyG2S9eBYuDwEfOf
/kgyGHlRsqNtnUKrVS57X6G0KK04DfYqA8kdf/gbAzNpTKirsaEflHOkBgm7bis3
ZmHMfbOngN1z+1Xdyd62Sz5uZZSpDUIW0VXsu8dN0yMQnQaJNWVi0fOU+CDAVGnG
Z9ti5xikGEcBSgk2scR1zgMbUqXeAP5RyKx3P4rA+/1uqqV167Km3rODH+kEgZvy
en4ceO88hV/rQFvKQmVkmUHjOgcegylhbUYOVBGIhBE+OAzT3RWz6ZV3uHx0I0Va
SDt9K3jTa3rShSsSvPhwMdVh06QaZkwp7c/IlubXIx/oNgjWeiCn65VKtOd6swxc
iwIDAQAB
-----END PUBLIC KEY-----";

    /// The same key as PKCS#1 (`openssl rsa -RSAPublicKey_out`).
    const RSA_PKCS1_PEM: &str = "-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEAn51RGyG2S9eBYuDwEfOf/kgyGHlRsqNtnUKrVS57X6G0KK04DfYq
A8kdf/gbAzNpTKirsaEflHOkBgm7bis3ZmHMfbOngN1z+1Xdyd62Sz5uZZSpDUIW
0VXsu8dN0yMQnQaJNWVi0fOU+CDAVGnGZ9ti5xikGEcBSgk2scR1zgMbUqXeAP5R
yKx3P4rA+/1uqqV167Km3rODH+kEgZvyen4ceO88hV/rQFvKQmVkmUHjOgcegylh
bUYOVBGIhBE+OAzT3RWz6ZV3uHx0I0VaSDt9K3jTa3rShSsSvPhwMdVh06QaZkwp
7c/IlubXIx/oNgjWeiCn65VKtOd6swxciwIDAQAB
-----END RSA PUBLIC KEY-----";

    /// The modulus `openssl pkey -pubin -text` prints for `RSA_SPKI_PEM`, as base64url.
    const RSA_N: &str = concat!(
        "n51RGyG2S9eBYuDwEfOf_kgyGHlRsqNtnUKrVS57X6G0KK04DfYqA8kdf_gbAzNpTKirsaEf",
        "lHOkBgm7bis3ZmHMfbOngN1z-1Xdyd62Sz5uZZSpDUIW0VXsu8dN0yMQnQaJNWVi0fOU-CDA",
        "VGnGZ9ti5xikGEcBSgk2scR1zgMbUqXeAP5RyKx3P4rA-_1uqqV167Km3rODH-kEgZvyen4c",
        "eO88hV_rQFvKQmVkmUHjOgcegylhbUYOVBGIhBE-OAzT3RWz6ZV3uHx0I0VaSDt9K3jTa3rS",
        "hSsSvPhwMdVh06QaZkwp7c_IlubXIx_oNgjWeiCn65VKtOd6swxciw",
    );

    #[test]
    fn reads_an_ec_p384_pem_with_a_thumbprint_kid() {
        let jwk = public_jwk(EC_PEM, None).unwrap();
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-384");
        assert_eq!(jwk["alg"], "ES384");
        assert_eq!((jwk["x"].as_str(), jwk["y"].as_str()), (Some(EC_X), Some(EC_Y)));
        assert_eq!(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap().len(), 48);
        assert_eq!(jwk["kid"].as_str().unwrap().len(), 43);
        // The same key as a JWK gets the same thumbprint.
        let again = public_jwk(&jwk.to_string().replace("\"kid\"", "\"x-kid\""), None).unwrap();
        assert_eq!(again["kid"], jwk["kid"]);
        assert_eq!(public_jwk(EC_PEM, Some("mine")).unwrap()["kid"], "mine");
    }

    #[test]
    fn refuses_private_keys_other_curves_and_garbage() {
        assert!(public_jwk("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", None).is_err());
        assert!(public_jwk(r#"{"kty":"EC","crv":"P-256","x":"a","y":"b"}"#, None).is_err());
        assert!(public_jwk(r#"{"kty":"oct","k":"c2VjcmV0"}"#, None).is_err());
        assert!(public_jwk(r#"{"kty":"RSA","n":"a","e":"AQAB","alg":"HS256"}"#, None).is_err());
        assert!(public_jwk("hello", None).is_err());
    }

    #[test]
    fn reads_a_compressed_ec_point() {
        let jwk = public_jwk(EC_COMPRESSED_PEM, None).unwrap();
        assert_eq!((jwk["x"].as_str(), jwk["y"].as_str()), (Some(EC_X), Some(EC_Y)));
        assert_eq!(jwk["kid"], public_jwk(EC_PEM, None).unwrap()["kid"]);
    }

    #[test]
    fn reads_rsa_spki_and_pkcs1_pems() {
        let spki = public_jwk(RSA_SPKI_PEM, None).unwrap();
        assert_eq!(spki["kty"], "RSA");
        assert_eq!(spki["alg"], "RS384");
        assert_eq!(spki["use"], "sig");
        assert_eq!(spki["n"], RSA_N);
        assert_eq!(spki["e"], "AQAB");
        // The same key in PKCS#1, with CRLF line ends, is the same JWK.
        let pkcs1 = public_jwk(&RSA_PKCS1_PEM.replace('\n', "\r\n"), None).unwrap();
        assert_eq!(pkcs1, spki);
        // Base64 wrapped at another width than openssl's 64 still reads.
        let body: String = RSA_SPKI_PEM.lines().filter(|l| !l.starts_with("-----")).collect();
        let wrapped: Vec<&str> = body
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let rewrapped = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n\n",
            wrapped.join("\n")
        );
        assert_eq!(public_jwk(&rewrapped, None).unwrap(), spki);
        // Text before the block and further blocks after it are ignored.
        let bundle = format!("Subject: CN=client\n{RSA_SPKI_PEM}\n{EC_PEM}\n");
        assert_eq!(public_jwk(&bundle, None).unwrap(), spki);
    }

    #[test]
    fn names_the_reason_for_a_refusal() {
        let message = |text: &str| public_jwk(text, None).unwrap_err().to_string();
        for label in [
            "PRIVATE KEY",
            "RSA PRIVATE KEY",
            "EC PRIVATE KEY",
            "ENCRYPTED PRIVATE KEY",
        ] {
            let pem = format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n");
            assert_eq!(
                message(&pem),
                "this is a private key: register the public key (openssl pkey -pubout)"
            );
        }
        // `openssl ecparam -name prime256v1 -genkey | openssl ec -pubout`.
        let p256 = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEnTdHu0WMN/1SVBpzUNvMyT94LxT5\nBRlffweqHRPoBnepzhy9assS4KZm2O2Y7ZxCg+zafaTr4geRm4uavd4ZjA==\n-----END PUBLIC KEY-----";
        assert_eq!(message(p256), "EC keys must use curve P-384 (ES384)");
        // A 512-bit key: `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:512`.
        let small = "-----BEGIN PUBLIC KEY-----\nMFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBALWL+d/4xzs3A1adMdzrd3ahVdmrk4L3\nSv+3vfvURWZtZoFKJ+IsAuLzMxqjmJpzQRO8gnRHmdOObr4Qu/W7Je0CAwEAAQ==\n-----END PUBLIC KEY-----";
        assert_eq!(message(small), "RSA keys must have at least 2048 bits");
        assert!(
            message("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").starts_with("malformed public key")
        );
        assert!(
            message("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")
                .starts_with("unsupported PEM block")
        );
        assert_eq!(message("hello"), "neither a PEM public key nor a JWK");
    }
}
