//! A WebSocket client written by hand on a TCP socket, for the forwarding stream's
//! hostile-input tests: the upgrade with a wrong or missing secret, and frames a
//! library would never send (unmasked, oversized, text, cut short, garbage).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Opcodes of RFC 6455.
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The mask every frame of this client carries (when masked).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The bytes of one final frame; `announced` overrides the length in the header
/// (a frame that claims more than it carries).
pub fn frame_bytes(opcode: u8, payload: &[u8], masked: bool, announced: Option<u64>) -> Vec<u8> {
    let len = announced.unwrap_or(payload.len() as u64);
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![0x80 | opcode];
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// The upgrade request of `GET path` with extra `headers`.
pub fn upgrade_request(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// One connection: the answer to its upgrade request, then frames.
pub struct WsConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl WsConn {
    /// Connects to `addr` and writes `request` (an upgrade, maybe followed by frames);
    /// reads wait at most `timeout`.
    pub fn open(addr: &str, request: &[u8], timeout: Duration) -> io::Result<WsConn> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(request)?;
        Ok(WsConn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Reads the answer's head: its status and header lines. With a `Content-Length`,
    /// the body is read too and returned.
    pub fn read_head(&mut self) -> io::Result<(u16, String, Vec<u8>)> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, head.clone()))?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while self.buf.len() < length {
            self.fill()?;
        }
        let body = self.buf.drain(..length).collect();
        Ok((status, head, body))
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one frame the server sent (servers do not mask): its opcode and payload.
    pub fn read_frame(&mut self) -> io::Result<(u8, Vec<u8>)> {
        self.want(2)?;
        let opcode = self.buf[0] & 0x0f;
        let (len, header) = match self.buf[1] & 0x7f {
            126 => {
                self.want(4)?;
                (u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4)
            }
            127 => {
                self.want(10)?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        let end = header + usize::try_from(len).expect("a test frame fits in memory");
        self.want(end)?;
        let payload = self.buf[header..end].to_vec();
        self.buf.drain(..end);
        Ok((opcode, payload))
    }

    /// Reads frames until a close frame: its status code (0 when it carries none).
    pub fn read_close(&mut self) -> io::Result<u16> {
        loop {
            let (opcode, payload) = self.read_frame()?;
            if opcode == CLOSE {
                return Ok(payload
                    .get(..2)
                    .map_or(0, |c| u16::from_be_bytes([c[0], c[1]])));
            }
        }
    }

    /// Waits for the server to close the connection, dropping what it sends first;
    /// `Ok` once closed, `Err` on a timeout.
    pub fn wait_closed(&mut self) -> io::Result<()> {
        loop {
            match self.fill() {
                Ok(()) => self.buf.clear(),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    fn want(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(())
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
