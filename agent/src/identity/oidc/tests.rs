//! ID-token verification against tokens made here: an ES256 key of our own
//! plays the provider, another key plays the forger.

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::json;

use super::*;

const ISSUER: &str = "https://idp.test";
const CLIENT: &str = "gatehouse";
const NONCE: &str = "n-0123456789";

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

struct Key {
    pair: EcdsaKeyPair,
    kid: &'static str,
}

impl Key {
    fn new(kid: &'static str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        Self { pair, kid }
    }

    fn jwk(&self) -> serde_json::Value {
        let p = self.pair.public_key().as_ref();
        json!({ "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
                "x": b64(&p[1..33]), "y": b64(&p[33..65]) })
    }

    fn sign(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let sig = self.pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }

    fn token(&self, claims: &serde_json::Value) -> String {
        self.sign(&json!({ "alg": "ES256", "kid": self.kid, "typ": "JWT" }), claims)
    }
}

fn cfg() -> IdentityConfig {
    IdentityConfig {
        issuer: ISSUER.into(),
        client_id: CLIENT.into(),
        client_secret_file: None,
        groups_claim: "groups".into(),
        scopes: vec!["openid".into()],
        ca_file: None,
        max_binding: Duration::from_secs(3600),
        require_nonce: true,
        at: crate::policy::Location { file: "test.toml".into(), line: 1, col: 1 },
    }
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000).unwrap()
}

fn claims() -> serde_json::Value {
    let t = now().as_second();
    json!({ "iss": ISSUER, "sub": "alice-123", "aud": CLIENT, "exp": t + 600, "iat": t - 5, "auth_time": t - 30,
            "nonce": NONCE, "email": "alice@example.test", "email_verified": true, "groups": ["db-admins", "staff"],
            "acr": "mfa", "amr": ["pwd", "otp"] })
}

fn jwks(keys: &[&Key]) -> CoreJsonWebKeySet {
    serde_json::from_value(json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })).unwrap()
}

fn check(token: &str, set: &CoreJsonWebKeySet) -> Result<Verified, Refusal> {
    verify(token, &cfg(), set, NonceRule::Exactly(NONCE), now())
}

fn with(f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> serde_json::Value {
    let mut c = claims();
    f(c.as_object_mut().unwrap());
    c
}

#[test]
fn a_good_token_gives_the_identity() {
    let idp = Key::new("k1");
    let v = check(&idp.token(&claims()), &jwks(&[&idp])).unwrap();
    let i = v.identity;
    assert_eq!(i.subject, "alice-123");
    assert_eq!(i.issuer, ISSUER);
    assert_eq!(i.verified_email(), Some("alice@example.test"));
    let groups: Vec<&str> = i.groups.iter().map(|g| g.as_str()).collect();
    assert_eq!(groups, ["db-admins", "staff"]);
    assert_eq!(i.acr.as_deref(), Some("mfa"));
    assert_eq!(i.amr, ["pwd", "otp"]);
    assert_eq!(i.auth_time, now().as_second() - 30);
    assert_eq!(v.token_expires, now().as_second() + 600);
}

#[test]
fn expired_wrong_audience_wrong_issuer_are_refused() {
    let idp = Key::new("k1");
    let set = jwks(&[&idp]);
    let t = now().as_second();
    let cases = [
        ("expired", with(|c| drop(c.insert("exp".into(), json!(t - 1)))), "expired"),
        ("audience", with(|c| drop(c.insert("aud".into(), json!("another-client")))), "audience"),
        ("extra audience", with(|c| drop(c.insert("aud".into(), json!([CLIENT, "stranger"])))), "audience"),
        ("issuer", with(|c| drop(c.insert("iss".into(), json!("https://evil.test")))), "issuer"),
        ("nonce", with(|c| drop(c.insert("nonce".into(), json!("someone-elses")))), "nonce"),
        ("no nonce", with(|c| drop(c.remove("nonce"))), "nonce"),
        ("future", with(|c| drop(c.insert("iat".into(), json!(t + 3600)))), "future"),
    ];
    for (what, c, word) in cases {
        let r = check(&idp.token(&c), &set).expect_err(what);
        assert!(r.why.to_lowercase().contains(word), "{what}: {}", r.why);
    }
}

#[test]
fn badly_signed_tokens_are_refused() {
    let idp = Key::new("k1");
    let forger = Key::new("k1");
    let set = jwks(&[&idp]);
    // Another key under the provider's key id.
    let r = check(&forger.token(&claims()), &set).expect_err("forged");
    assert!(r.unknown_key, "{r:?}");
    // A claim changed after signing.
    let good = idp.token(&claims());
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = b64(with(|c| drop(c.insert("sub".into(), json!("root")))).to_string().as_bytes());
    assert!(check(&parts.join("."), &set).is_err());
    // alg none, and HS256 keyed with something a user knows.
    let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(claims().to_string().as_bytes()));
    assert!(check(&none, &set).is_err());
    let hs = idp.sign(&json!({ "alg": "HS256", "kid": "k1" }), &claims());
    assert!(check(&hs, &set).is_err());
    // Not a JWT at all.
    assert!(check("not-a-token", &set).is_err());
}

#[test]
fn refreshed_tokens_may_drop_the_nonce_but_not_change_it() {
    let idp = Key::new("k1");
    let set = jwks(&[&idp]);
    let no_nonce = idp.token(&with(|c| drop(c.remove("nonce"))));
    assert!(verify(&no_nonce, &cfg(), &set, NonceRule::AbsentOr(NONCE), now()).is_ok());
    let other = idp.token(&with(|c| drop(c.insert("nonce".into(), json!("x")))));
    assert!(verify(&other, &cfg(), &set, NonceRule::AbsentOr(NONCE), now()).is_err());
}

#[test]
fn group_claims_are_bounded_and_typed() {
    let idp = Key::new("k1");
    let set = jwks(&[&idp]);
    let many: Vec<String> = (0..600).map(|i| format!("g{i}")).collect();
    assert!(check(&idp.token(&with(|c| drop(c.insert("groups".into(), json!(many))))), &set).is_err());
    assert!(check(&idp.token(&with(|c| drop(c.insert("groups".into(), json!([1, 2]))))), &set).is_err());
    let one = check(&idp.token(&with(|c| drop(c.insert("groups".into(), json!("solo"))))), &set).unwrap();
    assert_eq!(one.identity.groups.len(), 1);
    let unverified = check(&idp.token(&with(|c| drop(c.insert("email_verified".into(), json!(false))))), &set);
    assert_eq!(unverified.unwrap().identity.verified_email(), None);
}

#[test]
fn nonces_are_single_use_and_per_uid() {
    let logins = Arc::new(Logins::default());
    let a = logins.start(Uid(1001), &cfg()).unwrap();
    let b = logins.start(Uid(1002), &cfg()).unwrap();
    assert_ne!(a.nonce, b.nonce);
    assert_eq!(a.nonce.len(), 64);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // No login started for this uid: refused before anything is fetched.
    let e = rt.block_on(logins.login(Uid(1003), &cfg(), "x", None)).unwrap_err();
    assert!(matches!(e, OidcError::NoPending), "{e}");
    assert!(logins.view(Uid(1001), Some(&cfg()), now()).is_none());
}
