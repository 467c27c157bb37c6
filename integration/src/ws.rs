//! A WebSocket client written by hand on a TCP socket, for the forwarding stream's
//! hostile-input tests: the upgrade with a wrong or missing secret, and frames a
//! library would never send (unmasked, oversized, text, cut short, garbage).

use std::io;
use std::time::Duration;

use crate::raw_http::{RawConn, RawReply};

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
    conn: RawConn,
}

impl WsConn {
    /// Connects to `addr` and writes `request` (an upgrade, maybe followed by frames);
    /// reads wait at most `timeout`.
    pub fn open(addr: &str, request: &[u8], timeout: Duration) -> io::Result<WsConn> {
        let mut conn = RawConn::connect(addr, timeout)?;
        conn.send(request)?;
        Ok(WsConn { conn })
    }

    /// Reads the answer to the upgrade (its body too, when it has one).
    pub fn read_head(&mut self) -> io::Result<RawReply> {
        self.conn.read_reply()
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.conn.send(bytes)
    }

    /// Reads one frame the server sent (servers do not mask): its opcode and payload.
    pub fn read_frame(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let head = self.conn.peek(2)?;
        let (opcode, short) = (head[0] & 0x0f, head[1] & 0x7f);
        let len = match short {
            126 => {
                let b = self.conn.take(4)?;
                u64::from(u16::from_be_bytes([b[2], b[3]]))
            }
            127 => {
                let b = self.conn.take(10)?;
                u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"))
            }
            n => {
                self.conn.take(2)?;
                u64::from(n)
            }
        };
        let payload = self
            .conn
            .take(usize::try_from(len).expect("a test frame fits in memory"))?;
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
        self.conn.wait_closed()
    }
}
