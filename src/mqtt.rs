//! MQTT: the server's own client (rumqttc), the same code path for the embedded broker
//! (`broker.rs`) and an external one.
//!
//! The client subscribes to the riders' topics and hands each message to a bounded queue; when
//! the queue is full the message is shed and counted, never buffered without bound. After a
//! broker restart rumqttc reconnects on the next poll; every CONNACK resubscribes, and the
//! `connected` flag (what `/readyz` reports) is false in between.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::BoxError;

/// Largest MQTT payload accepted, bytes.
pub const MAX_PAYLOAD: usize = 16 * 1024;

/// An incoming message.
#[derive(Debug)]
pub struct Incoming {
    pub topic: String,
    pub payload: bytes::Bytes,
}

/// The server's MQTT client.
#[derive(Clone)]
pub struct Mqtt {
    pub client: AsyncClient,
    pub connected: Arc<AtomicBool>,
    pub url: String,
    pub shed: Arc<AtomicU64>,
    pub reconnects: Arc<AtomicU64>,
    pub published: Arc<AtomicU64>,
    /// Set when a connection attempt failed because the broker's TLS certificate did not verify.
    pub untrusted: Arc<AtomicBool>,
}

/// A username and password.
type Credentials = (String, String);

/// Where the broker is: host, port, credentials, and whether over TLS.
type Target = (String, u16, Option<Credentials>, bool);

/// Parses `mqtt://[user:pass@]host[:port]` (port 1883) or `mqtts://…` (TLS, port 8883).
fn parse_url(url: &str) -> Result<Target, BoxError> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("mqtts://").or_else(|| url.strip_prefix("ssl://")) {
        (r, true)
    } else {
        let r = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| format!("--mqtt-url {url:?} must start with mqtt:// or mqtts://"))?;
        (r, false)
    };
    let (creds, hostport) = match rest.rsplit_once('@') {
        Some((c, h)) => {
            let (u, p) = c.split_once(':').unwrap_or((c, ""));
            (Some((u.to_owned(), p.to_owned())), h)
        }
        None => (None, rest),
    };
    let hostport = hostport.trim_end_matches('/');
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse::<u16>().map_err(|_| format!("--mqtt-url {url:?}: bad port"))?),
        None => (hostport.to_owned(), if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(format!("--mqtt-url {url:?}: no host").into());
    }
    Ok((host, port, creds, tls))
}

/// The URL without its credentials, for logs and the ready line.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some(("mqtts" | "ssl", r)) => ("mqtts", r),
        Some((_, r)) => ("mqtt", r),
        None => ("mqtt", url),
    };
    format!("{scheme}://{}", rest.rsplit('@').next().unwrap_or(rest))
}

/// TLS to the broker with rustls (ring): the Mozilla roots, plus the CA certificates in
/// `ca_file` (PEM) when given, e.g. a private CA or a self-signed broker certificate.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, BoxError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let mut n = 0;
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("--mqtt-ca-file {}: {e}", path.display()))?
        {
            let cert = cert.map_err(|e| format!("--mqtt-ca-file {}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("--mqtt-ca-file {}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("--mqtt-ca-file {}: no certificate in it", path.display()).into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client id for the server: random per start, so no one can guess it and knock the server off
/// the broker by connecting under it.
pub fn server_client_id() -> Result<String, BoxError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(format!("darkstore-server-{}", hex::encode(bytes)))
}

/// Connects the server's client to `url` under `client_id` and starts its event loop. Incoming
/// rider messages go to the returned queue (bounded by `queue`).
pub fn connect(
    url: &str,
    client_id: String,
    credentials: Option<Credentials>,
    queue: usize,
    ca_file: Option<&std::path::Path>,
) -> Result<(Mqtt, mpsc::Receiver<Incoming>), BoxError> {
    let (host, port, url_creds, tls) = parse_url(url)?;
    if ca_file.is_some() && !tls {
        return Err("--mqtt-ca-file is for a broker over TLS: give an mqtts:// --mqtt-url".into());
    }
    let mut options = MqttOptions::new(client_id, host, port);
    if tls {
        options.set_transport(rumqttc::Transport::tls_with_config(tls_config(ca_file)?.into()));
    }
    options.set_keep_alive(Duration::from_secs(10));
    options.set_clean_session(true);
    options.set_max_packet_size(MAX_PAYLOAD + 1024, MAX_PAYLOAD + 1024);
    if let Some((user, pass)) = credentials.or(url_creds) {
        options.set_credentials(user, pass);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 4096);
    let (tx, rx) = mpsc::channel(queue.max(1));
    let mqtt = Mqtt {
        client: client.clone(),
        connected: Arc::new(AtomicBool::new(false)),
        url: redacted(url),
        shed: Arc::new(AtomicU64::new(0)),
        reconnects: Arc::new(AtomicU64::new(0)),
        published: Arc::new(AtomicU64::new(0)),
        untrusted: Arc::new(AtomicBool::new(false)),
    };
    let (connected, shed, reconnects) = (mqtt.connected.clone(), mqtt.shed.clone(), mqtt.reconnects.clone());
    let untrusted = mqtt.untrusted.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
                    for topic in crate::topics::RIDER_INBOX_FILTERS {
                        if let Err(e) = client.try_subscribe(topic, QoS::AtLeastOnce) {
                            tracing::warn!(%topic, error = %e, "subscribing failed");
                        }
                    }
                    tracing::info!("connected to the MQTT broker; subscribed to rider topics");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let msg = Incoming { topic: p.topic, payload: p.payload };
                    match tx.try_send(msg) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            shed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if tls && e.to_string().contains("ertificate") {
                        untrusted.store(true, Ordering::Relaxed);
                    }
                    if connected.swap(false, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "lost the MQTT broker; reconnecting");
                    } else if tls
                        && reconnects.load(Ordering::Relaxed) % 30 == 0
                        && e.to_string().contains("ertificate")
                    {
                        tracing::error!(
                            error = %e,
                            "the MQTT broker's TLS certificate is not trusted: give its CA with --mqtt-ca-file"
                        );
                    }
                    reconnects.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    });
    Ok((mqtt, rx))
}

impl Mqtt {
    /// Publishes JSON without waiting for the broker (QoS 1 is acknowledged in the event loop).
    pub fn publish(&self, topic: String, payload: Vec<u8>, qos: QoS) {
        match self.client.try_publish(topic, qos, false, payload) {
            Ok(()) => {
                self.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "MQTT publish failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls() {
        assert_eq!(parse_url("mqtt://127.0.0.1:1883").unwrap(), ("127.0.0.1".into(), 1883, None, false));
        assert_eq!(parse_url("mqtt://broker").unwrap(), ("broker".into(), 1883, None, false));
        assert_eq!(
            parse_url("mqtt://u:p@host:1884/").unwrap(),
            ("host".into(), 1884, Some(("u".into(), "p".into())), false)
        );
        assert_eq!(parse_url("mqtts://broker").unwrap(), ("broker".into(), 8883, None, true));
        assert_eq!(super::redacted("mqtts://u:p@broker:8884"), "mqtts://broker:8884");
        assert!(parse_url("http://host").is_err());
        assert!(parse_url("mqtt://host:x").is_err());
        assert!(parse_url("mqtt://:1883").is_err());
        assert_eq!(super::redacted("mqtt://server:secret@host:1884"), "mqtt://host:1884");
        assert_eq!(super::redacted("mqtt://host:1883"), "mqtt://host:1883");
    }
}
