//! Sign-in throttling: after too many failures for one username (or from one address) within
//! a window, further attempts are refused without checking the password, until the window
//! ends. A network a user signed in from lately counts that user's failures apart from
//! everyone else's, so that guesses from elsewhere cannot lock the user out of their usual
//! place (a well-known name such as `admin` would otherwise be locked by anyone at will). Kept
//! in memory per instance.

use std::collections::HashMap;
use std::sync::Mutex;

/// Failures allowed per username, and per source address, in one window.
pub const PER_USERNAME: u32 = 5;
pub const PER_ADDRESS: u32 = 50;
/// Failures allowed from one IPv6 /48 in one window. A /48 (commonly one customer's or one
/// site's allocation) holds 65,536 /64s, each allowed [`PER_ADDRESS`]: without this, one
/// allocation could spray over three million guesses across usernames a window.
pub const PER_SITE: u32 = 500;
/// Personal access tokens one user may make on the account page in an hour.
pub const PAT_CREATIONS_PER_USER_PER_HOUR: u32 = 20;
/// Successful sign-ins on the sign-in page per username per [`WINDOW_SECS`]: each holds an
/// argon2 check and appends `login.succeeded`, so a person who holds their own password cannot
/// loop on it without end. Only successes count (failures have their own limits), so no one
/// without the password can use it to lock a name out. (The admin API's Basic sign-ins, which
/// a script makes at every request, are not counted.)
pub const SIGN_INS_PER_USERNAME: u32 = 30;
pub const WINDOW_SECS: i64 = 15 * 60;
/// Attempts per username, and per address, whose password may be being checked at once. A
/// burst of guesses is checked before any of them has failed, so this bounds what a burst gets
/// beyond the failures allowed (at most `PER_USERNAME - 1 + IN_FLIGHT` a window), while a
/// script may still make a few calls at once as an admin.
pub const IN_FLIGHT: u32 = 8;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    /// Attempts let through whose password is still being checked: at most [`IN_FLIGHT`], so
    /// that concurrent guesses cannot all be checked before the first of them fails.
    pending: u32,
    window_start: i64,
    /// Whether the refusal in this window was recorded already (one event per window).
    recorded: bool,
}

/// How long a network stays known for a username after a sign-in as that user from it.
pub const KNOWN_SECS: i64 = 30 * 86_400;
/// The most networks remembered per username (the oldest go first): one account signing in
/// from many networks pushes out only its own.
const KNOWN_PER_USER: usize = 16;
/// The most usernames with networks remembered; the one whose latest sign-in is oldest goes
/// first.
const MAX_KNOWN_USERS: usize = 50_000;

/// Failure counters by key (`u:<username>`, `u:<username>@<network>` or `ip:<address>`).
#[derive(Default)]
pub struct LoginThrottle {
    entries: Mutex<HashMap<String, Entry>>,
    /// Per `u:<username>`, the networks it signed in from and when it last did from each.
    known: Mutex<HashMap<String, Vec<(String, i64)>>>,
}

/// The decision for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused; `record` is true for the first refusal of the window. `retry_after` is the
    /// rest of the window, or a second when [`IN_FLIGHT`] attempts are being checked.
    Limited {
        record: bool,
        retry_after: i64,
    },
}

/// The username's own counter, and, from a network it signed in from lately, that pair's.
fn user_keys(username: &str, address: Option<&str>) -> (String, Option<String>) {
    let user = format!("u:{}", username.to_lowercase());
    let pair = address.map(|a| format!("{user}@{}", network_of(a)));
    (user, pair)
}

fn keys(username: &str, address: Option<&str>, known: bool) -> Vec<(String, u32)> {
    let (user, pair) = user_keys(username, address);
    let mut k = vec![(
        match pair {
            Some(p) if known => p,
            _ => user,
        },
        PER_USERNAME,
    )];
    if let Some(a) = address {
        k.push((format!("ip:{}", network_of(a)), PER_ADDRESS));
        // Not from a network the username signed in from lately: the /48 is a bound on
        // guesses spread over many /64s, and a neighbour in the /48 (a /56 customer's 256
        // /64s can fill it) must not lock the user out of their usual place.
        if let Some(site) = site_of(a).filter(|_| !known) {
            k.push((format!("{SITE_PREFIX}{site}"), PER_SITE));
        }
    }
    k
}

/// The key prefix of the /48 counters: failures only, no bound on attempts in flight (a
/// whole site's users may be signing in at once).
const SITE_PREFIX: &str = "site:";

/// The /48 an IPv6 address (not an IPv4-mapped one) is in.
fn site_of(address: &str) -> Option<String> {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0);
            Some(format!("{prefix}/48"))
        }
        _ => None,
    }
}

/// What a per-address limit counts by: an IPv4 address, or the /64 an IPv6 address is in (one
/// host is commonly given a whole /64, and would otherwise have 2^64 addresses to spread its
/// requests over). An IPv4-mapped IPv6 address counts as its IPv4 address.
pub fn network_of(address: &str) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{prefix}/64")
            }
        },
        Ok(std::net::IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => address.to_string(),
    }
}

impl LoginThrottle {
    /// Whether an attempt may proceed now; an allowed one is held against the limits until
    /// [`LoginThrottle::settle`] says how it ended, so that a burst of concurrent guesses
    /// cannot all be checked before the first one counts.
    pub fn attempt(&self, username: &str, address: Option<&str>, now: i64) -> Verdict {
        self.attempt_keys(username, address, now).0
    }

    /// [`LoginThrottle::attempt`], with the keys it was held against (to settle those, even
    /// if the network becomes known meanwhile).
    fn attempt_keys(
        &self,
        username: &str,
        address: Option<&str>,
        now: i64,
    ) -> (Verdict, Vec<String>) {
        let keys = keys(username, address, self.is_known(username, address, now));
        let Ok(mut map) = self.entries.lock() else {
            return (Verdict::Allowed, Vec::new());
        };
        let verdict = Self::judge(&mut map, &keys, now);
        if verdict == Verdict::Allowed {
            if map.len() > 100_000 {
                // Counters with no failure in the window (attempts answered busy, successes)
                // count for nothing: gone too, so that a flood of made-up names answered
                // busy cannot grow the map.
                map.retain(|_, e| {
                    e.pending > 0 || (e.failures > 0 && now - e.window_start < WINDOW_SECS)
                });
            }
            for (key, _) in &keys {
                Self::entry(&mut map, key.clone(), now).pending += 1;
            }
        }
        (verdict, keys.into_iter().map(|(k, _)| k).collect())
    }

    /// Whether `username` signed in from `address`'s network within [`KNOWN_SECS`].
    fn is_known(&self, username: &str, address: Option<&str>, now: i64) -> bool {
        let (user, Some(pair)) = user_keys(username, address) else {
            return false;
        };
        self.known.lock().is_ok_and(|k| {
            k.get(&user)
                .is_some_and(|nets| nets.iter().any(|(n, t)| *n == pair && now - t < KNOWN_SECS))
        })
    }

    /// Remembers that `username` signed in from `address`'s network: its failures there are
    /// counted apart from now on ([`KNOWN_SECS`]).
    pub fn remember(&self, username: &str, address: Option<&str>, now: i64) {
        let (user, Some(pair)) = user_keys(username, address) else {
            return;
        };
        let Ok(mut k) = self.known.lock() else {
            return;
        };
        if k.len() >= MAX_KNOWN_USERS && !k.contains_key(&user) {
            k.retain(|_, nets| nets.iter().any(|(_, t)| now - t < KNOWN_SECS));
            if k.len() >= MAX_KNOWN_USERS
                && let Some(oldest) = k
                    .iter()
                    .min_by_key(|(_, nets)| nets.iter().map(|(_, t)| *t).max())
                    .map(|(u, _)| u.clone())
            {
                k.remove(&oldest);
            }
        }
        let nets = k.entry(user).or_default();
        nets.retain(|(n, t)| *n != pair && now - t < KNOWN_SECS);
        if nets.len() >= KNOWN_PER_USER
            && let Some(i) = nets
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(i, _)| i)
        {
            nets.swap_remove(i);
        }
        nets.push((pair, now));
    }

    /// [`LoginThrottle::attempt`], the allowed attempt held by a guard: settled by
    /// [`Held::settle`], or, when the request is dropped before (the client went away while
    /// its password was checked), counted as a failure. Either way it is no longer in flight:
    /// a leaked hold would keep the username's in-flight count up for as long as the process
    /// runs.
    pub fn hold<'a>(
        &'a self,
        username: &str,
        address: Option<&str>,
        now: i64,
    ) -> Result<Held<'a>, Limited> {
        match self.attempt_keys(username, address, now) {
            (Verdict::Allowed, keys) => Ok(Held {
                throttle: self,
                keys,
                now,
                settled: false,
                checking: Default::default(),
            }),
            (
                Verdict::Limited {
                    record,
                    retry_after,
                },
                _,
            ) => Err(Limited {
                record,
                retry_after,
            }),
        }
    }

    /// How an allowed attempt ended: a wrong password (or an unknown or refused user) counts
    /// as a failure; a success, or an attempt that was never checked (the server too busy to
    /// hash), counts for nothing.
    pub fn settle(&self, username: &str, address: Option<&str>, failed: bool, now: i64) {
        let keys = keys(username, address, self.is_known(username, address, now));
        self.settle_keys(keys.into_iter().map(|(k, _)| k), failed, now);
    }

    fn settle_keys(&self, keys: impl Iterator<Item = String>, failed: bool, now: i64) {
        if let Ok(mut map) = self.entries.lock() {
            for key in keys {
                let e = Self::entry(&mut map, key, now);
                e.pending = e.pending.saturating_sub(1);
                if failed {
                    e.failures += 1;
                }
            }
        }
    }

    /// Whether an attempt may proceed now, without holding it against the limits.
    pub fn check(&self, username: &str, address: Option<&str>, now: i64) -> Verdict {
        let keys = keys(username, address, self.is_known(username, address, now));
        match self.entries.lock() {
            Ok(mut map) => Self::judge(&mut map, &keys, now),
            Err(_) => Verdict::Allowed,
        }
    }

    fn judge(map: &mut HashMap<String, Entry>, keys: &[(String, u32)], now: i64) -> Verdict {
        for (key, limit) in keys {
            let limit = *limit;
            if let Some(e) = map.get_mut(key) {
                if now - e.window_start >= WINDOW_SECS {
                    // A new window: what is still being checked carries over.
                    *e = Entry {
                        failures: 0,
                        pending: e.pending,
                        window_start: now,
                        recorded: false,
                    };
                }
                if e.failures >= limit {
                    let record = !e.recorded;
                    e.recorded = true;
                    return Verdict::Limited {
                        record,
                        retry_after: e.window_start + WINDOW_SECS - now,
                    };
                }
                if e.pending >= IN_FLIGHT && !key.starts_with(SITE_PREFIX) {
                    return Verdict::Limited {
                        record: false,
                        retry_after: 1,
                    };
                }
            }
        }
        Verdict::Allowed
    }

    fn entry(map: &mut HashMap<String, Entry>, key: String, now: i64) -> &mut Entry {
        let e = map.entry(key).or_insert(Entry {
            failures: 0,
            pending: 0,
            window_start: now,
            recorded: false,
        });
        if now - e.window_start >= WINDOW_SECS {
            *e = Entry {
                failures: 0,
                pending: e.pending,
                window_start: now,
                recorded: false,
            };
        }
        e
    }

    /// A successful sign-in on the page clears the username's failures (a person who mistyped
    /// is not locked out by their next typo), and remembers the network. Not for the admin
    /// API, where a script signs in at every call: clearing there would give a guesser a fresh
    /// allowance each time (it only remembers the network).
    pub fn succeeded(&self, username: &str, address: Option<&str>, now: i64) {
        self.remember(username, address, now);
        let (user, pair) = user_keys(username, address);
        if let Ok(mut map) = self.entries.lock() {
            for key in std::iter::once(user).chain(pair) {
                if let Some(e) = map.get_mut(&key) {
                    e.failures = 0;
                }
            }
        }
    }
}

/// A refused attempt (as [`Verdict::Limited`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// The first refusal of the window: record it.
    pub record: bool,
    pub retry_after: i64,
}

/// An allowed sign-in attempt, held against the limits until it is settled or dropped.
pub struct Held<'a> {
    throttle: &'a LoginThrottle,
    /// The counters the attempt is held against.
    keys: Vec<String>,
    now: i64,
    settled: bool,
    /// Set once the password is being checked ([`crate::signin::SignIn::sign_in`]).
    checking: std::sync::atomic::AtomicBool,
}

impl Held<'_> {
    /// What the sign-in sets once it checks the password: an attempt dropped after that counts
    /// as a failure, one dropped before (waiting for a hashing slot) as nothing.
    pub fn checking(&self) -> &std::sync::atomic::AtomicBool {
        &self.checking
    }

    /// How the attempt ended: `failed` counts it as a failure.
    pub fn settle(mut self, failed: bool) {
        self.settled = true;
        self.throttle
            .settle_keys(std::mem::take(&mut self.keys).into_iter(), failed, self.now);
    }
}

/// An attempt dropped unsettled while its password was being checked — its caller hung up —
/// counts as a failure: hanging up must not be a way to take the hash slots again and again
/// without the limits ever counting a try. Dropped before (waiting for a slot), it counts as
/// nothing.
impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let tried = self.checking.load(std::sync::atomic::Ordering::SeqCst);
            self.throttle
                .settle_keys(std::mem::take(&mut self.keys).into_iter(), tried, self.now);
        }
    }
}

/// At most `limit` requests per source address in each fixed window, and at most `total`
/// clients taken in from all addresses together: registration and metadata-document intake,
/// which anyone may call and which each add to the ledger and the state for good. The total
/// bounds what many addresses (an IPv6 /48 holds 65,536 /64s) can add between them; it counts
/// what was written ([`Slot::taken`]: a client, or a recorded refusal), so requests that write
/// nothing — malformed, unreachable documents — cannot use it up and shut everyone else out.
/// A request reserves its place just before it writes ([`AddressLimiter::reserve`]), so many
/// at once cannot all pass the total, and slow ones cannot hold it while they fetch.
pub struct AddressLimiter {
    limit: std::sync::atomic::AtomicU32,
    /// Requests from one IPv6 /48 in a window, beside each /64's `limit`; 0 = no such limit.
    site_limit: u32,
    /// With a site limit: per /48, the /64s a request that turned out well came from lately
    /// (see [`AddressLimiter::give_back`]), and when; at most [`KNOWN_PER_SITE`] a /48. They
    /// are held to their own limit only, so that a neighbour filling the /48 cannot shut out
    /// the people who use it — and a few of them, so that whoever can sign in cannot make a
    /// whole /48 known and its limit void.
    known: Mutex<HashMap<String, Vec<(String, i64)>>>,
    total: std::sync::atomic::AtomicU32,
    window_secs: i64,
    entries: Mutex<HashMap<String, (i64, u32)>>,
    /// Slots of the total held by requests still running.
    pending: std::sync::atomic::AtomicU32,
}

/// How long a network a request turned out well from stays known (see
/// [`AddressLimiter::give_back`]); how many are known in one /48 (the newest), and in how many
/// /48s.
const KNOWN_NETWORK_SECS: i64 = 30 * 86_400;
const KNOWN_PER_SITE: usize = 16;
const MAX_KNOWN_SITES: usize = 10_000;

/// The count of a known network's requests, which took no place in its /48.
const UNCHARGED_PREFIX: &str = "free:";

/// The bucket of everything taken in, beside the addresses' buckets.
const ALL: &str = "*";

/// Why [`AddressLimiter::hit`] refused, and for how many seconds more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    /// This address's requests.
    Address(i64),
    /// What was taken in from all addresses together.
    Total(i64),
}

impl OverLimit {
    /// Seconds until the window that refused ends.
    pub fn retry_after(self) -> i64 {
        match self {
            OverLimit::Address(s) | OverLimit::Total(s) => s,
        }
    }
}

/// A request's place in the total while it writes: given back when dropped before
/// [`Slot::committing`], counted when dropped after it (a request cut off while its append
/// was under way may have written), unless [`Slot::wrote_nothing`] says otherwise.
#[must_use]
pub struct Slot<'a> {
    limiter: &'a AddressLimiter,
    held: bool,
    committing: bool,
    /// When it was reserved (the caller's clock): a slot dropped while committing counts in
    /// that window.
    at: i64,
}

impl Slot<'_> {
    /// The request is about to write: from here on, dropping the slot counts it.
    pub fn committing(&mut self) {
        self.committing = true;
    }

    /// What the request wrote counts against the window's total.
    pub fn taken(mut self, now: i64) {
        if std::mem::take(&mut self.held) {
            self.limiter.settle(true, now);
        }
    }

    /// The request wrote nothing: its place goes back.
    pub fn wrote_nothing(mut self) {
        if std::mem::take(&mut self.held) {
            self.limiter.settle(false, 0);
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.held {
            self.limiter.settle(self.committing, self.at);
        }
    }
}

impl AddressLimiter {
    /// `limit` 0 turns the per-address limit off, `total` 0 the total.
    pub fn new(limit: u32, total: u32, window_secs: i64) -> Self {
        AddressLimiter {
            limit: std::sync::atomic::AtomicU32::new(limit),
            site_limit: 0,
            known: Mutex::new(HashMap::new()),
            total: std::sync::atomic::AtomicU32::new(total),
            window_secs: window_secs.max(1),
            entries: Mutex::new(HashMap::new()),
            pending: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// At most `limit` requests from one IPv6 /48 in a window as well: a /48 holds 65,536
    /// /64s, each with the per-address limit.
    pub fn with_site_limit(mut self, limit: u32) -> Self {
        self.site_limit = limit;
        self
    }

    /// The buckets a request from `address` counts in, with their limits: its network's, and
    /// its /48's unless its network is a known one at `now`.
    fn keys_of(&self, address: Option<&str>, limit: u32, now: i64) -> Vec<(String, u32)> {
        let network = address.map_or_else(|| "-".to_string(), network_of);
        let known = |site: &str| {
            self.known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(site)
                .is_some_and(|nets| {
                    nets.iter()
                        .any(|(n, at)| *n == network && now - at < KNOWN_NETWORK_SECS)
                })
        };
        let site = (self.site_limit > 0)
            .then(|| address.and_then(site_of))
            .flatten()
            .filter(|site| !known(site));
        let mut keys = vec![(network, limit)];
        if let Some(site) = site {
            keys.push((format!("{SITE_PREFIX}{site}"), self.site_limit));
        }
        keys
    }

    /// New limits (a reload), from the next request on.
    pub fn set_limits(&self, limit: u32, total: u32) {
        self.limit
            .store(limit, std::sync::atomic::Ordering::Relaxed);
        self.total
            .store(total, std::sync::atomic::Ordering::Relaxed);
    }

    /// A held place leaves `pending`, counted in the window's total when `count`, under the
    /// entries' lock (so no [`AddressLimiter::reserve`] sees it in neither).
    fn settle(&self, count: bool, now: i64) {
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        if count {
            self.window(&mut map, ALL, now).1 += 1;
        }
        let _ = self.pending.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| n.checked_sub(1),
        );
    }

    /// The window of `key`, started again when it is over.
    fn window<'a>(
        &self,
        map: &'a mut HashMap<String, (i64, u32)>,
        key: &str,
        now: i64,
    ) -> &'a mut (i64, u32) {
        let e = map.entry(key.to_string()).or_insert((now, 0));
        if now - e.0 >= self.window_secs {
            *e = (now, 0);
        }
        e
    }

    /// Counts one request from `address`; refused when the address is over its limit.
    /// Requests with no known address share one bucket.
    pub fn hit(&self, address: Option<&str>, now: i64) -> Result<(), OverLimit> {
        self.take(address, now, true)
    }

    /// Counts one request from `address` whatever its count (one that must not be refused,
    /// but brings the next to the limit); given back as [`AddressLimiter::hit`]'s is.
    pub fn count(&self, address: Option<&str>, now: i64) {
        let _ = self.take(address, now, false);
    }

    /// Counts one request from `address` in each of its buckets; with `enforce`, refused
    /// (counting nothing) when one of them is full.
    fn take(&self, address: Option<&str>, now: i64, enforce: bool) -> Result<(), OverLimit> {
        let limit = self.limit.load(std::sync::atomic::Ordering::Relaxed);
        if limit == 0 {
            return Ok(());
        }
        let Ok(mut map) = self.entries.lock() else {
            return Ok(());
        };
        if map.len() > 100_000 {
            let w = self.window_secs;
            map.retain(|_, (start, _)| now - *start < w);
        }
        let mut keys = self.keys_of(address, limit, now);
        if enforce {
            for (key, limit) in &keys {
                let e = self.window(&mut map, key, now);
                if e.1 >= *limit {
                    return Err(OverLimit::Address((e.0 + self.window_secs - now).max(1)));
                }
            }
        }
        // A known network's request took no place in its /48: counted apart, so that giving
        // it back gives back what it took even if the network is no longer known by then.
        if let Some(free) = self.uncharged_key(address, &keys) {
            keys.push((free, u32::MAX));
        }
        for (key, _) in &keys {
            let e = self.window(&mut map, key, now);
            e.1 = e.1.saturating_add(1);
        }
        Ok(())
    }

    /// The key counting a known network's requests that took no place in its /48 (`keys`:
    /// the buckets they were counted in), if the request is one.
    fn uncharged_key(&self, address: Option<&str>, keys: &[(String, u32)]) -> Option<String> {
        let a = address?;
        (self.site_limit > 0 && site_of(a).is_some() && keys.len() == 1)
            .then(|| format!("{UNCHARGED_PREFIX}{}", network_of(a)))
    }

    /// Whether `address` is over its limit now, counting nothing (see
    /// [`AddressLimiter::hit`], which counts).
    pub fn over(&self, address: Option<&str>, now: i64) -> Result<(), OverLimit> {
        let limit = self.limit.load(std::sync::atomic::Ordering::Relaxed);
        if limit == 0 {
            return Ok(());
        }
        let Ok(map) = self.entries.lock() else {
            return Ok(());
        };
        for (key, limit) in self.keys_of(address, limit, now) {
            if let Some((start, n)) = map.get(&key)
                && now - start < self.window_secs
                && *n >= limit
            {
                return Err(OverLimit::Address((start + self.window_secs - now).max(1)));
            }
        }
        Ok(())
    }

    /// Gives back a place [`AddressLimiter::hit`] took in `address`'s window, for a request
    /// that turned out to be one the limit is not for (a sign-in that succeeded). A window
    /// that began after `hit_at` is left alone. With a site limit, the address's network is
    /// known from then on: held to its own limit, not its /48's.
    pub fn give_back(&self, address: Option<&str>, hit_at: i64) {
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        // The buckets it was counted in: its network's, and its /48's unless it was counted
        // as a known network's (whether or not it is known now).
        let in_window =
            |e: &(i64, u32)| e.0 <= hit_at && hit_at - e.0 < self.window_secs && e.1 > 0;
        let network = address.map_or_else(|| "-".to_string(), network_of);
        let mut keys = vec![network.clone()];
        if self.site_limit > 0
            && let Some(site) = address.and_then(site_of)
        {
            let free = format!("{UNCHARGED_PREFIX}{network}");
            keys.push(if map.get(&free).is_some_and(in_window) {
                free
            } else {
                format!("{SITE_PREFIX}{site}")
            });
        }
        for key in keys {
            if let Some(e) = map.get_mut(&key)
                && in_window(e)
            {
                e.1 -= 1;
            }
        }
        drop(map);
        // With a site limit, an IPv6 network is a known one from now on (the newest few of
        // its /48).
        if self.site_limit > 0
            && let Some(a) = address
            && let Some(site) = site_of(a)
        {
            let mut known = self
                .known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if known.len() >= MAX_KNOWN_SITES && !known.contains_key(&site) {
                known.retain(|_, nets| {
                    nets.retain(|(_, at)| hit_at - *at < KNOWN_NETWORK_SECS);
                    !nets.is_empty()
                });
                if known.len() >= MAX_KNOWN_SITES {
                    known.clear();
                }
            }
            let nets = known.entry(site).or_default();
            let network = network_of(a);
            nets.retain(|(n, _)| *n != network);
            if nets.len() >= KNOWN_PER_SITE {
                nets.remove(0);
            }
            nets.push((network, hit_at));
        }
    }

    /// A place in the window's total for a request about to write (take it after any slow
    /// step, such as fetching a document, so that slow requests cannot hold the total);
    /// refused when what was written and what is being written fill it. Refused because of
    /// places still held, the answer says to try again in a few seconds, not at the window's
    /// end.
    pub fn reserve(&self, now: i64) -> Result<Slot<'_>, OverLimit> {
        let total = self.total.load(std::sync::atomic::Ordering::Relaxed);
        let free = Slot {
            limiter: self,
            held: false,
            committing: false,
            at: now,
        };
        if total == 0 {
            return Ok(free);
        }
        let Ok(mut map) = self.entries.lock() else {
            return Ok(free);
        };
        let all = *self.window(&mut map, ALL, now);
        let held = self.pending.load(std::sync::atomic::Ordering::SeqCst);
        if all.1 >= total {
            return Err(OverLimit::Total((all.0 + self.window_secs - now).max(1)));
        }
        if all.1.saturating_add(held) >= total {
            return Err(OverLimit::Total(PENDING_RETRY_SECS));
        }
        // Under the entries' lock: two requests cannot both take the last place.
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Slot {
            limiter: self,
            held: true,
            committing: false,
            at: now,
        })
    }
}

/// When the total is full only of places held by requests still writing: try again soon.
pub const PENDING_RETRY_SECS: i64 = 5;

#[cfg(test)]
mod tests {
    /// With a site limit, the /64s of one IPv6 /48 share a bucket beside their own; IPv4
    /// addresses and other /48s do not, and a place given back is given back in both.
    #[test]
    fn the_64s_of_one_48_share_a_site_bucket() {
        let l = super::AddressLimiter::new(3, 0, 600).with_site_limit(5);
        let t = 1_000;
        let a = |n: u16| format!("2001:db8:1:{n:x}::1");
        for _ in 0..3 {
            assert!(l.hit(Some(&a(1)), t).is_ok());
        }
        assert!(l.hit(Some(&a(1)), t).is_err(), "the /64's own limit");
        assert!(l.hit(Some(&a(2)), t).is_ok());
        assert!(l.hit(Some(&a(3)), t).is_ok());
        assert!(l.hit(Some(&a(4)), t).is_err(), "the /48 is full");
        assert!(l.over(Some(&a(5)), t).is_err());
        assert!(l.hit(Some("2001:db8:2::1"), t).is_ok(), "another /48");
        assert!(l.hit(Some("192.0.2.1"), t).is_ok());
        l.give_back(Some(&a(2)), t);
        assert!(l.hit(Some(&a(4)), t).is_ok(), "given back in the /48 too");
        assert!(l.hit(Some(&a(7)), t).is_err(), "the /48 is full again");
        // A network something turned out well from is held to its own limit only: a
        // neighbour filling the /48 does not shut it out.
        assert!(l.hit(Some(&a(2)), t).is_ok());
        assert!(l.hit(Some(&a(6)), t + 600).is_ok(), "a new window");
        // But only the newest sixteen of a /48: signing in from many /64s does not make the
        // whole /48 known.
        let l = super::AddressLimiter::new(1, 0, 600).with_site_limit(1);
        for n in 0..17 {
            l.give_back(Some(&a(100 + n)), t);
        }
        assert!(l.hit(Some(&a(116)), t).is_ok(), "known");
        assert!(l.hit(Some(&a(101)), t).is_ok(), "known");
        assert!(
            l.hit(Some(&a(100)), t).is_ok(),
            "the oldest forgotten: counts in the /48"
        );
        assert!(l.hit(Some(&a(200)), t).is_err(), "the /48 is full");
        // A known network's request gives back only what it took, even when sixteen newer
        // sign-ins pushed its network out of the known ones meanwhile.
        let l = super::AddressLimiter::new(5, 0, 600).with_site_limit(1);
        l.give_back(Some(&a(1)), t);
        assert!(
            l.hit(Some(&a(1)), t).is_ok(),
            "known: not counted in the /48"
        );
        assert!(l.hit(Some(&a(50)), t).is_ok(), "fills the /48");
        for n in 0..16 {
            // (Sign-ins of the window before: they give back nothing of this one.)
            l.give_back(Some(&a(300 + n)), t - 600);
        }
        l.give_back(Some(&a(1)), t);
        assert!(
            l.hit(Some(&a(60)), t).is_err(),
            "the /48's place was not given back"
        );
    }

    #[test]
    fn many_addresses_together_stop_at_the_total_of_what_was_taken_in() {
        use super::{OverLimit, PENDING_RETRY_SECS};
        let limiter = super::AddressLimiter::new(2, 3, 3600);
        // Places given back (the requests wrote nothing) do not use up the total.
        for _ in 0..5 {
            limiter.reserve(0).unwrap().wrote_nothing();
        }
        // The per-address limit is its own.
        limiter.hit(Some("192.0.2.1"), 0).unwrap();
        limiter.hit(Some("192.0.2.1"), 0).unwrap();
        assert_eq!(
            limiter.hit(Some("192.0.2.1"), 10).err(),
            Some(OverLimit::Address(3590))
        );
        // Three writing at once hold the whole total: a fourth is told to come back soon.
        let mut writing: Vec<_> = (0..3).map(|_| limiter.reserve(20).unwrap()).collect();
        assert_eq!(
            limiter.reserve(21).err(),
            Some(OverLimit::Total(PENDING_RETRY_SECS))
        );
        // One cut off while its append was under way counts (it may have written); one that
        // wrote nothing gives its place back; one is taken in.
        writing[0].committing();
        let mut writing = writing.into_iter();
        drop(writing.next());
        writing.next().unwrap().wrote_nothing();
        writing.next().unwrap().taken(22);
        let last = limiter.reserve(23).unwrap();
        last.taken(24);
        // Three written: full until the window ends.
        assert_eq!(limiter.reserve(30).err(), Some(OverLimit::Total(3570)));
        assert!(limiter.reserve(3600).is_ok());
        // 0 turns a limit off.
        let open = super::AddressLimiter::new(0, 0, 60);
        for _ in 0..1000 {
            open.hit(Some("192.0.2.9"), 0).unwrap();
            open.reserve(0).unwrap().taken(0);
        }
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64() {
        use super::network_of;
        assert_eq!(network_of("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(
            network_of("2001:db8:1:2:ffff::9"),
            network_of("2001:db8:1:2::1")
        );
        assert_ne!(network_of("2001:db8:1:3::1"), network_of("2001:db8:1:2::1"));
        assert_eq!(network_of("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(network_of("192.0.2.7"), "192.0.2.7");
        let l = super::AddressLimiter::new(2, 0, 60);
        assert!(l.hit(Some("2001:db8:1:2::1"), 0).is_ok());
        assert!(l.hit(Some("2001:db8:1:2::2"), 0).is_ok());
        assert!(l.hit(Some("2001:db8:1:2::3"), 0).is_err(), "the same /64");
        assert!(l.hit(Some("2001:db8:1:3::1"), 0).is_ok(), "another /64");
        let t = super::LoginThrottle::default();
        let mut refused = false;
        for i in 0..(super::PER_ADDRESS + 1) {
            let v = t.attempt(&format!("user{i}"), Some(&format!("2001:db8::{i:x}")), 0);
            if let super::Verdict::Limited { .. } = v {
                refused = true;
                break;
            }
            t.settle(
                &format!("user{i}"),
                Some(&format!("2001:db8::{i:x}")),
                true,
                0,
            );
        }
        assert!(refused, "failures from one /64 add up");
    }

    #[test]
    fn failures_from_the_64s_of_one_ipv6_48_add_up() {
        use super::{PER_ADDRESS, PER_SITE, Verdict};
        let t = super::LoginThrottle::default();
        // Every guess from a /64 of its own, for a username of its own: only the /48 counts
        // them all.
        let from = |i: u32| format!("2001:db8:7:{i:x}::1");
        let mut allowed = 0;
        for i in 0..(PER_SITE + 10) {
            let user = format!("user{i}");
            match t.attempt(&user, Some(&from(i)), 0) {
                Verdict::Allowed => {
                    allowed += 1;
                    t.settle(&user, Some(&from(i)), true, 0);
                }
                Verdict::Limited { .. } => break,
            }
        }
        assert_eq!(allowed, PER_SITE);
        const { assert!(PER_SITE > PER_ADDRESS) };
        // Another /48, an IPv4 address and the /48 after the window are not held back.
        assert_eq!(t.attempt("x", Some("2001:db8:8::1"), 0), Verdict::Allowed);
        assert_eq!(t.attempt("y", Some("192.0.2.1"), 0), Verdict::Allowed);
        assert_eq!(
            t.attempt("z", Some(&from(1)), super::WINDOW_SECS),
            Verdict::Allowed
        );
        // A user's usual network is not held to the /48's count (a neighbour could fill it),
        // and a whole site signing in at once is not held back by the in-flight bound.
        t.remember("carol", Some(&from(7)), 0);
        assert_eq!(t.attempt("carol", Some(&from(7)), 0), Verdict::Allowed);
        let t = super::LoginThrottle::default();
        for i in 0..(super::IN_FLIGHT * 2) {
            let user = format!("busy{i}");
            assert_eq!(t.attempt(&user, Some(&from(i)), 0), Verdict::Allowed, "{i}");
        }
        assert_eq!(super::site_of("::ffff:192.0.2.7"), None);
        assert_eq!(
            super::site_of("2001:db8:7:ffff::9").as_deref(),
            Some("2001:db8:7::/48")
        );
    }

    #[test]
    fn a_place_given_back_is_free_again_in_its_window_only() {
        let l = super::AddressLimiter::new(2, 0, 60);
        l.hit(Some("a"), 0).unwrap();
        l.hit(Some("a"), 1).unwrap();
        assert!(l.hit(Some("a"), 2).is_err());
        l.give_back(Some("a"), 1);
        l.hit(Some("a"), 3).unwrap();
        assert!(l.hit(Some("a"), 4).is_err());
        // A place taken in a window that has ended is not given back to the next one.
        l.hit(Some("b"), 0).unwrap();
        l.hit(Some("b"), 60).unwrap();
        l.hit(Some("b"), 61).unwrap();
        l.give_back(Some("b"), 0);
        assert!(l.hit(Some("b"), 62).is_err());
    }

    #[test]
    fn addresses_are_limited_per_window_each_on_its_own() {
        let l = super::AddressLimiter::new(2, 0, 60);
        assert!(l.hit(Some("a"), 0).is_ok() && l.hit(Some("a"), 1).is_ok());
        assert_eq!(
            l.hit(Some("a"), 10).err(),
            Some(super::OverLimit::Address(50))
        );
        assert!(
            l.hit(Some("b"), 10).is_ok(),
            "another address has its own count"
        );
        assert!(l.hit(Some("a"), 60).is_ok(), "a new window");
        assert!(super::AddressLimiter::new(0, 0, 60).hit(None, 0).is_ok());
    }

    use super::*;

    #[test]
    fn five_failures_lock_the_username_for_the_window() {
        let t = LoginThrottle::default();
        for i in 0..PER_USERNAME {
            let now = 100 + i as i64;
            assert_eq!(t.attempt("Alice", Some("1.2.3.4"), now), Verdict::Allowed);
            t.settle("alice", Some("1.2.3.4"), true, now);
        }
        assert!(matches!(
            t.check("alice", Some("5.6.7.8"), 200),
            Verdict::Limited { record: true, .. }
        ));
        assert!(matches!(
            t.attempt("ALICE", None, 201),
            Verdict::Limited { record: false, .. }
        ));
        assert_eq!(t.check("bob", Some("5.6.7.8"), 200), Verdict::Allowed);
        assert_eq!(t.check("alice", None, 100 + WINDOW_SECS), Verdict::Allowed);
    }

    #[test]
    fn concurrent_guesses_are_held_to_the_limit_before_any_is_checked() {
        let t = LoginThrottle::default();
        // A burst: only as many attempts as the limit get through while none has ended.
        let through = (0..200)
            .filter(|_| t.attempt("admin", Some("1.2.3.4"), 10) == Verdict::Allowed)
            .count();
        assert_eq!(through, IN_FLIGHT as usize);
        assert_eq!(
            t.attempt("admin", Some("9.9.9.9"), 10),
            Verdict::Limited {
                record: false,
                retry_after: 1
            },
            "only in flight: try again in a second"
        );
        for _ in 0..through {
            t.settle("admin", Some("1.2.3.4"), true, 11);
        }
        assert!(matches!(
            t.attempt("admin", Some("9.9.9.9"), 12),
            Verdict::Limited { record: true, retry_after } if retry_after > 800
        ));
    }

    /// Guesses from elsewhere lock a well-known name out of new places, not out of a network
    /// it signed in from lately; guesses from that network have a counter of their own.
    #[test]
    fn a_network_that_signed_in_lately_is_not_locked_out_by_guesses_from_elsewhere() {
        let t = LoginThrottle::default();
        t.remember("admin", Some("10.0.0.2"), 100);
        for _ in 0..PER_USERNAME {
            let held = t
                .hold("admin", Some("6.6.6.6"), 200)
                .expect("not yet limited");
            held.settle(true);
        }
        assert!(matches!(
            t.attempt("admin", Some("9.9.9.9"), 201),
            Verdict::Limited { .. }
        ));
        assert_eq!(t.check("ADMIN", Some("10.0.0.2"), 202), Verdict::Allowed);
        // Its own failures still count.
        for _ in 0..PER_USERNAME {
            t.hold("admin", Some("10.0.0.2"), 203).unwrap().settle(true);
        }
        assert!(matches!(
            t.attempt("admin", Some("10.0.0.2"), 204),
            Verdict::Limited { .. }
        ));
        // Known for a while only.
        let later = 100 + KNOWN_SECS;
        t.remember("root", Some("10.0.0.3"), 100);
        assert!(t.is_known("root", Some("10.0.0.3"), 101));
        assert!(!t.is_known("root", Some("10.0.0.3"), later));
        assert!(!t.is_known("root", Some("10.0.0.4"), 101));
        // One account signing in from many networks pushes out only its own.
        t.remember("admin", Some("10.0.0.2"), 400);
        for i in 0..1000 {
            t.remember("mallory", Some(&format!("2001:db8:{i:x}::1")), 400);
        }
        assert!(t.is_known("admin", Some("10.0.0.2"), 401));
        assert_eq!(t.known.lock().unwrap()["u:mallory"].len(), KNOWN_PER_USER);
        // An attempt held while its network becomes known is settled where it was held.
        let held = t.hold("carol", Some("10.0.0.5"), 300).unwrap();
        t.remember("carol", Some("10.0.0.5"), 300);
        held.settle(true);
        let map = t.entries.lock().unwrap();
        assert_eq!((map["u:carol"].pending, map["u:carol"].failures), (0, 1));
    }

    #[test]
    fn an_attempt_dropped_while_its_password_is_checked_counts_as_a_failure() {
        let t = LoginThrottle::default();
        // Clients that hang up while their passwords are checked: the requests are dropped,
        // and with them their holds. Each counts as a try (hanging up is no way around the
        // limits), and none is left in flight (the username is not left full for good).
        // Dropped while waiting for a hashing slot: nothing tried, nothing counted.
        for _ in 0..IN_FLIGHT * 3 {
            drop(t.hold("admin", Some("1.2.3.4"), 10).expect("not limited"));
        }
        assert_eq!(t.entries.lock().unwrap()["u:admin"].failures, 0);
        for _ in 0..PER_USERNAME {
            let held = t.hold("admin", Some("1.2.3.4"), 10).expect("not limited");
            held.checking()
                .store(true, std::sync::atomic::Ordering::SeqCst);
            drop(held);
        }
        {
            let map = t.entries.lock().unwrap();
            let e = map["u:admin"];
            assert_eq!((e.pending, e.failures), (0, PER_USERNAME));
        }
        assert!(t.hold("admin", Some("1.2.3.4"), 10).is_err());
        // Settled ones count as they ended.
        let held = t.hold("bob", Some("1.2.3.4"), 10).expect("not limited");
        held.settle(false);
        assert_eq!(t.entries.lock().unwrap()["u:bob"].failures, 0);
    }

    #[test]
    fn successes_count_for_nothing_and_the_page_clears_the_username() {
        let t = LoginThrottle::default();
        // Many people signing in from one address (an office's NAT) never fill its limit.
        for i in 0..PER_ADDRESS * 3 {
            let user = format!("user{i}");
            assert_eq!(t.attempt(&user, Some("10.0.0.1"), 5), Verdict::Allowed);
            t.settle(&user, Some("10.0.0.1"), false, 5);
        }
        // An admin script's successes do not clear a guesser's failures...
        for _ in 0..PER_USERNAME - 1 {
            assert_eq!(t.attempt("admin", Some("6.6.6.6"), 6), Verdict::Allowed);
            t.settle("admin", Some("6.6.6.6"), true, 6);
        }
        assert_eq!(t.attempt("admin", Some("10.0.0.2"), 7), Verdict::Allowed);
        t.settle("admin", Some("10.0.0.2"), false, 7);
        assert_eq!(t.attempt("admin", Some("6.6.6.6"), 8), Verdict::Allowed);
        t.settle("admin", Some("6.6.6.6"), true, 8);
        assert!(matches!(
            t.attempt("admin", Some("10.0.0.2"), 9),
            Verdict::Limited { record: true, .. }
        ));
        // ...the page's success does.
        for _ in 0..PER_USERNAME - 1 {
            t.attempt("alice", None, 1);
            t.settle("alice", None, true, 1);
        }
        t.succeeded("alice", None, 1);
        t.attempt("alice", None, 2);
        t.settle("alice", None, true, 2);
        assert_eq!(t.check("alice", None, 3), Verdict::Allowed);
    }
}
