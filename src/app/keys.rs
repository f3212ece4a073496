//! API keys: loaded from the keys file (JSON), held as sha256 hashes, matched in constant time.
//! Also the development mode that runs without a keys file, and the loading of the at-rest
//! encryption key file (whose contents no message ever shows).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::domain::{Principal, Scope, Tenant, TenantQuota};
use crate::error::{Error, Result};
use crate::storage::EncryptionKey;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<KeyEntry>,
    /// Optional quotas per tenant name.
    #[serde(default)]
    tenants: HashMap<String, TenantQuota>,
    /// Rate limit of each re-enrollment token's UpdateFace calls (default: `DEFAULT_TOKEN_LIMIT`).
    #[serde(default)]
    token_rate_limit: Option<RateLimit>,
}

/// A re-enrollment token may try UpdateFace 5 times at once, then once every 10 s: enough for
/// a person retaking a photo, not for using the token as free inference.
const DEFAULT_TOKEN_LIMIT: RateLimit = RateLimit { per_second: 0.1, burst: 5 };

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    tenant: String,
    scopes: Vec<String>,
    /// Hex sha256 of the secret; the secret itself is never stored.
    sha256: String,
    /// Marks a key published for development (README); the server warns loudly.
    #[serde(default)]
    development: bool,
    /// Token bucket for this key's calls; none means unlimited.
    #[serde(default)]
    rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimit {
    /// Sustained calls per second.
    per_second: f64,
    /// Calls that may come at once after a quiet period.
    burst: u32,
}

fn valid_limit(limit: RateLimit) -> bool {
    limit.per_second >= 0.001 && limit.per_second.is_finite() && limit.burst >= 1
}

/// A token bucket: `burst` tokens, refilled at `rate` per second, one taken per call.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    /// Tokens left and when they were counted.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    fn new(limit: RateLimit) -> Self {
        let burst = f64::from(limit.burst);
        TokenBucket { rate: limit.per_second, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&self, now: Instant) -> std::result::Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, then) = *state;
        let now = now.max(then);
        let tokens = (tokens + now.duration_since(then).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(Duration::try_from_secs_f64((1.0 - tokens) / self.rate).unwrap_or(Duration::MAX))
        }
    }
}

#[derive(Debug)]
struct Key {
    hash: [u8; 32],
    principal: Arc<Principal>,
    limiter: Option<TokenBucket>,
}

/// Limits of the key ring that come from flags rather than the keys file.
#[derive(Debug, Clone, Copy)]
pub struct CallerLimits {
    /// Calls one API key may have in flight at once.
    pub max_concurrent_per_key: usize,
    /// Re-enrollment tokens whose rate-limit buckets are kept; the least recently used go first.
    pub max_token_buckets: usize,
}

/// Default of `--max-concurrent-per-key`.
pub const DEFAULT_MAX_CONCURRENT_PER_KEY: usize = 64;
/// Default of `--max-token-buckets`.
pub const DEFAULT_MAX_TOKEN_BUCKETS: usize = 10_000;

impl Default for CallerLimits {
    fn default() -> Self {
        CallerLimits {
            max_concurrent_per_key: DEFAULT_MAX_CONCURRENT_PER_KEY,
            max_token_buckets: DEFAULT_MAX_TOKEN_BUCKETS,
        }
    }
}

/// The rate-limit buckets of re-enrollment tokens, by the token's sha256, each with the tick of
/// its last use. Holds at most `cap` entries: past that the least recently used are dropped.
#[derive(Debug, Default)]
struct TokenBuckets {
    buckets: HashMap<[u8; 32], (TokenBucket, u64)>,
    tick: u64,
}

impl TokenBuckets {
    fn take(
        &mut self,
        hash: &[u8; 32],
        limit: RateLimit,
        cap: usize,
        now: Instant,
    ) -> std::result::Result<(), Duration> {
        self.tick += 1;
        let tick = self.tick;
        if !self.buckets.contains_key(hash) && self.buckets.len() >= cap.max(1) {
            // Drop the least recently used eighth at once, so that eviction is not a scan per call.
            let mut ticks: Vec<u64> = self.buckets.values().map(|(_, t)| *t).collect();
            let cut = (ticks.len() / 8).max(1);
            let (_, oldest_kept, _) = ticks.select_nth_unstable(cut - 1);
            let threshold = *oldest_kept;
            self.buckets.retain(|_, (_, t)| *t > threshold);
        }
        let (bucket, used) = self.buckets.entry(*hash).or_insert_with(|| (TokenBucket::new(limit), tick));
        *used = tick;
        bucket.take(now)
    }

    fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// The keys the server accepts.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Arc<Vec<Key>>,
    quotas: Arc<HashMap<Tenant, TenantQuota>>,
    /// Re-enrollment tokens' buckets, by the token's sha256.
    token_limit: RateLimit,
    token_buckets: Arc<Mutex<TokenBuckets>>,
    /// Development mode: every call is this principal, with or without a key.
    dev: Option<Arc<Principal>>,
    limits: CallerLimits,
    /// Calls in flight per key (same order as `keys`; the last one is the development principal's).
    in_flight: Arc<Vec<Arc<tokio::sync::Semaphore>>>,
}

fn semaphores(count: usize, limits: CallerLimits) -> Arc<Vec<Arc<tokio::sync::Semaphore>>> {
    let permits = limits.max_concurrent_per_key.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    Arc::new((0..=count).map(|_| Arc::new(tokio::sync::Semaphore::new(permits))).collect())
}

/// sha256 of a secret, as stored in the keys file.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    // `from_str_radix` alone would take a sign ("+f"), so check the digits first.
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Loads the at-rest encryption key: a file of 64 hex characters (32 bytes), trailing
/// whitespace allowed. Errors say what is wrong with the file, never what it holds.
pub fn load_encryption_key(path: &Path) -> Result<EncryptionKey> {
    let bad =
        |message: String| Error::Unavailable { message: format!("encryption key file {}: {message}", path.display()) };
    let contents = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let text = contents.trim_ascii_end();
    if text.len() != 64 {
        return Err(bad(format!(
            "must hold 64 hex characters (32 random bytes), not {} characters; see README: encryption at rest",
            text.len()
        )));
    }
    let bytes = std::str::from_utf8(text)
        .ok()
        .and_then(parse_hex32)
        .ok_or_else(|| bad("must hold only hex digits (0-9, a-f)".into()))?;
    Ok(EncryptionKey::from_bytes(&bytes))
}

/// Equality that takes the same time wherever the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl KeyRing {
    /// Loads and checks the keys file.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Unavailable { message: format!("keys file {}: {message}", path.display()) };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let file: KeysFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut keys = Vec::new();
        for entry in file.keys {
            let tenant = Tenant::new(&entry.tenant)
                .ok_or_else(|| bad(format!("key {:?}: tenant must be 1-64 of A-Z a-z 0-9 . _ -", entry.name)))?;
            let scopes = entry
                .scopes
                .iter()
                .map(|s| Scope::parse(s).ok_or_else(|| bad(format!("key {:?}: unknown scope {s:?}", entry.name))))
                .collect::<Result<Vec<_>>>()?;
            let hash = parse_hex32(&entry.sha256.to_ascii_lowercase())
                .ok_or_else(|| bad(format!("key {:?}: sha256 must be 64 hex digits", entry.name)))?;
            if keys.iter().any(|k: &Key| k.principal.key_name == entry.name) {
                return Err(bad(format!("key name {:?} appears twice", entry.name)));
            }
            if entry.development {
                tracing::warn!(
                    key = %entry.name,
                    tenant = %tenant.as_str(),
                    "DEVELOPMENT KEY LOADED: its secret is published in the README; never use this keys file in production"
                );
            }
            if let Some(limit) = entry.rate_limit
                && !valid_limit(limit)
            {
                return Err(bad(format!("key {:?}: rate_limit needs per_second >= 0.001 and burst >= 1", entry.name)));
            }
            keys.push(Key {
                hash,
                principal: Arc::new(Principal { key_name: entry.name, tenant, scopes }),
                limiter: entry.rate_limit.map(TokenBucket::new),
            });
        }
        if keys.is_empty() {
            return Err(bad("no keys".into()));
        }
        let mut quotas = HashMap::new();
        for (name, quota) in file.tenants {
            let tenant = Tenant::new(&name).ok_or_else(|| bad(format!("tenants: {name:?} is not a tenant name")))?;
            if quota.max_users == Some(0) || quota.max_faces == Some(0) {
                return Err(bad(format!("tenants: {name:?}: a quota must be at least 1")));
            }
            quotas.insert(tenant, quota);
        }
        let token_limit = file.token_rate_limit.unwrap_or(DEFAULT_TOKEN_LIMIT);
        if !valid_limit(token_limit) {
            return Err(bad("token_rate_limit needs per_second >= 0.001 and burst >= 1".into()));
        }
        let limits = CallerLimits::default();
        Ok(KeyRing {
            in_flight: semaphores(keys.len(), limits),
            keys: Arc::new(keys),
            quotas: Arc::new(quotas),
            token_limit,
            token_buckets: Arc::default(),
            dev: None,
            limits,
        })
    }

    /// Development mode: no keys file; every call acts as key "dev" of tenant "dev" with every
    /// scope. The caller must announce it loudly.
    pub fn development() -> Self {
        let principal = Principal {
            key_name: "dev".into(),
            tenant: Tenant::new("dev").expect("valid tenant name"),
            scopes: Scope::ALL.to_vec(),
        };
        let limits = CallerLimits::default();
        KeyRing {
            keys: Arc::new(Vec::new()),
            quotas: Arc::default(),
            token_limit: DEFAULT_TOKEN_LIMIT,
            token_buckets: Arc::default(),
            dev: Some(Arc::new(principal)),
            in_flight: semaphores(0, limits),
            limits,
        }
    }

    /// The same keys with the limits of the flags.
    pub fn with_limits(mut self, limits: CallerLimits) -> Self {
        self.in_flight = semaphores(self.keys.len(), limits);
        self.limits = limits;
        self
    }

    /// The tenant quotas of the keys file.
    pub fn quotas(&self) -> HashMap<Tenant, TenantQuota> {
        self.quotas.as_ref().clone()
    }

    pub fn is_development(&self) -> bool {
        self.dev.is_some()
    }

    /// The principal of a presented secret; `None` when no key matches. Every stored hash is
    /// compared, in constant time, whichever matches.
    pub fn authenticate(&self, secret: Option<&str>) -> Option<Arc<Principal>> {
        if let Some(dev) = &self.dev {
            return Some(dev.clone());
        }
        let presented = hash_secret(secret?);
        let mut found = None;
        for key in self.keys.iter() {
            if constant_time_eq(&key.hash, &presented) {
                found = Some(key.principal.clone());
            }
        }
        found
    }

    /// Counts an UpdateFace call authorised by the re-enrollment token whose sha256 is `hash`
    /// against that token's bucket: RATE_LIMITED (with the wait) when it is empty. Call it only
    /// for tokens that exist: every call may create a bucket (at most `max_token_buckets`).
    pub fn admit_token(&self, hash: &[u8; 32]) -> Result<()> {
        let mut buckets = self.token_buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        buckets
            .take(hash, self.token_limit, self.limits.max_token_buckets, Instant::now())
            .map_err(Error::token_rate_limited)
    }

    /// Rate-limit buckets held for re-enrollment tokens (tests check the cap).
    pub fn token_buckets(&self) -> usize {
        self.token_buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// A slot among the calls `principal`'s key may have in flight, held until the call is
    /// answered: RATE_LIMITED (retry shortly) when all are taken.
    pub fn concurrency_permit(&self, principal: &Arc<Principal>) -> Result<tokio::sync::OwnedSemaphorePermit> {
        let slot = self.keys.iter().position(|k| Arc::ptr_eq(&k.principal, principal)).unwrap_or(self.keys.len());
        let semaphore = self.in_flight.get(slot).ok_or_else(|| Error::bug("no concurrency slot for a key"))?;
        semaphore.clone().try_acquire_owned().map_err(|_| Error::ResourceExhausted {
            reason: crate::error::Reason::RateLimited,
            message: "too many calls of this API key are in flight, retry shortly".into(),
            retry_after: Some(Duration::from_millis(100)),
            metadata: vec![("max_concurrent_per_key", self.limits.max_concurrent_per_key.to_string())],
        })
    }

    /// Counts a call against the rate limit of `principal`'s key: RATE_LIMITED (with the wait)
    /// when its bucket is empty.
    pub fn admit(&self, principal: &Arc<Principal>) -> Result<()> {
        let key = self.keys.iter().find(|k| Arc::ptr_eq(&k.principal, principal));
        match key.and_then(|k| k.limiter.as_ref()) {
            Some(limiter) => limiter.take(Instant::now()).map_err(Error::rate_limited),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8; 32]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn loads_keys_and_matches_only_the_right_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let body = format!(
            r#"{{"keys": [{{"name": "a", "tenant": "t1", "scopes": ["faces:read"], "sha256": "{}"}},
                          {{"name": "b", "tenant": "t2", "scopes": [], "sha256": "{}"}}]}}"#,
            hex(&hash_secret("secret-a")),
            hex(&hash_secret("secret-b"))
        );
        std::fs::write(&path, body).unwrap();
        let ring = KeyRing::load(&path).unwrap();
        let a = ring.authenticate(Some("secret-a")).unwrap();
        assert_eq!((a.key_name.as_str(), a.tenant.as_str()), ("a", "t1"));
        assert_eq!(a.scopes, vec![Scope::FacesRead]);
        assert_eq!(ring.authenticate(Some("secret-b")).unwrap().tenant.as_str(), "t2");
        assert!(ring.authenticate(Some("secret-c")).is_none());
        assert!(ring.authenticate(None).is_none());
        assert!(!ring.is_development());
    }

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let bucket = TokenBucket::new(RateLimit { per_second: 2.0, burst: 3 });
        let start = Instant::now();
        for _ in 0..3 {
            assert!(bucket.take(start).is_ok());
        }
        let wait = bucket.take(start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert!(bucket.take(start + Duration::from_millis(250)).is_err());
        assert!(bucket.take(start + Duration::from_millis(500)).is_ok());
        // A long pause refills to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..5).filter(|_| bucket.take(later).is_ok()).count(), 3);
    }

    #[test]
    fn token_buckets_stay_under_their_cap_and_drop_the_least_recently_used() {
        let limit = RateLimit { per_second: 0.001, burst: 1 };
        let mut buckets = TokenBuckets::default();
        let now = Instant::now();
        let hash = |i: u32| {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_be_bytes());
            h
        };
        // Token 0 is used often; the others once each.
        assert!(buckets.take(&hash(0), limit, 100, now).is_ok());
        for i in 1..10_000 {
            let _ = buckets.take(&hash(i), limit, 100, now);
            if i % 50 == 0 {
                assert!(buckets.take(&hash(0), limit, 100, now).is_err(), "token 0 kept its spent bucket");
            }
            assert!(buckets.len() <= 100, "{} buckets at token {i}", buckets.len());
        }
        // A recent token keeps its (empty) bucket; a long-evicted one starts afresh.
        assert!(buckets.take(&hash(9_999), limit, 100, now).is_err());
        assert!(buckets.take(&hash(1), limit, 100, now).is_ok());
    }

    #[test]
    fn loads_an_encryption_key_file_and_refuses_malformed_ones_without_echoing_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let good = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        for body in [good.to_owned(), format!("{good}\n"), format!("{good}\r\n")] {
            std::fs::write(&path, body).unwrap();
            assert!(load_encryption_key(&path).is_ok());
        }
        let secretish = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";
        for (body, says) in [
            (secretish[..62].to_owned(), "64 hex characters"),
            (format!("{secretish}00"), "64 hex characters"),
            (String::new(), "64 hex characters"),
            (format!("{}zz", &secretish[..62]), "hex digits"),
            (format!("+5{}", &secretish[..62]), "hex digits"),
            (format!(" {}", &secretish[..63]), "hex digits"),
        ] {
            std::fs::write(&path, body).unwrap();
            let message = load_encryption_key(&path).unwrap_err().to_string();
            assert!(message.contains(says) && message.contains("encryption key file"), "{message}");
            assert!(!message.contains("5ec7e7"), "the message shows the file's contents: {message}");
        }
        let missing = load_encryption_key(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(missing.contains("encryption key file"), "{missing}");
    }

    #[test]
    fn rejects_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        for body in [
            r#"{"keys": []}"#,
            r#"{"keys": [{"name": "a", "tenant": "bad tenant", "scopes": [], "sha256": "00"}]}"#,
            r#"{"keys": [{"name": "a", "tenant": "t", "scopes": ["root"], "sha256": "00"}]}"#,
            r#"{"keys": [{"name": "a", "tenant": "t", "scopes": [], "sha256": "xyz"}]}"#,
            r#"{"keys": [{"name": "a", "tenant": "t", "scopes": [], "sha256": "00", "secret": "plain"}]}"#,
            r#"{"keys": [{"name": "a", "tenant": "t", "scopes": [], "sha256": "0000000000000000000000000000000000000000000000000000000000000000", "rate_limit": {"per_second": 0, "burst": 1}}]}"#,
        ] {
            std::fs::write(&path, body).unwrap();
            assert!(KeyRing::load(&path).is_err(), "{body}");
        }
    }
}
