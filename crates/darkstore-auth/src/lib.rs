//! Bearer tokens: JWT with HS256, signed and verified here (HMAC-SHA256, constant-time compare),
//! and the HMAC of webhook bodies. Pure: no clock (the caller passes `now`), no IO.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A role a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Staff,
    Rider,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Staff => "staff",
            Role::Rider => "rider",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "customer" => Some(Role::Customer),
            "staff" => Some(Role::Staff),
            "rider" => Some(Role::Rider),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The claims darkstore reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Expiry, unix seconds.
    pub exp: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    BadSignature,
    UnsupportedAlgorithm,
    Expired,
    /// `nbf` (not before) is still in the future.
    NotYetValid,
}

impl TokenError {
    pub fn message(self) -> &'static str {
        match self {
            TokenError::Malformed => "the bearer token is malformed",
            TokenError::BadSignature => "the bearer token's signature is invalid",
            TokenError::UnsupportedAlgorithm => "the bearer token is not HS256",
            TokenError::Expired => "the bearer token has expired",
            TokenError::NotYetValid => "the bearer token is not valid yet (nbf)",
        }
    }
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Signs `claims` with `secret`.
pub fn sign(secret: &[u8], claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(HEADER);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

/// Verifies `token` and returns its claims; `now_secs` is the current unix time.
pub fn verify(secret: &[u8], token: &str, now_secs: i64) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    #[derive(Deserialize)]
    struct Header {
        alg: String,
    }
    let header: Header =
        URL_SAFE_NO_PAD.decode(h).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::UnsupportedAlgorithm);
    }
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    if claims.exp <= now_secs {
        return Err(TokenError::Expired);
    }
    /// Registered claims darkstore checks but does not hand on.
    #[derive(Deserialize)]
    struct NotBefore {
        #[serde(default)]
        nbf: Option<i64>,
    }
    let times: NotBefore = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    if times.nbf.is_some_and(|nbf| nbf > now_secs) {
        return Err(TokenError::NotYetValid);
    }
    Ok(claims)
}

/// Whether two byte strings are equal, in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HMAC-SHA256 of `body` under `secret`, compared in constant time with the hex `signature`.
pub fn verify_hmac_hex(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Ok(expected) = hex::decode(signature.trim()) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Hex HMAC-SHA256 of `body` under `secret` (what a webhook sender computes).
pub fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims { sub: "alice".into(), role: Role::Customer, store: None, exp }
    }

    #[test]
    fn verify_table() {
        let good = sign(b"secret", &claims(2_000));
        let other_key = sign(b"other", &claims(2_000));
        let expired = sign(b"secret", &claims(1_000));
        let mut tampered = good.clone();
        tampered.replace_range(good.len() - 3.., "AAA");
        let none_alg = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), good.split('.').nth(1).unwrap());
        // A token with `nbf` (signed by hand: `sign` never sets it).
        let with_nbf = |nbf: i64| {
            let header = URL_SAFE_NO_PAD.encode(HEADER);
            let payload = URL_SAFE_NO_PAD
                .encode(format!(r#"{{"sub":"alice","role":"customer","exp":2000,"nbf":{nbf}}}"#).as_bytes());
            let mut mac = HmacSha256::new_from_slice(b"secret").unwrap();
            mac.update(format!("{header}.{payload}").as_bytes());
            format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
        };
        let (not_yet, already) = (with_nbf(1_501), with_nbf(1_500));
        let cases: Vec<(&str, Result<(), TokenError>)> = vec![
            (&good, Ok(())),
            (&other_key, Err(TokenError::BadSignature)),
            (&tampered, Err(TokenError::BadSignature)),
            (&expired, Err(TokenError::Expired)),
            (&none_alg, Err(TokenError::UnsupportedAlgorithm)),
            (&not_yet, Err(TokenError::NotYetValid)),
            (&already, Ok(())),
            ("abc", Err(TokenError::Malformed)),
            ("a.b.c.d", Err(TokenError::Malformed)),
            ("", Err(TokenError::Malformed)),
        ];
        for (token, expected) in cases {
            assert_eq!(verify(b"secret", token, 1_500).map(|_| ()), expected, "{token}");
        }
        assert_eq!(verify(b"secret", &good, 1_500).unwrap(), claims(2_000));
    }

    #[test]
    fn webhook_signatures() {
        let sig = hmac_hex(b"whsec", b"{\"order_id\":\"o1\"}");
        assert!(verify_hmac_hex(b"whsec", b"{\"order_id\":\"o1\"}", &sig));
        assert!(!verify_hmac_hex(b"whsec", b"{\"order_id\":\"o2\"}", &sig));
        assert!(!verify_hmac_hex(b"other", b"{\"order_id\":\"o1\"}", &sig));
        assert!(!verify_hmac_hex(b"whsec", b"x", "not hex"));
    }
}
