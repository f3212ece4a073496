//! The listener's accept loop with a cap on open connections: a connection holds a permit
//! until it closes, and while every permit is taken the loop stops accepting, so further
//! clients wait in the kernel's listen backlog instead of costing the server memory. A client
//! that sends nothing within `--handshake-timeout` of connecting is closed.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection and its place among the open ones.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

/// Accepts on `listener`, at most `max` connections open at once, with TCP_NODELAY set (without
/// it small HTTP/2 frames wait on delayed ACKs, about 40 ms a reply). The loop ends when the
/// server drops the stream.
pub(crate) fn limited(
    listener: TcpListener,
    max: usize,
    first_bytes_within: std::time::Duration,
) -> ReceiverStream<std::io::Result<Connection>> {
    let (tx, rx) = mpsc::channel(16);
    let open = Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS)));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                permit = open.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = tx.closed() => return,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let item = match accepted {
                Ok((stream, _)) => {
                    // A socket that refuses the option still works, only slower.
                    let _ = stream.set_nodelay(true);
                    // A client that connects and says nothing gives its slot back after
                    // `first_bytes_within`, so silent sockets cannot hold every slot for long.
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let mut byte = [0u8; 1];
                        if let Ok(Ok(n)) = tokio::time::timeout(first_bytes_within, stream.peek(&mut byte)).await
                            && n > 0
                        {
                            let _ = tx.send(Ok(Connection { stream, _permit: permit })).await;
                        }
                    });
                    continue;
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    Err(e)
                }
            };
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
