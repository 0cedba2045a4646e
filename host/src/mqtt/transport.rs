//! Byte transports under MQTT: a stream socket (TCP or TLS) or a WebSocket carrying MQTT
//! in binary frames. The connection loop is generic over [`Transport`] so one code path
//! serves all four listeners.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

/// What a connection needs from its transport. `read` must be cancel-safe: the
/// connection awaits it inside `select!`.
pub trait Transport: Send + 'static {
    /// Appends received bytes to `buf`; Ok(0) means the peer closed.
    fn read(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>> + Send;
    /// Writes all of `buf`, flushes, and leaves `buf` empty.
    fn write(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<()>> + Send;
    /// Closes the write side gracefully.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// Bytes one read into an empty connection buffer takes at most.
const SCRATCH_BYTES: usize = 8192;

thread_local! {
    /// Where a connection with nothing buffered reads (borrowed only inside one poll):
    /// waiting connections share it instead of each holding a read buffer.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// A plain byte stream (TCP, TLS).
pub struct StreamTransport<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for StreamTransport<S> {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if !buf.is_empty() {
            // A packet in progress: read straight in after it.
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(8192);
            }
            return self.0.read_buf(buf).await;
        }
        // Nothing buffered: wait for data holding no buffer of our own (an idle connection
        // owns none), then copy what came into one of exactly its size.
        std::future::poll_fn(|cx| {
            SCRATCH.with_borrow_mut(|s| {
                let mut rb = ReadBuf::new(&mut s[..]);
                std::task::ready!(Pin::new(&mut self.0).poll_read(cx, &mut rb))?;
                buf.extend_from_slice(rb.filled());
                Poll::Ready(Ok(rb.filled().len()))
            })
        })
        .await
    }

    async fn write(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        self.0.write_all(buf).await?;
        buf.clear();
        self.0.flush().await
    }

    async fn close(&mut self) {
        let _ = self.0.shutdown().await;
    }
}

/// MQTT over WebSocket: binary frames, a packet may span frames and a frame may hold many.
pub struct WsTransport<S>(pub WebSocketStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for WsTransport<S> {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match self.0.next().await {
                None => return Ok(0),
                Some(Err(e)) => return Err(io::Error::other(e)),
                Some(Ok(WsMessage::Binary(b))) => {
                    if b.is_empty() {
                        continue;
                    }
                    buf.extend_from_slice(&b);
                    return Ok(b.len());
                }
                Some(Ok(WsMessage::Close(_))) => return Ok(0),
                Some(Ok(WsMessage::Text(_))) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text frame on an MQTT WebSocket (MQTT requires binary frames)",
                    ))
                }
                // Ping/pong are answered by tungstenite itself.
                Some(Ok(_)) => continue,
            }
        }
    }

    async fn write(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        // The frame takes the buffer's bytes without a copy.
        self.0
            .send(WsMessage::Binary(buf.split().freeze()))
            .await
            .map_err(io::Error::other)
    }

    async fn close(&mut self) {
        let _ = self.0.close(None).await;
    }
}

/// How long a lingering close reads what the client still sends.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);
/// How much a lingering close reads at most.
const LINGER_BYTES: usize = 1 << 20;

/// After the broker's last packet (a DISCONNECT or CONNACK with a reason code) and
/// `close`: reads and discards what the client still sends until it closes too, for at
/// most [`LINGER_TIME`] and [`LINGER_BYTES`]. Closing a socket with unread input makes
/// the kernel answer with a reset, which discards what it has not sent yet (the reason
/// code among it) and can make the client lose what it has not read; HTTP servers
/// linger for the same reason.
/// It ends early when `stop` resolves (the broker shutting down: a lingering task must
/// not keep it, and its store, alive).
pub async fn linger<T: Transport>(io: &mut T, stop: impl Future<Output = ()>) {
    let mut buf = BytesMut::new();
    let mut total = 0;
    let drain = tokio::time::timeout(LINGER_TIME, async {
        while total < LINGER_BYTES {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    total += n;
                    buf.clear();
                }
            }
        }
    });
    tokio::select! {
        _ = drain => {}
        _ = stop => {}
    }
}
