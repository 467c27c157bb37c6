//! Sealing of gossip datagrams: [`GossipKey`] authenticates and encrypts
//! every datagram with a key derived from the cluster secret, and
//! [`Opener`] authenticates, decrypts and refuses replays, before anything
//! of the datagram is parsed.
//!
//! A sender picks a random 16-byte session id when its socket opens and
//! numbers its datagrams 1, 2, 3... The session's key is HKDF-SHA256 of the
//! secret (salt [`HKDF_SALT`], info the session id), so two senders never
//! share a (key, nonce) pair even though every node holds the same secret;
//! the nonce is the datagram's number. A datagram:
//!
//! ```text
//! version (1) | session id (16) | number (8, BE) | sent at, ms since the epoch (8, BE)
//! | ChaCha20-Poly1305 ciphertext of the chitchat envelope | tag (16)
//! ```
//!
//! The 33 header bytes are the AEAD's associated data. Replays: a datagram
//! sent more than [`MAX_SKEW_MS`] from the receiver's clock is refused as
//! stale; within that window, each session keeps the highest number seen
//! and a 64-bit bitmap of the ones before it (as IPsec and WireGuard do), so
//! each number opens at most once. A session is forgotten only once every
//! datagram it sent is stale anyway.

use std::collections::HashMap;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf::{Salt, HKDF_SHA256};

/// Wire format version (first byte of every datagram).
pub const VERSION: u8 = 1;
/// Session id length.
pub const SESSION_LEN: usize = 16;
/// Bytes before the ciphertext (the associated data).
pub const HEADER_LEN: usize = 1 + SESSION_LEN + 8 + 8;
/// Bytes sealing adds to an envelope: the header and the tag.
pub const OVERHEAD: usize = HEADER_LEN + 16;
/// Salt of the HKDF extraction: versions the derivation.
pub const HKDF_SALT: &[u8] = b"llmtrace gossip v1";
/// Largest difference between a datagram's send time and the receiver's
/// clock; node clocks must agree within it (NTP).
pub const MAX_SKEW_MS: u64 = 60_000;
/// A session unheard of for this long is forgotten: every datagram it sent
/// is then more than `MAX_SKEW_MS` old by any clock within the skew.
const SESSION_TTL_MS: u64 = 3 * MAX_SKEW_MS;
/// Most sessions remembered (only authenticated ones are); beyond, the
/// least recently heard is forgotten.
const MAX_SESSIONS: usize = 4096;
/// Numbers this far below a session's highest are still accepted once.
const WINDOW: u64 = 64;

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Too short, unknown version, or the tag does not verify (wrong
    /// secret, altered byte, forged).
    Auth,
    /// A number already opened, or too far below the highest.
    Replay,
    /// Sent too long ago or too far ahead of this clock.
    Stale,
}

/// The cluster's gossip key material (the HKDF pseudo-random key of the
/// secret).
pub struct GossipKey {
    prk: ring::hkdf::Prk,
}

impl GossipKey {
    /// Derives from the cluster secret; without one (loopback only) from the
    /// empty string, which every build knows: such gossip is framed the same
    /// way but authenticates nothing.
    pub fn new(secret: Option<&str>) -> Self {
        let prk = Salt::new(HKDF_SHA256, HKDF_SALT).extract(secret.unwrap_or("").as_bytes());
        GossipKey { prk }
    }

    fn session_key(&self, session: &[u8; SESSION_LEN]) -> LessSafeKey {
        let info = [&session[..]];
        let okm = self
            .prk
            .expand(&info, &CHACHA20_POLY1305)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        LessSafeKey::new(UnboundKey::from(okm))
    }

    /// A sealer for a new session with this random id.
    pub fn sealer(&self, session: [u8; SESSION_LEN]) -> Sealer {
        Sealer {
            key: self.session_key(&session),
            session,
            next: 1,
        }
    }

    /// An opener for datagrams of every session.
    pub fn opener(self) -> Opener {
        Opener {
            key: self,
            sessions: HashMap::new(),
        }
    }
}

fn nonce(number: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&number.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals the datagrams of one session.
pub struct Sealer {
    key: LessSafeKey,
    session: [u8; SESSION_LEN],
    /// Number of the next datagram (never reused: the nonce).
    next: u64,
}

impl Sealer {
    /// Replaces `buf` (a serialized envelope) by its sealed datagram.
    pub fn seal(&mut self, buf: &mut Vec<u8>, now_ms: u64) {
        let number = self.next;
        self.next += 1;
        let mut header = [0u8; HEADER_LEN];
        header[0] = VERSION;
        header[1..17].copy_from_slice(&self.session);
        header[17..25].copy_from_slice(&number.to_be_bytes());
        header[25..33].copy_from_slice(&now_ms.to_be_bytes());
        self.key
            .seal_in_place_append_tag(nonce(number), Aad::from(header), buf)
            .expect("a gossip datagram is far below ChaCha20-Poly1305's limit");
        buf.splice(0..0, header);
    }
}

/// What a receiver knows of one sender's session.
struct Session {
    key: LessSafeKey,
    highest: u64,
    /// Bit i: number `highest - i` was opened.
    seen: u64,
    /// Receiver's clock when last heard.
    heard_ms: u64,
}

impl Session {
    fn fresh(&self, number: u64) -> bool {
        number > self.highest
            || (self.highest - number < WINDOW && self.seen & (1 << (self.highest - number)) == 0)
    }

    fn mark(&mut self, number: u64) {
        if number > self.highest {
            let shift = number - self.highest;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = number;
        } else {
            self.seen |= 1 << (self.highest - number);
        }
    }
}

/// Opens datagrams and remembers, per session, which numbers were opened.
pub struct Opener {
    key: GossipKey,
    sessions: HashMap<[u8; SESSION_LEN], Session>,
}

impl Opener {
    /// The envelope bytes of `datagram` (decrypted in place), or why it is
    /// dropped: authentication first (an altered datagram is `Auth`,
    /// whatever it replays), then its time, then its number. Nothing is
    /// remembered of a datagram that fails.
    pub fn open<'a>(&mut self, datagram: &'a mut [u8], now_ms: u64) -> Result<&'a [u8], Rejected> {
        if datagram.len() < OVERHEAD || datagram[0] != VERSION {
            return Err(Rejected::Auth);
        }
        let (header, body) = datagram.split_at_mut(HEADER_LEN);
        let header: [u8; HEADER_LEN] = (&*header).try_into().expect("split at HEADER_LEN");
        let session: [u8; SESSION_LEN] = header[1..17].try_into().expect("16 bytes");
        let number = u64::from_be_bytes(header[17..25].try_into().expect("8 bytes"));
        let sent_ms = u64::from_be_bytes(header[25..33].try_into().expect("8 bytes"));
        let known = self.sessions.get(&session);
        let derived = known.is_none().then(|| self.key.session_key(&session));
        let key = known.map_or_else(|| derived.as_ref().expect("derived"), |s| &s.key);
        let plain = key
            .open_in_place(nonce(number), Aad::from(header), body)
            .map_err(|_| Rejected::Auth)?;
        // Authentic: the time is the sender's own.
        if sent_ms.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(Rejected::Stale);
        }
        if known.is_some_and(|s| !s.fresh(number)) {
            return Err(Rejected::Replay);
        }
        if let Some(key) = derived {
            self.make_room(now_ms);
            self.sessions.insert(
                session,
                Session {
                    key,
                    highest: number,
                    seen: 0,
                    heard_ms: now_ms,
                },
            );
        }
        let s = self.sessions.get_mut(&session).expect("inserted above");
        s.mark(number);
        s.heard_ms = now_ms;
        Ok(plain)
    }

    /// Forgets sessions unheard for [`SESSION_TTL_MS`]; at
    /// [`MAX_SESSIONS`], also the least recently heard.
    fn make_room(&mut self, now_ms: u64) {
        if self.sessions.len() < MAX_SESSIONS {
            return;
        }
        self.sessions
            .retain(|_, s| now_ms.saturating_sub(s.heard_ms) < SESSION_TTL_MS);
        if self.sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.heard_ms)
                .map(|(id, _)| *id)
            {
                self.sessions.remove(&oldest);
            }
        }
    }

    #[cfg(test)]
    fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn sealed(sealer: &mut Sealer, text: &[u8], at: u64) -> Vec<u8> {
        let mut buf = text.to_vec();
        sealer.seal(&mut buf, at);
        buf
    }

    #[test]
    fn opens_what_the_same_secret_sealed_and_hides_it() {
        let mut sealer = GossipKey::new(Some("secret-1")).sealer([7; 16]);
        let mut opener = GossipKey::new(Some("secret-1")).opener();
        let mut d = sealed(&mut sealer, b"node-a 10.0.0.1:7946", NOW);
        assert_eq!(d.len(), 20 + OVERHEAD);
        assert!(!d.windows(6).any(|w| w == b"node-a"), "plaintext leaked");
        assert_eq!(opener.open(&mut d, NOW).unwrap(), b"node-a 10.0.0.1:7946");
    }

    #[test]
    fn wrong_secret_altered_byte_or_truncation_fail_authentication() {
        let mut sealer = GossipKey::new(Some("secret-1")).sealer([7; 16]);
        let d = sealed(&mut sealer, b"hello gossip", NOW);
        let mut other = GossipKey::new(Some("secret-2")).opener();
        assert_eq!(other.open(&mut d.clone(), NOW), Err(Rejected::Auth));
        let mut none = GossipKey::new(None).opener();
        assert_eq!(none.open(&mut d.clone(), NOW), Err(Rejected::Auth));
        let mut opener = GossipKey::new(Some("secret-1")).opener();
        for i in 0..d.len() {
            let mut altered = d.clone();
            altered[i] ^= 0x01;
            assert_eq!(
                opener.open(&mut altered, NOW),
                Err(Rejected::Auth),
                "byte {i}"
            );
        }
        assert_eq!(
            opener.open(&mut d.clone()[..OVERHEAD - 1].to_vec(), NOW),
            Err(Rejected::Auth)
        );
        assert_eq!(opener.sessions(), 0, "nothing remembered of failures");
        assert!(opener.open(&mut d.clone(), NOW).is_ok());
    }

    #[test]
    fn each_datagram_opens_once_even_out_of_order() {
        let mut sealer = GossipKey::new(Some("secret-1")).sealer([1; 16]);
        let mut opener = GossipKey::new(Some("secret-1")).opener();
        let ds: Vec<Vec<u8>> = (0..100).map(|_| sealed(&mut sealer, b"x", NOW)).collect();
        // 1..=70 in order except 40, then 40 (late but inside the window).
        for (i, d) in ds.iter().enumerate().take(70) {
            if i != 39 {
                assert!(opener.open(&mut d.clone(), NOW).is_ok(), "{i}");
            }
        }
        assert!(opener.open(&mut ds[39].clone(), NOW).is_ok(), "reordered");
        for i in [0, 39, 69] {
            assert_eq!(opener.open(&mut ds[i].clone(), NOW), Err(Rejected::Replay));
        }
        // 100 arrives, then 30 is more than 64 below it: refused.
        assert!(opener.open(&mut ds[99].clone(), NOW).is_ok());
        assert_eq!(opener.open(&mut ds[80].clone(), NOW).map(|_| ()), Ok(()));
        assert_eq!(opener.open(&mut ds[30].clone(), NOW), Err(Rejected::Replay));
    }

    #[test]
    fn stale_or_future_datagrams_are_refused() {
        let mut sealer = GossipKey::new(None).sealer([2; 16]);
        let mut opener = GossipKey::new(None).opener();
        let old = sealed(&mut sealer, b"x", NOW - MAX_SKEW_MS - 1);
        let ahead = sealed(&mut sealer, b"x", NOW + MAX_SKEW_MS + 1);
        let edge = sealed(&mut sealer, b"x", NOW - MAX_SKEW_MS);
        assert_eq!(opener.open(&mut old.clone(), NOW), Err(Rejected::Stale));
        assert_eq!(opener.open(&mut ahead.clone(), NOW), Err(Rejected::Stale));
        assert!(opener.open(&mut edge.clone(), NOW).is_ok());
        // Replayed within the window: a replay; later: stale, whether the
        // session is still remembered or not.
        assert_eq!(opener.open(&mut edge.clone(), NOW), Err(Rejected::Replay));
        let later = NOW + SESSION_TTL_MS;
        assert_eq!(opener.open(&mut edge.clone(), later), Err(Rejected::Stale));
        let mut forgetful = GossipKey::new(None).opener();
        assert_eq!(
            forgetful.open(&mut edge.clone(), later),
            Err(Rejected::Stale)
        );
    }

    #[test]
    fn sessions_are_bounded() {
        let key = GossipKey::new(Some("secret-1"));
        let mut opener = GossipKey::new(Some("secret-1")).opener();
        for i in 0..(MAX_SESSIONS as u32 + 10) {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            let mut d = sealed(&mut key.sealer(id), b"x", NOW);
            assert!(opener.open(&mut d, NOW + u64::from(i)).is_ok());
        }
        assert_eq!(opener.sessions(), MAX_SESSIONS);
    }
}
