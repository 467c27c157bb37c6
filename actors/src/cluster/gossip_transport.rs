//! [`SealedUdpTransport`]: chitchat's UDP transport with every datagram
//! sealed ([`gossip_seal`](super::gossip_seal)). A datagram that fails
//! authentication, replays one already opened, or is stale is dropped and
//! counted in `llmtrace_gossip_rejected{reason}`; only what opens is parsed
//! as a chitchat envelope.
//!
//! chitchat keeps its envelope encoding to itself: only its own
//! [`UdpSocket`] turns an envelope into bytes and back. So each sealed
//! socket holds one, bound to a private loopback port (`inner`), and a
//! second loopback socket (`tap`): to send, the envelope goes from `inner`
//! to `tap` and leaves the public socket sealed; an opened datagram goes
//! from `tap` to `inner`, which decodes it. Both sides check that what they
//! read came from the other (a local process writing to either port is
//! ignored), and a decoded envelope is handed to chitchat with the address
//! of the peer that sealed it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, UdpSocket};
use chitchat::ChitchatEnvelope;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::gossip_seal::{GossipKey, Opener, Rejected, Sealer, OVERHEAD, SESSION_LEN};
use crate::metrics::ClusterMetrics;

/// Largest UDP payload over IPv4; chitchat fills envelopes up to it.
const MAX_DATAGRAM: usize = 65_507;
/// Longest wait for a datagram crossing loopback between `inner` and `tap`
/// (it is there at once; a missing one was dropped by chitchat as invalid).
const LOOPBACK_WAIT: Duration = Duration::from_millis(200);

/// Opens sealed gossip sockets keyed from the cluster secret.
pub struct SealedUdpTransport {
    secret: Option<String>,
    metrics: Arc<ClusterMetrics>,
}

impl SealedUdpTransport {
    pub fn new(secret: Option<&str>, metrics: Arc<ClusterMetrics>) -> Self {
        SealedUdpTransport {
            secret: secret.map(str::to_string),
            metrics,
        }
    }
}

#[async_trait]
impl chitchat::transport::Transport for SealedUdpTransport {
    async fn open(&self, bind_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let public = tokio::net::UdpSocket::bind(bind_addr)
            .await
            .with_context(|| format!("failed to bind to {bind_addr}/UDP for gossip"))?;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let inner = UdpSocket::open(loopback).await?;
        let tap = tokio::net::UdpSocket::bind(loopback).await?;
        let mut session = [0u8; SESSION_LEN];
        SystemRandom::new()
            .fill(&mut session)
            .map_err(|_| anyhow::anyhow!("no randomness for the gossip session id"))?;
        let secret = self.secret.as_deref();
        Ok(Box::new(SealedUdpSocket {
            inner_addr: inner.local_addr()?,
            tap_addr: tap.local_addr()?,
            public,
            inner,
            tap,
            sealer: GossipKey::new(secret).sealer(session),
            opener: GossipKey::new(secret).opener(),
            buf: vec![0; MAX_DATAGRAM].into_boxed_slice(),
            pending: None,
            metrics: Arc::clone(&self.metrics),
        }))
    }
}

struct SealedUdpSocket {
    /// The cluster port: sealed datagrams only.
    public: tokio::net::UdpSocket,
    /// chitchat's own socket, on loopback: encodes and decodes envelopes.
    inner: UdpSocket,
    inner_addr: SocketAddr,
    /// The other end of `inner`.
    tap: tokio::net::UdpSocket,
    tap_addr: SocketAddr,
    sealer: Sealer,
    opener: Opener,
    buf: Box<[u8]>,
    /// An opened datagram handed to `inner`, not yet decoded: its sender and
    /// until when to wait (kept here: chitchat cancels `recv` every round).
    pending: Option<(SocketAddr, usize, Instant)>,
    metrics: Arc<ClusterMetrics>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Errors after which the socket still works (as chitchat's transport).
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::OutOfMemory
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

impl SealedUdpSocket {
    /// The bytes of `envelope`, as chitchat encodes them (through `tap`).
    async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<Option<usize>> {
        self.inner.send(self.tap_addr, envelope).await?;
        let read = tokio::time::timeout(LOOPBACK_WAIT, async {
            loop {
                let (len, from) = self.tap.recv_from(&mut self.buf).await?;
                if from == self.inner_addr {
                    return Ok::<_, io::Error>(len);
                }
            }
        });
        match read.await {
            Ok(len) => Ok(Some(len?)),
            Err(_) => {
                warn!("gossip envelope lost on loopback; not sent");
                Ok(None)
            }
        }
    }

    fn count(&self, why: Rejected) {
        let m = &self.metrics;
        match why {
            Rejected::Auth => m.gossip_rejected_auth.inc(),
            Rejected::Replay => m.gossip_rejected_replay.inc(),
            Rejected::Stale => m.gossip_rejected_stale.inc(),
        };
    }
}

#[async_trait]
impl Socket for SealedUdpSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.public
            .local_addr()
            .context("failed to get UDP socket address")
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let Some(len) = self.encode(envelope).await? else {
            return Ok(SendOutcome { num_bytes_sent: 0 });
        };
        if len + OVERHEAD > MAX_DATAGRAM {
            // chitchat sizes a delta to the bare UDP maximum and the seal
            // does not fit on top: only a gossiped state (members, runtime
            // overrides) near 64 KB gets here. Dropped, not an error: an
            // error would stop chitchat.
            self.metrics.gossip_oversize.inc();
            warn!(len, %to, "gossip envelope too large to seal into one datagram; not sent");
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let mut sealed = self.buf[..len].to_vec();
        self.sealer.seal(&mut sealed, now_ms());
        let num_bytes_sent = self
            .public
            .send_to(&sealed, to)
            .await
            .context("failed to send chitchat message to peer")?;
        Ok(SendOutcome { num_bytes_sent })
    }

    /// Cancellable (chitchat cancels it every gossip round): what must
    /// survive a cancellation is kept in `self.pending`.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some((from_addr, num_bytes_received, deadline)) = self.pending {
                match tokio::time::timeout_at(deadline, self.inner.recv()).await {
                    Ok(outcome) => {
                        let outcome = outcome?;
                        if outcome.from_addr != self.tap_addr {
                            // Written to the private port by someone else.
                            self.count(Rejected::Auth);
                            continue;
                        }
                        self.pending = None;
                        return Ok(RecvOutcome {
                            from_addr,
                            envelope: outcome.envelope,
                            num_bytes_received,
                        });
                    }
                    Err(_) => {
                        self.pending = None;
                        warn!(from = %from_addr, "authentic gossip datagram chitchat could not decode");
                        continue;
                    }
                }
            }
            let (len, from_addr) = match self.public.recv_from(&mut self.buf).await {
                Ok(r) => r,
                Err(e) if is_transient(&e) => {
                    warn!(error = %e, "transient UDP recv error");
                    continue;
                }
                Err(e) => return Err(e).context("fatal UDP recv error"),
            };
            let plain = match self.opener.open(&mut self.buf[..len], now_ms()) {
                Ok(plain) => plain,
                Err(why) => {
                    self.count(why);
                    debug!(from = %from_addr, len, reason = ?why, "gossip datagram dropped");
                    continue;
                }
            };
            self.tap.send_to(plain, self.inner_addr).await?;
            self.pending = Some((from_addr, len, Instant::now() + LOOPBACK_WAIT));
        }
    }
}
