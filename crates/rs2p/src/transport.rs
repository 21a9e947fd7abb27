//! Getting a connection ready: dials (TCP connect, then TLS), TLS accepts.
//! Each runs as a task the actor tracks in a `JoinSet`, under a deadline,
//! and reports a typed outcome.

use std::net::SocketAddr;
use std::time::Duration;

use rs2p_proto::mesh::{CloseReason, DialId, PeerAddr, TlsFailure};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::tls::Tls;

/// Any connected byte stream the node can talk over.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A connection's transport, ready for the protocol.
pub(crate) enum Io {
    /// Plain TCP (split into owned halves: the reader can wait for
    /// readiness without holding a buffer).
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    /// A stream handed over by the application.
    Attached(Box<dyn Stream>),
}

/// What a transport task reports.
pub(crate) enum Ready {
    /// Our dial `dial` finished.
    Dialed { dial: DialId, result: Result<Io, CloseReason> },
    /// An incoming connection from `from` finished its TLS handshake.
    Accepted { from: SocketAddr, result: Result<Io, CloseReason> },
}

fn tls_failure(e: &std::io::Error) -> CloseReason {
    CloseReason::Tls(crate::tls::explain(e))
}

/// Dials `addr` (then TLS, if on) within `timeout` for each step.
pub(crate) async fn dial(dial: DialId, addr: PeerAddr, timeout: Duration, tls: Option<Tls>) -> Ready {
    let target = (addr.host.clone(), addr.port);
    let result = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Err(_) => Err(CloseReason::DialTimeout),
        Ok(Err(e)) => Err(CloseReason::Io(e.kind())),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            match tls {
                None => Ok(Io::Plain(s)),
                Some(tls) => {
                    let name = Tls::server_name(&addr.host);
                    match tokio::time::timeout(timeout, tls.connector.connect(name, s)).await {
                        Ok(Ok(s)) => Ok(Io::Tls(Box::new(tokio_rustls::TlsStream::Client(s)))),
                        Ok(Err(e)) => Err(tls_failure(&e)),
                        Err(_) => Err(CloseReason::Tls(TlsFailure::Timeout)),
                    }
                }
            }
        }
    };
    Ready::Dialed { dial, result }
}

/// Runs the server side of a TLS handshake within `deadline`.
pub(crate) async fn accept_tls(stream: TcpStream, from: SocketAddr, tls: Tls, deadline: Duration) -> Ready {
    let result = match tokio::time::timeout(deadline, tls.acceptor.accept(stream)).await {
        Ok(Ok(s)) => Ok(Io::Tls(Box::new(tokio_rustls::TlsStream::Server(s)))),
        Ok(Err(e)) => Err(tls_failure(&e)),
        Err(_) => Err(CloseReason::Tls(TlsFailure::Timeout)),
    };
    Ready::Accepted { from, result }
}
