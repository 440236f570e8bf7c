//! The embedded MQTT broker, with per-topic access: the `mqtt5` crate's broker (MQTT 3.1.1 and
//! 5, QoS 0–2, in memory), started in-process, with [`Access`] as its authentication and
//! authorization provider. This module alone knows who may connect and what each may publish and
//! subscribe to:
//!
//! | who (CONNECT username / password) | client id | may publish | may subscribe |
//! | --- | --- | --- | --- |
//! | the server (`darkstore-server` / an internal secret) | its own, random per start | anything | anything |
//! | a rider (its id / a rider token for it) | its id, or `{id}:{anything}` | `riders/{id}/location`, `/shift`, `/events` | `riders/{id}/tasks` |
//! | staff (its subject / a staff token) | `staff:{sub}[:…]` | nothing | `stores/{its store}/stock` |
//! | a customer (its subject / a customer token) | `customer:{sub}[:…]` | nothing | `orders/{id}/status` of its own orders |
//! | an admin (its subject / an admin token) | `admin:{sub}[:…]` | anything | anything |
//!
//! Client ids are bound to the token's subject, so nobody can take over another's session, and
//! the server's id is random per start. A refused connection gets a CONNACK refusal; a refused
//! subscription a SUBACK failure; a refused publish is dropped (QoS 1 is acknowledged, so a client
//! does not retry it forever). Every refusal is counted. A session ends when its token does: its
//! publishes and subscriptions are refused from then on, and the broker disconnects it within a
//! second.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use dashmap::DashMap;
use mqtt5::broker::config::{BrokerConfig, StorageConfig, TlsConfig};
use mqtt5::broker::events::{BrokerEventHandler, ClientDisconnectEvent};
use mqtt5::broker::{AuthProvider, AuthResult, BrokerShutdownHandle, MqttBroker};
use mqtt5::packet::connect::ConnectPacket;
use mqtt5::protocol::v5::reason_codes::ReasonCode;

use crate::BoxError;
use crate::auth::{self, Role};
use crate::clock::Clock;
use crate::state::State;

/// The username the server itself connects with.
pub const SERVER_USERNAME: &str = "darkstore-server";

/// Who a session is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    Server,
    Admin,
    Rider(String),
    Staff(String),
    Customer(String),
}

impl Who {
    /// The broker's `user_id` for the session (handed back on every publish and subscribe).
    fn key(&self) -> String {
        match self {
            Who::Server => "server".into(),
            Who::Admin => "admin".into(),
            Who::Rider(id) => format!("rider:{id}"),
            Who::Staff(store) => format!("staff:{store}"),
            Who::Customer(sub) => format!("customer:{sub}"),
        }
    }

    fn parse(key: &str) -> Option<Who> {
        Some(match key.split_once(':') {
            None if key == "server" => Who::Server,
            None if key == "admin" => Who::Admin,
            Some(("rider", id)) => Who::Rider(id.to_owned()),
            Some(("staff", store)) => Who::Staff(store.to_owned()),
            Some(("customer", sub)) => Who::Customer(sub.to_owned()),
            _ => return None,
        })
    }
}

/// Counters of what the broker refused.
#[derive(Debug, Default)]
pub struct AccessCounters {
    pub connects_refused: AtomicU64,
    pub subscribes_refused: AtomicU64,
    pub publishes_refused: AtomicU64,
    pub sessions_expired: AtomicU64,
}

/// The broker's access rules.
pub struct Access {
    secret: Vec<u8>,
    server_password: String,
    server_client_id: String,
    clock: Arc<dyn Clock>,
    /// Connected clients by client id.
    sessions: DashMap<String, Session, ahash::RandomState>,
    /// Whose orders are whose, for customers' subscriptions.
    state: OnceLock<Weak<State>>,
    pub counters: AccessCounters,
}

/// A connected client.
#[derive(Debug, Clone)]
struct Session {
    /// Token expiry, unix seconds.
    exp: i64,
    /// Who it is (`Who::key`).
    user: String,
    /// Connections under this client id (a reconnect takes the session over before the old
    /// connection's end is reported).
    connections: u32,
}

/// `sub` or `sub:anything` (ids cannot contain ':', so no subject's ids can be another's).
fn bound_to(client_id: &str, prefix: &str) -> bool {
    client_id == prefix || client_id.strip_prefix(prefix).is_some_and(|rest| rest.starts_with(':'))
}

impl Access {
    pub fn new(secret: Vec<u8>, server_password: String, server_client_id: String, clock: Arc<dyn Clock>) -> Access {
        Access {
            secret,
            server_password,
            server_client_id,
            clock,
            sessions: DashMap::default(),
            state: OnceLock::new(),
            counters: AccessCounters::default(),
        }
    }

    pub fn set_state(&self, state: Weak<State>) {
        let _ = self.state.set(state);
    }

    /// Who a CONNECT is, or None when refused.
    fn admit(&self, connect: &ConnectPacket) -> Option<(Who, i64)> {
        let user = connect.username.as_deref()?;
        let password = std::str::from_utf8(connect.password.as_deref()?).ok()?;
        let id = connect.client_id.as_str();
        if user == SERVER_USERNAME {
            let ok = password == self.server_password && id == self.server_client_id;
            return ok.then_some((Who::Server, i64::MAX));
        }
        let claims = auth::verify(&self.secret, password, self.clock.now_secs()).ok()?;
        if claims.sub != user || id == self.server_client_id {
            return None;
        }
        let who = match claims.role {
            Role::Rider if bound_to(id, &claims.sub) => Who::Rider(claims.sub.clone()),
            Role::Staff if bound_to(id, &format!("staff:{}", claims.sub)) => Who::Staff(claims.store.clone()?),
            Role::Customer if bound_to(id, &format!("customer:{}", claims.sub)) => Who::Customer(claims.sub.clone()),
            Role::Admin if bound_to(id, &format!("admin:{}", claims.sub)) => Who::Admin,
            _ => return None,
        };
        Some((who, claims.exp))
    }

    /// The session's identity, while its token is valid.
    fn live(&self, client_id: &str, user: Option<&str>) -> Option<Who> {
        let who = Who::parse(user?)?;
        let exp = self.sessions.get(client_id).map(|s| s.exp)?;
        (exp > self.clock.now_secs()).then_some(who)
    }

    fn may_publish(&self, who: &Who, topic: &str) -> bool {
        match who {
            Who::Server | Who::Admin => true,
            Who::Rider(id) => topic
                .strip_prefix("riders/")
                .and_then(|t| t.strip_prefix(id.as_str()))
                .is_some_and(|t| matches!(t, "/location" | "/shift" | "/events")),
            Who::Staff(_) | Who::Customer(_) => false,
        }
    }

    async fn may_subscribe(&self, who: &Who, filter: &str) -> bool {
        match who {
            Who::Server | Who::Admin => true,
            Who::Rider(id) => filter == crate::topics::rider_tasks(id),
            Who::Staff(store) => filter == crate::topics::store_stock(store),
            Who::Customer(sub) => {
                let Some(order_id) = filter.strip_prefix("orders/").and_then(|f| f.strip_suffix("/status")) else {
                    return false;
                };
                if !darkstore_geoinv::ids::valid_id(order_id) {
                    return false;
                }
                let Some(state) = self.state.get().and_then(Weak::upgrade) else { return false };
                match state.find_order(order_id).await {
                    Ok(Some(o)) => o.lock().await.customer_id == *sub,
                    _ => false,
                }
            }
        }
    }

    /// Client ids whose token has expired (they are forgotten here).
    fn expired(&self) -> Vec<String> {
        let now = self.clock.now_secs();
        let ids: Vec<String> = self.sessions.iter().filter(|e| e.exp <= now).map(|e| e.key().clone()).collect();
        for id in &ids {
            self.sessions.remove(id);
        }
        ids
    }
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl AuthProvider for Access {
    fn authenticate<'a>(
        &'a self,
        connect: &'a ConnectPacket,
        _addr: SocketAddr,
    ) -> Boxed<'a, mqtt5::Result<AuthResult>> {
        Box::pin(async move {
            Ok(match self.admit(connect) {
                Some((who, exp)) => {
                    let user = who.key();
                    let mut s = self.sessions.entry(connect.client_id.clone()).or_insert(Session {
                        exp,
                        user: user.clone(),
                        connections: 0,
                    });
                    *s = Session { exp, user: user.clone(), connections: s.connections + 1 };
                    AuthResult::success_with_user(user)
                }
                None => {
                    self.counters.connects_refused.fetch_add(1, Ordering::Relaxed);
                    AuthResult::fail(ReasonCode::NotAuthorized)
                }
            })
        })
    }

    fn authorize_publish<'a>(&'a self, client_id: &str, user: Option<&'a str>, topic: &'a str) -> Boxed<'a, bool> {
        let ok = self.live(client_id, user).is_some_and(|who| self.may_publish(&who, topic));
        if !ok {
            self.counters.publishes_refused.fetch_add(1, Ordering::Relaxed);
        }
        Box::pin(async move { ok })
    }

    fn authorize_subscribe<'a>(&'a self, client_id: &str, user: Option<&'a str>, filter: &'a str) -> Boxed<'a, bool> {
        let who = self.live(client_id, user);
        Box::pin(async move {
            let ok = match who {
                Some(who) => self.may_subscribe(&who, filter).await,
                None => false,
            };
            if !ok {
                self.counters.subscribes_refused.fetch_add(1, Ordering::Relaxed);
            }
            ok
        })
    }
}

/// Forgets a session when its client goes (so ids a client makes up cannot pile up).
struct Forget(Weak<Access>);

impl BrokerEventHandler for Forget {
    fn on_client_disconnect<'a>(&'a self, event: ClientDisconnectEvent) -> Boxed<'a, ()> {
        // Only a connection that authenticated as the session's user ends it; the session is
        // forgotten when its last connection ends.
        if let (Some(access), Some(user)) = (self.0.upgrade(), event.user_id.as_deref()) {
            let mut gone = false;
            if let Some(mut s) = access.sessions.get_mut(&*event.client_id)
                && s.user == user
            {
                s.connections = s.connections.saturating_sub(1);
                gone = s.connections == 0;
            }
            if gone {
                access.sessions.remove_if(&*event.client_id, |_, s| s.connections == 0);
            }
        }
        Box::pin(async {})
    }
}

/// A running embedded broker.
pub struct EmbeddedBroker {
    pub addr: SocketAddr,
    pub access: Arc<Access>,
    shutdown: BrokerShutdownHandle,
}

impl EmbeddedBroker {
    /// Starts the broker on `listen` (port 0 picks one; a taken address is an error).
    /// `tls`: also listen with TLS, with this certificate chain and key (PEM), on this address.
    pub async fn start(
        listen: SocketAddr,
        tls: Option<(std::path::PathBuf, std::path::PathBuf, SocketAddr)>,
        access: Arc<Access>,
        max_payload: usize,
    ) -> Result<EmbeddedBroker, BoxError> {
        let storage = StorageConfig { enable_persistence: false, ..StorageConfig::default() };
        let mut config = BrokerConfig::default()
            .with_bind_address(listen)
            .with_max_clients(20_010)
            .with_max_packet_size(max_payload + 1024)
            .with_storage(storage)
            .with_sys_topics_enabled(false)
            .with_retain_available(false)
            .with_event_handler(Arc::new(Forget(Arc::downgrade(&access))));
        // The server's own subscription carries every rider's positions.
        config.client_channel_capacity = 65_536;
        if let Some((cert, key, addr)) = tls {
            for (what, path) in [("--mqtt-tls-cert", &cert), ("--mqtt-tls-key", &key)] {
                std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
            }
            let mut tls = TlsConfig::new(cert, key);
            tls.bind_addresses = vec![addr];
            config = config.with_tls(tls);
        }
        let mut broker = MqttBroker::with_config(config)
            .await
            .map_err(|e| format!("the embedded MQTT broker cannot start on {listen} (or its TLS address): {e}"))?
            .with_auth_provider(access.clone());
        let addr = broker.local_addr().ok_or("the embedded MQTT broker has no address")?;
        let shutdown = broker.shutdown_handle();
        let router = broker.router();
        tokio::spawn(async move {
            if let Err(e) = broker.run().await {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        });
        // Sessions end with their tokens.
        let expiring = Arc::downgrade(&access);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                let Some(access) = expiring.upgrade() else { break };
                for client_id in access.expired() {
                    access.counters.sessions_expired.fetch_add(1, Ordering::Relaxed);
                    router.disconnect_client(&client_id).await;
                }
            }
        });
        Ok(EmbeddedBroker { addr, access, shutdown })
    }

    pub fn shutdown(&self) {
        self.shutdown.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_bound_to_their_subject() {
        assert!(bound_to("r1", "r1"));
        assert!(bound_to("r1:phone", "r1"));
        assert!(!bound_to("r1-x", "r1"), "another rider's id");
        assert!(!bound_to("r10", "r1"));
        assert!(!bound_to("x:r1", "r1"));
    }

    #[test]
    fn a_rider_publishes_only_under_its_own_id() {
        let access = Access::new(vec![], String::new(), "srv".into(), Arc::new(crate::clock::ManualClock::new(0)));
        let r1 = Who::Rider("r1".into());
        let cases = [
            ("riders/r1/location", true),
            ("riders/r1/shift", true),
            ("riders/r1/events", true),
            ("riders/r1/tasks", false),
            ("riders/r2/location", false),
            ("riders/r1/location/x", false),
            ("riders/r1x/location", false),
            ("stores/s1/stock", false),
            ("orders/o1/status", false),
        ];
        for (topic, expected) in cases {
            assert_eq!(access.may_publish(&r1, topic), expected, "{topic}");
        }
        for who in [Who::Server, Who::Admin, r1, Who::Staff("s1".into()), Who::Customer("c".into())] {
            assert_eq!(Who::parse(&who.key()), Some(who));
        }
    }
}
