//! A recording relay for a node's cluster port: TCP and UDP on one loopback
//! port, forwarded to the node's real cluster port, every byte kept in both
//! directions. A node advertising the relay's address (`--cluster-advertise`)
//! gets all its node-to-node traffic through it: the capture a network
//! observer would make, without root or tcpdump. Threads stop on drop.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How often blocked relay threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Capture {
    /// Datagrams sent to the node, in order.
    to_node: Vec<Vec<u8>>,
    /// Every UDP and TCP byte, both directions.
    all: Vec<u8>,
}

/// A running relay in front of one cluster port.
pub struct Relay {
    addr: SocketAddr,
    capture: Arc<Mutex<Capture>>,
    stop: Arc<AtomicBool>,
}

fn bind_pair() -> (TcpListener, UdpSocket) {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind relay TCP");
        if let Ok(udp) = UdpSocket::bind(tcp.local_addr().expect("relay addr")) {
            return (tcp, udp);
        }
    }
    panic!("no loopback port free for both TCP and UDP");
}

impl Relay {
    /// Relays to `target` (TCP and UDP).
    pub fn start(target: SocketAddr) -> Relay {
        let (tcp, udp) = bind_pair();
        let relay = Relay {
            addr: tcp.local_addr().expect("relay addr"),
            capture: Arc::default(),
            stop: Arc::default(),
        };
        let (capture, stop) = (relay.capture.clone(), relay.stop.clone());
        thread::spawn(move || udp_front(udp, target, capture, stop));
        let (capture, stop) = (relay.capture.clone(), relay.stop.clone());
        thread::spawn(move || tcp_front(tcp, target, capture, stop));
        relay
    }

    /// The address to advertise (TCP and UDP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The datagrams sent to the node so far.
    pub fn datagrams_to_node(&self) -> Vec<Vec<u8>> {
        self.capture.lock().unwrap().to_node.clone()
    }

    /// Every byte relayed so far, UDP and TCP, both directions.
    pub fn captured(&self) -> Vec<u8> {
        self.capture.lock().unwrap().all.clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Datagrams from each client go to the node from a socket of their own, so
/// the node's replies can be sent back to that client.
fn udp_front(
    front: UdpSocket,
    target: SocketAddr,
    capture: Arc<Mutex<Capture>>,
    stop: Arc<AtomicBool>,
) {
    let front = Arc::new(front);
    front.set_read_timeout(Some(POLL)).expect("timeout");
    let mut backs: HashMap<SocketAddr, UdpSocket> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, client)) = front.recv_from(&mut buf) else {
            continue;
        };
        {
            let mut c = capture.lock().unwrap();
            c.to_node.push(buf[..len].to_vec());
            c.all.extend_from_slice(&buf[..len]);
        }
        let back = backs.entry(client).or_insert_with(|| {
            let back = UdpSocket::bind("127.0.0.1:0").expect("bind relay back socket");
            back.set_read_timeout(Some(POLL)).expect("timeout");
            let reader = back.try_clone().expect("clone");
            let (front, capture, stop) = (front.clone(), capture.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((len, _)) = reader.recv_from(&mut buf) {
                        capture.lock().unwrap().all.extend_from_slice(&buf[..len]);
                        let _ = front.send_to(&buf[..len], client);
                    }
                }
            });
            back
        });
        let _ = back.send_to(&buf[..len], target);
    }
}

fn tcp_front(
    front: TcpListener,
    target: SocketAddr,
    capture: Arc<Mutex<Capture>>,
    stop: Arc<AtomicBool>,
) {
    front.set_nonblocking(true).expect("nonblocking");
    while !stop.load(Ordering::Relaxed) {
        let Ok((client, _)) = front.accept() else {
            thread::sleep(POLL);
            continue;
        };
        client.set_nonblocking(false).expect("blocking");
        let Ok(node) = TcpStream::connect(target) else {
            continue;
        };
        for (from, to) in [
            (client.try_clone().unwrap(), node.try_clone().unwrap()),
            (node, client),
        ] {
            let (capture, stop) = (capture.clone(), stop.clone());
            thread::spawn(move || copy(from, to, &capture, &stop));
        }
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream, capture: &Mutex<Capture>, stop: &AtomicBool) {
    from.set_read_timeout(Some(POLL)).expect("timeout");
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                capture.lock().unwrap().all.extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
