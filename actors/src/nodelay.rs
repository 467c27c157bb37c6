//! Outgoing connections with `TCP_NODELAY`, for the awc clients of the node
//! (node to node, and the proxy's upstream). awc leaves Nagle's algorithm on:
//! a request's head and body go out as separate writes, and batches on a
//! forwarding stream as one write each, so with Nagle a write waits for the
//! peer's delayed ACK of the one before (up to 40 ms on Linux).

use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use awc::http::Uri;
use futures_util::future::LocalBoxFuture;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// The TCP connector awc should use (`awc::Connector::connector`).
pub fn connector() -> NoDelay<ConnectorService> {
    NoDelay(actix_tls::connect::Connector::new(Default::default()).service())
}

/// Opens connections with `inner`, then sets `TCP_NODELAY` on them.
#[derive(Clone)]
pub struct NoDelay<S>(S);

type TcpConnection = Connection<Uri, TcpStream>;

impl<S> Service<ConnectInfo<Uri>> for NoDelay<S>
where
    S: Service<ConnectInfo<Uri>, Response = TcpConnection, Error = ConnectError>,
    S::Future: 'static,
{
    type Response = TcpConnection;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<TcpConnection, ConnectError>>;

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        self.0.poll_ready(cx)
    }

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        let connecting = self.0.call(req);
        Box::pin(async move {
            let conn = connecting.await?;
            let _ = conn.io_ref().set_nodelay(true);
            Ok(conn)
        })
    }
}
