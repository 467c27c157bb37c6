//! A tiny RESP2 client over a raw TCP socket: enough to inspect what the node wrote to
//! Redis (PING, GET, PTTL, KEYS, DBSIZE, INFO commandstats, ...) without a redis crate.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One RESP reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

/// A connection to one redis-server.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn connect(port: u16) -> io::Result<Conn> {
        let stream =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one command (as an array of bulk strings) and reads its reply.
    pub fn cmd(&mut self, args: &[&str]) -> io::Result<Value> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&out)?;
        self.read_value()
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\r\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short RESP line",
            ));
        }
        line.truncate(line.len() - 2);
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    fn read_value(&mut self) -> io::Result<Value> {
        let line = self.read_line()?;
        let (kind, rest) = line.split_at(1.min(line.len()));
        let int = |s: &str| {
            s.parse::<i64>().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad RESP {line:?}"))
            })
        };
        Ok(match kind {
            "+" => Value::Simple(rest.to_string()),
            "-" => Value::Error(rest.to_string()),
            ":" => Value::Int(int(rest)?),
            "$" => match int(rest)? {
                n if n < 0 => Value::Bulk(None),
                n => {
                    let mut buf = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut buf)?;
                    buf.truncate(n as usize);
                    Value::Bulk(Some(buf))
                }
            },
            "*" => match int(rest)? {
                n if n < 0 => Value::Array(None),
                n => Value::Array(Some(
                    (0..n)
                        .map(|_| self.read_value())
                        .collect::<io::Result<_>>()?,
                )),
            },
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown RESP reply {line:?}"),
                ))
            }
        })
    }

    pub fn ping(&mut self) -> bool {
        matches!(self.cmd(&["PING"]), Ok(Value::Simple(s)) if s == "PONG")
    }

    pub fn get(&mut self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match self.cmd(&["GET", key])? {
            Value::Bulk(b) => Ok(b),
            other => Err(unexpected("GET", other)),
        }
    }

    /// Milliseconds to live: -2 when the key does not exist, -1 when it has no TTL.
    pub fn pttl(&mut self, key: &str) -> io::Result<i64> {
        self.int(&["PTTL", key])
    }

    pub fn exists(&mut self, key: &str) -> io::Result<bool> {
        Ok(self.int(&["EXISTS", key])? > 0)
    }

    pub fn dbsize(&mut self) -> io::Result<i64> {
        self.int(&["DBSIZE"])
    }

    pub fn keys(&mut self, pattern: &str) -> io::Result<Vec<String>> {
        match self.cmd(&["KEYS", pattern])? {
            Value::Array(Some(items)) => Ok(items
                .into_iter()
                .filter_map(|v| match v {
                    Value::Bulk(Some(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
                    _ => None,
                })
                .collect()),
            other => Err(unexpected("KEYS", other)),
        }
    }

    /// How many times `command` ran on the server so far (`INFO commandstats`; 0 when
    /// it never ran).
    pub fn command_calls(&mut self, command: &str) -> io::Result<u64> {
        let info = match self.cmd(&["INFO", "commandstats"])? {
            Value::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
            other => return Err(unexpected("INFO", other)),
        };
        let prefix = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    fn int(&mut self, args: &[&str]) -> io::Result<i64> {
        match self.cmd(args)? {
            Value::Int(n) => Ok(n),
            other => Err(unexpected(args[0], other)),
        }
    }
}

fn unexpected(cmd: &str, v: Value) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected reply to {cmd}: {v:?}"),
    )
}
