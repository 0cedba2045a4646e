//! Listener loops for TCP, TLS, WebSocket and secure WebSocket. Each accepted socket gets
//! its own task holding a permit of the max-connections semaphore; the loops stop when
//! shutdown begins.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, info, warn};

use super::transport::{StreamTransport, WsTransport};
use crate::broker::Broker;
use crate::session::Transport as Kind;

/// Errors setting up listeners.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Bind failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS material unusable.
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// A bound listener, not yet accepting.
pub struct Bound {
    /// Transport it serves.
    pub kind: Kind,
    /// Actual local address (useful with port 0).
    pub addr: SocketAddr,
    listener: TcpListener,
}

/// Binds a listener.
pub async fn bind(kind: Kind, addr: SocketAddr) -> Result<Bound, ListenerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ListenerError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ListenerError::Bind { addr, source })?;
    Ok(Bound {
        kind,
        addr,
        listener,
    })
}

/// Builds the TLS acceptor from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ListenerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ListenerError::Tls(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ListenerError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ListenerError::Tls(format!(
            "{}: no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ListenerError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ListenerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ListenerError::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Generates a self-signed certificate for localhost into `dir` unless one is there.
/// Returns (cert, key) paths.
pub fn ensure_self_signed(
    dir: &Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf), ListenerError> {
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    if cert.exists() && key.exists() {
        // Releases before 0.1 wrote the key readable by everyone.
        if crate::secrets::tighten(&key).unwrap_or(false) {
            tracing::warn!(key = %key.display(), "generated TLS key was readable by others; now mode 0600");
        }
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| ListenerError::Tls(format!("{}: {e}", dir.display())))?;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| ListenerError::Tls(e.to_string()))?;
    std::fs::write(&cert, ck.cert.pem())
        .map_err(|e| ListenerError::Tls(format!("{}: {e}", cert.display())))?;
    crate::secrets::write_private(&key, ck.signing_key.serialize_pem().as_bytes())
        .map_err(|e| ListenerError::Tls(format!("{}: {e}", key.display())))?;
    info!(cert = %cert.display(), "generated a self-signed TLS certificate for localhost");
    Ok((cert, key))
}

/// Accepts connections until shutdown; TLS listeners handshake with the broker's
/// certificate in force at each accept (a reload swaps it).
pub async fn run(bound: Bound, broker: Broker, permits: Arc<Semaphore>) {
    info!(listener = bound.kind.as_str(), addr = %bound.addr, "listening");
    loop {
        let (sock, peer) = tokio::select! {
            r = bound.listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = broker.stopped() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            broker
                .metrics
                .refused_max_connections
                .fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "connection refused: max_connections reached");
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let broker = broker.clone();
        let kind = bound.kind;
        let tls = matches!(kind, Kind::Tls | Kind::Wss)
            .then(|| broker.tls())
            .flatten();
        tokio::spawn(async move {
            if kind == Kind::Tcp {
                super::serve(broker, StreamTransport(sock), peer, kind).await;
            } else {
                // Boxed: TLS and WebSocket handshakes' futures are tens of KB, and inline
                // they would make every plain TCP connection's task as large.
                Box::pin(accept_one(broker, sock, peer, kind, tls)).await;
            }
            drop(permit);
        });
    }
}

async fn accept_one(
    broker: Broker,
    sock: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    tls: Option<Arc<TlsAcceptor>>,
) {
    let handshake_timeout =
        std::time::Duration::from_secs(broker.config().listeners.connect_timeout_secs.max(1));
    match (kind, tls) {
        (Kind::Tcp, _) => super::serve(broker, StreamTransport(sock), peer, kind).await,
        (Kind::Ws, _) => match tokio::time::timeout(
            handshake_timeout,
            ws_accept(sock, broker.config().mqtt.max_packet_size),
        )
        .await
        {
            Ok(Ok(ws)) => super::serve(broker, WsTransport(ws), peer, kind).await,
            Ok(Err(e)) => handshake_failed(&broker, peer, &e.to_string()),
            Err(_) => handshake_failed(&broker, peer, "websocket handshake timed out"),
        },
        (Kind::Tls | Kind::Wss, Some(acceptor)) => {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(sock)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return handshake_failed(&broker, peer, &e.to_string()),
                Err(_) => return handshake_failed(&broker, peer, "TLS handshake timed out"),
            };
            if kind == Kind::Tls {
                super::serve(broker, StreamTransport(tls), peer, kind).await;
            } else {
                match tokio::time::timeout(
                    handshake_timeout,
                    ws_accept(tls, broker.config().mqtt.max_packet_size),
                )
                .await
                {
                    Ok(Ok(ws)) => super::serve(broker, WsTransport(ws), peer, kind).await,
                    Ok(Err(e)) => handshake_failed(&broker, peer, &e.to_string()),
                    Err(_) => handshake_failed(&broker, peer, "websocket handshake timed out"),
                }
            }
        }
        (_, None) => handshake_failed(&broker, peer, "TLS listener without a certificate"),
    }
}

fn handshake_failed(broker: &Broker, peer: SocketAddr, why: &str) {
    broker
        .metrics
        .handshake_failed
        .fetch_add(1, Ordering::Relaxed);
    debug!(%peer, error = why, "handshake failed");
}

/// WebSocket upgrade on path `/mqtt`, answering with subprotocol `mqtt` when offered.
async fn ws_accept<S>(
    s: S,
    max_packet_size: u32,
) -> Result<tokio_tungstenite::WebSocketStream<S>, tokio_tungstenite::tungstenite::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    #[allow(clippy::result_large_err)] // the callback signature is tungstenite's
    fn check(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
        if req.uri().path() != "/mqtt" {
            let mut e = ErrorResponse::new(Some("MQTT is served on /mqtt".into()));
            *e.status_mut() = StatusCode::NOT_FOUND;
            return Err(e);
        }
        let offered = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|p| p.eq_ignore_ascii_case("mqtt") || p.eq_ignore_ascii_case("mqttv3.1"))
            .map(str::to_string);
        if let Some(p) = offered {
            if let Ok(v) = HeaderValue::from_str(&p) {
                resp.headers_mut().insert("sec-websocket-protocol", v);
            }
        }
        Ok(resp)
    }
    // Frames and messages no larger than an MQTT packet may be: nothing bigger is buffered
    // before the MQTT codec gets to refuse it.
    let max = Some(max_packet_size as usize + 8);
    let config = WebSocketConfig::default()
        .max_message_size(max)
        .max_frame_size(max);
    tokio_tungstenite::accept_hdr_async_with_config(s, check, Some(config)).await
}
