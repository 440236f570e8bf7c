//! PostgreSQL over TLS (rustls): `sslmode=require`, and `verify-full` against a CA file. Runs
//! when `DARKSTORE_TEST_POSTGRES` points at a server with `ssl = on` whose certificate is
//! `/etc/ssl/certs/ssl-cert-snakeoil.pem` for `localhost` (Debian's default; `scripts/test` sets
//! this up).

use darkstore_db::Db;
use darkstore_db::scratch::ScratchDb;
use sqlx::{Connection, Row};

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// The scratch database's URL on `localhost` (the name in the certificate) with TLS options.
fn with_tls(url: &str, options: &str) -> String {
    let url = url.replace("@127.0.0.1", "@localhost");
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{options}")
}

async fn uses_tls(url: &str) -> bool {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("connect");
    let row = sqlx::query("SELECT CASE WHEN ssl THEN 1 ELSE 0 END FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .expect("pg_stat_ssl");
    row.try_get::<i32, _>(0).unwrap() == 1
}

#[tokio::test]
async fn postgres_over_tls() {
    let Some(scratch) = ScratchDb::postgres("ds_tls").await else {
        eprintln!("DARKSTORE_TEST_POSTGRES not set: skipped");
        return;
    };
    if !std::path::Path::new(SNAKEOIL).exists() {
        eprintln!("{SNAKEOIL} missing: skipped");
        scratch.drop_database().await;
        return;
    }
    // Encrypted without checking the certificate, and fully verified against the CA file.
    let require = with_tls(&scratch.url, "sslmode=require");
    assert!(uses_tls(&require).await, "sslmode=require is encrypted");
    let verified = with_tls(&scratch.url, &format!("sslmode=verify-full&sslrootcert={SNAKEOIL}"));
    assert!(uses_tls(&verified).await);
    // The server's own store works over it: migrations and a write read back.
    let db = Db::connect(&verified).await.expect("darkstore's database over verified TLS");
    assert_eq!(db.setting_or_insert("tls_probe", "yes").await.unwrap(), "yes");
    db.close().await;
    // A CA that did not sign the server's certificate is refused, not silently trusted.
    let wrong_ca = with_tls(&scratch.url, "sslmode=verify-full&sslrootcert=/etc/ssl/certs/ca-certificates.crt");
    assert!(Db::connect(&wrong_ca).await.is_err(), "an unverifiable server is refused");
    scratch.drop_database().await;
}
