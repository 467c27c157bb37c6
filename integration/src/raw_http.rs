//! HTTP/1.1 written by hand on a TCP socket, for what a client library will not do:
//! several requests in flight on one keep-alive connection (pipelined), and bodies
//! sent slowly or never finished. Answers are read by `Content-Length` (every answer a
//! node gives has one).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One answer read off a [`RawConn`].
#[derive(Debug, Clone)]
pub struct RawReply {
    pub status: u16,
    /// Header lines as sent (`Name: value`).
    pub head: String,
    pub body: Vec<u8>,
}

impl RawReply {
    /// The server said it closes the connection after this answer.
    pub fn closes(&self) -> bool {
        self.head
            .lines()
            .any(|l| l.eq_ignore_ascii_case("connection: close"))
    }
}

/// The bytes of `POST path` with a JSON `body` (keep-alive).
pub fn post_json(path: &str, body: &str) -> Vec<u8> {
    let mut req = request_head("POST", path, body.len(), &[]);
    req.extend_from_slice(body.as_bytes());
    req
}

/// The head of `method path` announcing `content_length` body bytes (none of them
/// sent), with `headers` added.
pub fn request_head(
    method: &str,
    path: &str,
    content_length: usize,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// One client connection.
pub struct RawConn {
    stream: TcpStream,
    /// Bytes read past the last answer.
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects to `addr` (`host:port`); reads wait at most `read_timeout`.
    pub fn connect(addr: &str, read_timeout: Duration) -> io::Result<RawConn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(read_timeout))?;
        Ok(RawConn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// A second handle on the socket, to write from another thread.
    pub fn writer(&self) -> io::Result<TcpStream> {
        self.stream.try_clone()
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one whole answer. `UnexpectedEof` when the server closed the connection
    /// before a whole answer arrived; `WouldBlock` / `TimedOut` when none came within
    /// the read timeout.
    pub fn read_reply(&mut self) -> io::Result<RawReply> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
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
        while self.buf.len() < head_end + length {
            self.fill()?;
        }
        let body = self.buf[head_end..head_end + length].to_vec();
        self.buf.drain(..head_end + length);
        Ok(RawReply { status, head, body })
    }

    /// Waits for the server to close the connection, reading (and dropping) whatever
    /// it sends first; `Ok` once closed (end of stream or reset), `Err` on a timeout.
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

    /// The next `n` bytes the server sent, read until they are in, left unread.
    pub fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(&self.buf[..n])
    }

    /// The next `n` bytes the server sent, read.
    pub fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        self.peek(n)?;
        Ok(self.buf.drain(..n).collect())
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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
