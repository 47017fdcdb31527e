//! Client public keys: a PEM public key (SPKI, or PKCS#1 for RSA) or a JWK
//! turned into the JWK fhirlake registers, with the RFC 7638 thumbprint as
//! its `kid` unless one is given.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

/// Why a key file was not usable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

const OID_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
const OID_P384: &[u8] = &[0x2B, 0x81, 0x04, 0x00, 0x22];

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
    let begin = text
        .lines()
        .find(|l| l.starts_with("-----BEGIN "))
        .ok_or_else(|| KeyError("neither a PEM public key nor a JWK".into()))?;
    let label = begin.trim_start_matches("-----BEGIN ").trim_end_matches("-----");
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN "))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END "))
        .collect();
    let der = STANDARD
        .decode(body.trim())
        .map_err(|e| KeyError(format!("bad PEM base64: {e}")))?;
    match label {
        "PUBLIC KEY" => from_spki(&der),
        "RSA PUBLIC KEY" => rsa_jwk(&der),
        "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => Err(KeyError(
            "this is a private key: register the public key (openssl pkey -pubout)".into(),
        )),
        other => Err(KeyError(format!("unsupported PEM block '{other}'"))),
    }
}

/// One DER element: (tag, content, rest).
fn der(input: &[u8]) -> Result<(u8, &[u8], &[u8]), KeyError> {
    let bad = || KeyError("malformed DER in the public key".into());
    let (&tag, rest) = input.split_first().ok_or_else(bad)?;
    let (&first, mut rest) = rest.split_first().ok_or_else(bad)?;
    let length = if first < 0x80 {
        first as usize
    } else {
        let count = (first & 0x7F) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return Err(bad());
        }
        let length = rest[..count].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        rest = &rest[count..];
        length
    };
    if rest.len() < length {
        return Err(bad());
    }
    Ok((tag, &rest[..length], &rest[length..]))
}

fn from_spki(der_bytes: &[u8]) -> Result<Value, KeyError> {
    let (_, spki, _) = der(der_bytes)?;
    let (_, algorithm, rest) = der(spki)?;
    let (_, bits, _) = der(rest)?;
    let key = bits
        .split_first()
        .filter(|(unused, _)| **unused == 0)
        .map(|(_, key)| key)
        .ok_or_else(|| KeyError("malformed public key bits".into()))?;
    let (_, oid, params) = der(algorithm)?;
    if oid == OID_RSA {
        rsa_jwk(key)
    } else if oid == OID_EC {
        let (_, curve, _) = der(params)?;
        if curve != OID_P384 {
            return Err(KeyError("EC keys must use curve P-384 (ES384)".into()));
        }
        if key.len() != 97 || key[0] != 4 {
            return Err(KeyError("expected an uncompressed P-384 point".into()));
        }
        Ok(json!({
            "kty": "EC", "crv": "P-384",
            "x": URL_SAFE_NO_PAD.encode(&key[1..49]),
            "y": URL_SAFE_NO_PAD.encode(&key[49..]),
            "alg": "ES384",
        }))
    } else {
        Err(KeyError(
            "unsupported key algorithm: RSA (RS384) or EC P-384 (ES384)".into(),
        ))
    }
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn rsa_jwk(der_bytes: &[u8]) -> Result<Value, KeyError> {
    let (_, sequence, _) = der(der_bytes)?;
    let (_, n, rest) = der(sequence)?;
    let (_, e, _) = der(rest)?;
    let strip = |i: &[u8]| -> Vec<u8> { i.iter().skip_while(|b| **b == 0).copied().collect() };
    let n = strip(n);
    if n.len() < 256 {
        return Err(KeyError("RSA keys must have at least 2048 bits".into()));
    }
    Ok(json!({
        "kty": "RSA",
        "n": URL_SAFE_NO_PAD.encode(&n),
        "e": URL_SAFE_NO_PAD.encode(strip(e)),
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

    #[test]
    fn reads_an_ec_p384_pem_with_a_thumbprint_kid() {
        let jwk = public_jwk(EC_PEM, None).unwrap();
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-384");
        assert_eq!(jwk["alg"], "ES384");
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
}
