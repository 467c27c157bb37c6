//! The simulated gossip network: chitchat's in-memory [`ChannelTransport`]
//! (it encodes every envelope as UDP would and counts its bytes) with a
//! one-way delay and a loss rate added, and the bytes and messages each node
//! sent. Delays run on tokio's clock: under a paused clock a gossip round
//! costs no wall time.
//!
//! chitchat's own delay and loss wrappers (`TransportExt`) draw from an
//! unseeded generator; this one is seeded, so a run is repeatable up to
//! chitchat's own choice of gossip peers.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{ChannelTransport, RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::ChitchatEnvelope;
use tokio::time::Instant;

use crate::sim::zipf::SimRng;

/// How the simulated gossip network misbehaves.
#[derive(Debug, Clone, Copy)]
pub struct GossipFaults {
    /// One-way delay of every datagram.
    pub delay: Duration,
    /// Share of datagrams lost, in `[0, 1)`.
    pub loss: f64,
    pub seed: u64,
}

/// Bytes and datagrams one node sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub bytes: u64,
    pub messages: u64,
}

/// The in-memory gossip network every simulated node opens its socket on.
#[derive(Clone)]
pub struct GossipNet {
    channel: ChannelTransport,
    faults: GossipFaults,
    sent: Arc<Mutex<HashMap<SocketAddr, Sent>>>,
}

impl GossipNet {
    pub fn new(faults: GossipFaults) -> Self {
        GossipNet {
            channel: ChannelTransport::default(),
            faults,
            sent: Arc::default(),
        }
    }

    /// What each address sent so far.
    pub fn sent(&self) -> HashMap<SocketAddr, Sent> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl Transport for GossipNet {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = self.channel.open(listen_addr).await?;
        let seed = self.faults.seed ^ u64::from(listen_addr.port()).wrapping_mul(0x9E37);
        Ok(Box::new(SimSocket {
            addr: listen_addr,
            inner,
            faults: self.faults,
            rng: SimRng::new(seed),
            arriving: VecDeque::new(),
            sent: Arc::clone(&self.sent),
        }))
    }
}

struct SimSocket {
    addr: SocketAddr,
    inner: Box<dyn Socket>,
    faults: GossipFaults,
    rng: SimRng,
    /// Datagrams received and not yet due, oldest first (kept here: chitchat
    /// cancels `recv` every round).
    arriving: VecDeque<(Instant, RecvOutcome)>,
    sent: Arc<Mutex<HashMap<SocketAddr, Sent>>>,
}

#[async_trait]
impl Socket for SimSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.addr)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        if self.rng.unit() < self.faults.loss {
            // Lost before it was encoded: not counted as sent.
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let outcome = self.inner.send(to, envelope).await?;
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let mine = sent.entry(self.addr).or_default();
        mine.bytes += outcome.num_bytes_sent as u64;
        mine.messages += 1;
        Ok(outcome)
    }

    /// Cancellable: a datagram is delivered `delay` after it arrived.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some((due, _)) = self.arriving.front() {
                if *due <= Instant::now() {
                    let (_, outcome) = self.arriving.pop_front().expect("front exists");
                    return Ok(outcome);
                }
            }
            let due = self.arriving.front().map(|(due, _)| *due);
            let next = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                outcome = self.inner.recv() => {
                    let outcome = outcome?;
                    self.arriving.push_back((Instant::now() + self.faults.delay, outcome));
                }
                () = next => {}
            }
        }
    }
}
