//! Riders speak only for themselves on the embedded broker: what another rider can subscribe to,
//! publish as someone else, or keep doing after its token ran out.

mod common;

use std::time::Duration;

use common::{STORE_LAT, STORE_LNG, Server, admin, eventually, metric, mqtt_of, now_ms, order_body, token};
use darkstore::auth::{Claims, Role};
use darkstore_db::scratch::ScratchDb;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// What a client saw: messages, and SUBACK return codes.
enum Seen {
    Message(String, Value),
    SubAck(Vec<SubscribeReasonCode>),
    Down,
}

async fn client(broker: &str, client_id: &str, user: &str, password: String) -> (AsyncClient, mpsc::Receiver<Seen>) {
    let hostport = broker.trim_start_matches("mqtt://");
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let mut opts = MqttOptions::new(client_id, host, port.parse().unwrap());
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_credentials(user, password);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let (tx, rx) = mpsc::channel(1000);
    tokio::spawn(async move {
        loop {
            let seen = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    Seen::Message(p.topic, serde_json::from_slice(&p.payload).unwrap_or(Value::Null))
                }
                Ok(Event::Incoming(Packet::SubAck(a))) => Seen::SubAck(a.return_codes),
                Ok(_) => continue,
                Err(_) => {
                    let _ = tx.send(Seen::Down).await;
                    break;
                }
            };
            if tx.send(seen).await.is_err() {
                break;
            }
        }
    });
    (client, rx)
}

async fn rider_position(server: &Server, rider: &str) -> Value {
    server.call("GET", &format!("/v1/riders/{rider}"), Some(&admin()), None).await.1
}

/// How a rider connects to a broker: (client id, username, password).
type Creds = fn(&str) -> (String, String, String);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rider_can_neither_read_nor_forge_another_riders_topics() {
    let scratch = ScratchDb::sqlite("ds_broker_acl");
    let server = Server::start(&scratch.url, &["--dispatch-tick-ms", "200"]);
    let creds: Creds = |r| (format!("{r}:app"), r.to_owned(), token(Role::Rider, r, None));
    privacy_story(&server, &mqtt_of(&server), creds, true).await;
    // Nobody can take the server's session: positions keep arriving after r-2 tried.
    let (_, mut refused) =
        client(&mqtt_of(&server), "darkstore-server-0", "r-2", token(Role::Rider, "r-2", None)).await;
    assert!(matches!(refused.recv().await, Some(Seen::Down)));
    let (one, _one_seen) = client(&mqtt_of(&server), "r-1:again", "r-1", token(Role::Rider, "r-1", None)).await;
    let moved = json!({"lat": STORE_LAT + 0.0015, "lng": STORE_LNG, "ts": now_ms()});
    one.publish("riders/r-1/location", QoS::AtLeastOnce, false, moved.to_string()).await.unwrap();
    eventually("the position after the attempt", 10, || async {
        (rider_position(&server, "r-1").await["lat"].as_f64() == Some(STORE_LAT + 0.0015)).then_some(())
    })
    .await;
    assert!(metric(&server, "darkstore_mqtt_refused_total{what=\"subscribe\"} ").await >= 6.0);
    assert!(metric(&server, "darkstore_mqtt_refused_total{what=\"publish\"} ").await >= 5.0);
    drop(server);
    scratch.drop_database().await;
}

/// Mosquitto with the access rules the README gives (read from the README itself), riders with
/// passwords: the same story.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_with_the_readmes_rules_keeps_riders_apart() {
    let dir = std::env::temp_dir().join(format!("ds_mosq_acl_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let acl: String = readme
        .lines()
        .skip_while(|l| l.trim() != "# darkstore.acl")
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(acl.contains("pattern write riders/%u/location"), "the README's ACL: {acl}");
    std::fs::write(dir.join("acl"), acl).unwrap();
    let passwd = dir.join("passwd");
    for (i, (user, pass)) in
        [("darkstore-server", "server-pw"), ("r-1", "pw-r-1"), ("r-2", "pw-r-2")].iter().enumerate()
    {
        let mut cmd = std::process::Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let ok = cmd.args(["-b", passwd.to_str().unwrap(), user, pass]).status().expect("mosquitto_passwd");
        assert!(ok.success());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = format!(
        "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\npersistence false\n",
        passwd.display(),
        dir.join("acl").display()
    );
    let mut mosquitto = mosquitto(&dir, &conf, &[port]);
    let scratch = ScratchDb::sqlite("ds_broker_mosq");
    let url = format!("mqtt://darkstore-server:server-pw@127.0.0.1:{port}");
    let server = Server::start(&scratch.url, &["--dispatch-tick-ms", "200", "--mqtt-url", &url]);
    let creds: Creds = |r| (format!("{r}-app"), r.to_owned(), format!("pw-{r}"));
    privacy_story(&server, &format!("mqtt://127.0.0.1:{port}"), creds, false).await;
    drop(server);
    let _ = mosquitto.kill();
    let _ = mosquitto.wait();
    scratch.drop_database().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Starts Mosquitto with `conf` (written into `dir`) and waits for its listeners' `ports`.
fn mosquitto(dir: &std::path::Path, conf: &str, ports: &[u16]) -> std::process::Child {
    std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
    let child = std::process::Command::new("mosquitto")
        .args(["-c", dir.join("mosquitto.conf").to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto is installed");
    for &port in ports {
        common::wait_for_port(port);
    }
    child
}

/// r-1 delivers an order while r-2 listens to everything it can think of and speaks as r-1.
/// `sub_refused`: the broker answers refused subscriptions with a SUBACK failure (Mosquitto may
/// grant them and deliver nothing).
async fn privacy_story(server: &Server, broker: &str, creds: Creds, sub_refused: bool) {
    server.seed("s1", "milk", 10).await;
    for r in ["r-1", "r-2"] {
        let (s, _) = server
            .call("PUT", &format!("/v1/riders/{r}"), Some(&admin()), Some(json!({"name": r, "store_id": "s1"})))
            .await;
        assert_eq!(s, 201);
    }
    let (id1, user1, pw1) = creds("r-1");
    let (one, mut one_seen) = client(broker, &id1, &user1, pw1).await;
    one.subscribe("riders/r-1/tasks", QoS::AtLeastOnce).await.unwrap();
    assert!(
        matches!(one_seen.recv().await, Some(Seen::SubAck(c)) if c == [SubscribeReasonCode::Success(QoS::AtLeastOnce)])
    );
    one.publish("riders/r-1/shift", QoS::AtLeastOnce, false, r#"{"on_shift":true}"#).await.unwrap();
    let home = json!({"lat": STORE_LAT + 0.001, "lng": STORE_LNG, "ts": now_ms()});
    one.publish("riders/r-1/location", QoS::AtLeastOnce, false, home.to_string()).await.unwrap();
    eventually("r-1 on shift at the store", 10, || async {
        let me = rider_position(server, "r-1").await;
        (me["on_shift"] == true && me["lat"].is_number()).then_some(())
    })
    .await;

    // r-2 tries to listen to everything, and to speak as r-1.
    let (id2, user2, pw2) = creds("r-2");
    let (two, mut two_seen) = client(broker, &id2, &user2, pw2).await;
    for filter in ["#", "riders/+/tasks", "riders/r-1/#", "riders/r-1/tasks", "orders/#", "stores/#"] {
        two.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        match two_seen.recv().await {
            Some(Seen::SubAck(codes)) if sub_refused => assert_eq!(codes, [SubscribeReasonCode::Failure], "{filter}"),
            Some(Seen::SubAck(_)) => {}
            _ => panic!("no SUBACK for {filter}"),
        }
    }
    let far = json!({"lat": STORE_LAT + 0.01, "lng": STORE_LNG, "ts": now_ms() + 500});
    two.publish("riders/r-1/location", QoS::AtLeastOnce, false, far.to_string()).await.unwrap();
    two.publish("riders/r-1/shift", QoS::AtLeastOnce, false, r#"{"on_shift":false}"#).await.unwrap();
    let fake =
        json!({"task_id": "fake", "store_id": "s1", "pickup": {"lat": 0, "lng": 0}, "orders": [], "assigned_at": 0});
    two.publish("riders/r-1/tasks", QoS::AtLeastOnce, false, fake.to_string()).await.unwrap();

    // r-1 delivers an order meanwhile.
    let alice = token(Role::Customer, "alice", None);
    let (_, order) = server.order(&alice, "k", order_body("milk", 1)).await;
    let id = order["id"].as_str().unwrap().to_owned();
    server.call("POST", &format!("/v1/orders/{id}/packed"), Some(&token(Role::Staff, "sam", Some("s1"))), None).await;
    let task = loop {
        match tokio::time::timeout(Duration::from_secs(10), one_seen.recv()).await.expect("a task for r-1") {
            Some(Seen::Message(topic, task)) => {
                assert_eq!(topic, "riders/r-1/tasks");
                assert_ne!(task["task_id"], "fake", "r-2's forged task reached r-1");
                break task;
            }
            Some(Seen::SubAck(_)) => continue,
            _ => panic!("r-1 lost its connection"),
        }
    };
    assert_eq!(task["orders"][0]["id"], id.as_str());
    for kind in ["picked_up", "delivered"] {
        let e = json!({"type": kind, "order_id": id, "ts": now_ms()});
        // r-2 tries first, as r-1: dropped.
        two.publish("riders/r-1/events", QoS::AtLeastOnce, false, e.to_string()).await.unwrap();
        one.publish("riders/r-1/events", QoS::AtLeastOnce, false, e.to_string()).await.unwrap();
    }
    eventually("delivered by r-1", 10, || async {
        let (_, o) = server.call("GET", &format!("/v1/orders/{id}"), Some(&alice), None).await;
        (o["status"] == "delivered").then_some(())
    })
    .await;
    // r-2 learned nothing, and changed nothing of r-1.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(seen) = two_seen.try_recv() {
        assert!(!matches!(seen, Seen::Message(..)), "r-2 received a message");
    }
    let me = rider_position(server, "r-1").await;
    assert_eq!((me["on_shift"].as_bool(), me["lat"].as_f64()), (Some(true), Some(STORE_LAT + 0.001)), "{me}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_session_ends_with_its_token() {
    let scratch = ScratchDb::sqlite("ds_broker_expiry");
    let server = Server::start(&scratch.url, &[]);
    server.call("PUT", "/v1/riders/r-9", Some(&admin()), Some(json!({"name": "R"}))).await;
    let exp = now_ms() / 1000 + 3;
    let short = darkstore::auth::sign(
        common::SECRET.as_bytes(),
        &Claims { sub: "r-9".into(), role: Role::Rider, store: None, exp },
    );
    let (c, mut seen) = client(&mqtt_of(&server), "r-9:app", "r-9", short).await;
    c.publish("riders/r-9/shift", QoS::AtLeastOnce, false, r#"{"on_shift":true}"#).await.unwrap();
    eventually("on shift", 5, || async { (rider_position(&server, "r-9").await["on_shift"] == true).then_some(()) })
        .await;
    // The token runs out: the broker disconnects the session within a second or two.
    let down = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            if let Some(Seen::Down) | None = seen.recv().await {
                break;
            }
        }
    })
    .await;
    assert!(down.is_ok(), "the session outlived its token");
    assert!(metric(&server, "darkstore_mqtt_sessions_expired_total ").await >= 1.0);
    drop(server);
    scratch.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rider_that_reconnects_under_its_client_id_keeps_its_rights() {
    let scratch = ScratchDb::sqlite("ds_broker_takeover");
    let server = Server::start(&scratch.url, &[]);
    server.call("PUT", "/v1/riders/r-7", Some(&admin()), Some(json!({"name": "R"}))).await;
    let broker = mqtt_of(&server);
    let (first, _first_seen) = client(&broker, "r-7:phone", "r-7", token(Role::Rider, "r-7", None)).await;
    first.publish("riders/r-7/shift", QoS::AtLeastOnce, false, r#"{"on_shift":true}"#).await.unwrap();
    eventually("on shift", 5, || async { (rider_position(&server, "r-7").await["on_shift"] == true).then_some(()) })
        .await;
    // The phone reconnects (the old connection is taken over, its end reported after).
    let (second, _second_seen) = client(&broker, "r-7:phone", "r-7", token(Role::Rider, "r-7", None)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at = json!({"lat": STORE_LAT, "lng": STORE_LNG, "ts": now_ms()});
    second.publish("riders/r-7/location", QoS::AtLeastOnce, false, at.to_string()).await.unwrap();
    eventually("the position from the new connection", 5, || async {
        (rider_position(&server, "r-7").await["lat"].as_f64() == Some(STORE_LAT)).then_some(())
    })
    .await;
    drop(server);
    scratch.drop_database().await;
}

/// Runs the openssl command.
fn openssl(args: &[&str]) {
    let ok = std::process::Command::new("openssl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(ok.success(), "openssl {args:?}");
}

/// A CA and a certificate for `localhost` it signed, made with the openssl command:
/// (CA certificate, certificate, key).
fn ca_and_cert(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let s = |f: &str| p(f).to_str().unwrap().to_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name} test CA"),
        "-keyout",
        &s("ca.key"),
        "-out",
        &s("ca.pem"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &s("key.pem"),
        "-out",
        &s("csr.pem"),
    ]);
    std::fs::write(p("ext.cnf"), "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &s("csr.pem"),
        "-CA",
        &s("ca.pem"),
        "-CAkey",
        &s("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &s("ext.cnf"),
        "-out",
        &s("cert.pem"),
    ]);
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reaches_a_broker_over_tls() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("ds_mosq_tls_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = ca_and_cert(&dir, "broker");
    let (other_ca, _, _) = ca_and_cert(&dir, "other");
    // Mosquitto may drop to its own user: let it read what it needs.
    for p in [&dir, &cert, &key] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (tls_port, plain_port) = (free(), free());
    let conf = format!(
        "per_listener_settings false\nallow_anonymous true\npersistence false\n\
         listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n\
         listener {plain_port} 127.0.0.1\n",
        cert.display(),
        key.display()
    );
    let mut mosquitto = mosquitto(&dir, &conf, &[tls_port, plain_port]);

    // Trusting the broker's certificate: connected, and riders' messages arrive over TLS.
    let scratch = ScratchDb::sqlite("ds_broker_tls");
    let url = format!("mqtts://localhost:{tls_port}");
    let server = Server::start(&scratch.url, &["--mqtt-url", &url, "--mqtt-ca-file", ca.to_str().unwrap()]);
    eventually("the server connected over TLS", 10, || async {
        (server.client.get(server.url("/readyz")).send().await.ok()?.status() == 200).then_some(())
    })
    .await;
    server.seed("s1", "milk", 1).await;
    server.call("PUT", "/v1/riders/r1", Some(&admin()), Some(json!({"name": "R", "store_id": "s1"}))).await;
    let (rider, _inbox, ok) =
        common::mqtt_client(&format!("mqtt://127.0.0.1:{plain_port}"), "r1:tls-test", "r1", None).await;
    assert!(ok, "the plain listener accepts the rider");
    let at = json!({"lat": STORE_LAT, "lng": STORE_LNG, "ts": now_ms()});
    rider.publish("riders/r1/location", QoS::AtLeastOnce, false, at.to_string()).await.unwrap();
    eventually("the position came through the TLS connection", 10, || async {
        let (_, v) = server.call("GET", "/v1/riders/r1", Some(&admin()), None).await;
        v["lat"].is_number().then_some(())
    })
    .await;
    drop(server);

    // A CA that did not sign it, a CA file for a plain broker, or one that does not exist: the start
    // stops with the setting named.
    for (url, ca) in [
        (url.clone(), other_ca.to_str().unwrap().to_owned()),
        (format!("mqtt://127.0.0.1:{plain_port}"), ca.to_str().unwrap().to_owned()),
        (url.clone(), dir.join("missing.pem").to_str().unwrap().to_owned()),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_darkstore"))
            .args(["serve", "--http", "127.0.0.1:0", "--database-url", &scratch.url, "--jwt-secret", common::SECRET])
            .args(["--mqtt-url", &url, "--mqtt-ca-file", &ca])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--mqtt-ca-file"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = mosquitto.kill();
    let _ = mosquitto.wait();
    scratch.drop_database().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riders_reach_the_embedded_broker_over_tls() {
    let dir = std::env::temp_dir().join(format!("ds_embedded_tls_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = ca_and_cert(&dir, "embedded");
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let scratch = ScratchDb::sqlite("ds_embedded_tls");
    let server = Server::start(
        &scratch.url,
        &[
            "--mqtt-tls-cert",
            cert.to_str().unwrap(),
            "--mqtt-tls-key",
            key.to_str().unwrap(),
            "--mqtt-tls-listen",
            &format!("127.0.0.1:{tls_port}"),
        ],
    );
    common::wait_for_port(tls_port);
    server.seed("s1", "milk", 1).await;
    server.call("PUT", "/v1/riders/r1", Some(&admin()), Some(json!({"name": "R", "store_id": "s1"}))).await;
    // The rider's app trusts the broker's CA, and signs in with its token, as on the plain port.
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_file_iter(&ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut opts = MqttOptions::new("r1:tls", "localhost", tls_port);
    opts.set_credentials("r1", token(Role::Rider, "r1", None));
    opts.set_transport(rumqttc::Transport::tls_with_config(tls.into()));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let (ack_tx, mut ack_rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = ack_tx.try_send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ack_rx.recv()).await.expect("connected over TLS");
    let at = json!({"lat": STORE_LAT, "lng": STORE_LNG, "ts": now_ms()});
    client.publish("riders/r1/location", QoS::AtLeastOnce, false, at.to_string()).await.unwrap();
    eventually("the position over TLS", 10, || async {
        let (_, v) = server.call("GET", "/v1/riders/r1", Some(&admin()), None).await;
        v["lat"].is_number().then_some(())
    })
    .await;
    drop(server);
    // A key that does not exist stops the start, naming the setting.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_darkstore"))
        .args(["serve", "--http", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0", "--database-url", &scratch.url])
        .args(["--jwt-secret", common::SECRET, "--mqtt-tls-cert", cert.to_str().unwrap()])
        .args(["--mqtt-tls-key", dir.join("missing.key").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--mqtt-tls-key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    scratch.drop_database().await;
    let _ = std::fs::remove_dir_all(dir);
}
