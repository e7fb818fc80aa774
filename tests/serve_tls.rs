//! TLS termination by `telbase serve`: with a certificate and key it answers HTTPS on TLS 1.3
//! and 1.2 (with HSTS) and refuses TLS 1.1 and plain HTTP; replacing the files with a new pair
//! is picked up (the new certificate is served); a broken or mismatched replacement is
//! refused and the working pair keeps serving; a bad pair at startup is an error; the CLI
//! wants both files or neither. Certificates are self-signed, made with the `openssl` CLI.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use telbase::apply::NoIdentity;
use telbase::providers::Credentials;
use telbase::serve::tls::TlsConfig;
use telbase::serve::{self, EdgeConfig, ServeConfig};
use telbase::store::Location;

use common::app_key;

/// A self-signed P-256 certificate for 127.0.0.1 and localhost (not a CA: webpki refuses a
/// CA certificate as a server's), as PEM files in `dir`. `None` without `openssl`.
fn make_cert(dir: &Path, name: &str) -> Option<(PathBuf, PathBuf)> {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={name}")])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "`openssl` is needed to make test certificates, and CI must have it"
        );
        eprintln!("SKIPPED: `openssl` is not available to make a test certificate");
        return None;
    }
    Some((cert, key))
}

fn der(cert: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_file(cert)
        .unwrap()
        .as_ref()
        .to_vec()
}

fn server_config(dir: &Path, pem: &str) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: Location::Sqlite(dir.join("telbase.db")),
        app: telbase::github::app::AppConfig {
            app_id: 42,
            private_key: SecretString::from(pem.to_owned()),
            // Never called: these tests send no deliveries.
            base_url: "http://127.0.0.1:9".into(),
        },
        webhook_secrets: vec![SecretString::from("s".to_owned())],
        credentials: Credentials::default(),
        http: telbase::providers::http::HttpConfig::default(),
        opener: Arc::new(NoIdentity),
        workers: 1,
        public_url: None,
        key_rotation: None,
        lease: Duration::from_secs(60),
        poll: None,
        drift_tick: None,
        sweep: None,
        watch: None,
    }
}

/// A fresh client (no pooled connection from before a reload) trusting `roots`, limited to
/// one TLS version.
fn client(roots: &[&Path], version: reqwest::tls::Version) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .min_tls_version(version)
        .max_tls_version(version)
        .tls_info(true)
        .timeout(Duration::from_secs(5));
    for r in roots {
        b = b.add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(r).unwrap()).unwrap(),
        );
    }
    b.build().unwrap()
}

/// The certificate the server presented for `/healthz`, and the response's HSTS header.
async fn served(
    roots: &[&Path],
    version: reqwest::tls::Version,
    base: &str,
) -> Result<(Vec<u8>, String), reqwest::Error> {
    let r = client(roots, version)
        .get(format!("{base}/healthz"))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let hsts = r
        .headers()
        .get("strict-transport-security")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let cert = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .unwrap()
        .to_vec();
    assert_eq!(r.text().await?, "ok\n");
    Ok((cert, hsts))
}

/// `openssl s_client` limited to one protocol: `true` if the handshake completed.
fn openssl_handshake(addr: std::net::SocketAddr, flag: &str) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), flag])
        // Let the client offer TLS 1.1 at all: OpenSSL 3's default security level forbids it
        // on the client side, and the point is that the server refuses it.
        .args(["-cipher", "DEFAULT@SECLEVEL=0"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_reloads_and_refused_old_protocols() {
    use reqwest::tls::Version;
    let Some((pem, _)) = app_key() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (Some((c1, k1)), Some((c2, k2)), Some((c3, k3))) = (
        make_cert(dir.path(), "first"),
        make_cert(dir.path(), "second"),
        make_cert(dir.path(), "third"),
    ) else {
        return;
    };
    let live_cert = dir.path().join("live.crt");
    let live_key = dir.path().join("live.key");
    std::fs::copy(&c1, &live_cert).unwrap();
    std::fs::copy(&k1, &live_key).unwrap();
    let running = serve::start_with(
        server_config(dir.path(), pem),
        EdgeConfig {
            tls: Some(TlsConfig {
                cert: live_cert.clone(),
                key: live_key.clone(),
                reload_every: Duration::from_millis(100),
            }),
            ..EdgeConfig::default()
        },
    )
    .await
    .unwrap();
    let base = format!("https://127.0.0.1:{}", running.addr.port());
    let all: [&Path; 3] = [&c1, &c2, &c3];

    // TLS 1.3 and 1.2 answer, with HSTS, presenting the first certificate.
    for v in [Version::TLS_1_3, Version::TLS_1_2] {
        let (cert, hsts) = served(&[&c1], v, &base).await.unwrap();
        assert_eq!(cert, der(&c1));
        assert!(hsts.starts_with("max-age="), "{hsts:?}");
    }
    // A client that does not trust it is refused (the certificate really is what is checked).
    assert!(served(&[&c2], Version::TLS_1_3, &base).await.is_err());

    // TLS 1.1 is refused by the server; the same client on TLS 1.2 gets through.
    let (ok11, text11) = openssl_handshake(running.addr, "-tls1_1");
    assert!(!ok11, "TLS 1.1 must be refused:\n{text11}");
    // The server answered the TLS 1.1 hello with an alert (the client did offer it).
    assert!(text11.contains("alert"), "{text11}");
    let (ok12, text12) = openssl_handshake(running.addr, "-tls1_2");
    assert!(ok12, "TLS 1.2 must work:\n{text12}");
    assert!(text12.contains("TLSv1.2"), "{text12}");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", running.addr.port()))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    // Replace the pair: the second certificate is served after the reload.
    std::fs::copy(&c2, &live_cert).unwrap();
    std::fs::copy(&k2, &live_key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (cert, _) = served(&all, Version::TLS_1_3, &base).await.unwrap();
        if cert == der(&c2) {
            break;
        }
        assert_eq!(cert, der(&c1));
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A broken certificate file, then a certificate with another pair's key: both refused,
    // the second certificate keeps serving.
    std::fs::write(&live_cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cert, _) = served(&all, Version::TLS_1_2, &base).await.unwrap();
    assert_eq!(
        cert,
        der(&c2),
        "a broken file must not replace a working pair"
    );
    std::fs::copy(&c3, &live_cert).unwrap(); // with k2 still in place: a mismatch
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cert, _) = served(&all, Version::TLS_1_3, &base).await.unwrap();
    assert_eq!(
        cert,
        der(&c2),
        "a mismatched key must not replace a working pair"
    );
    assert_eq!(
        running.tls.as_ref().unwrap().certs.current().cert[0].as_ref(),
        der(&c2).as_slice()
    );

    // The key that belongs to it arrives: the third pair is served (the watcher lives on).
    std::fs::copy(&k3, &live_key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (cert, _) = served(&all, Version::TLS_1_3, &base).await.unwrap();
        if cert == der(&c3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the third certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Graceful shutdown still ends the server.
    tokio::time::timeout(Duration::from_secs(10), running.stop())
        .await
        .expect("the server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pair_at_startup_is_an_error() {
    let Some((pem, _)) = app_key() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (Some((c1, _)), Some((_, k2))) = (make_cert(dir.path(), "a"), make_cert(dir.path(), "b"))
    else {
        return;
    };
    let start = |cert: PathBuf, key: PathBuf| {
        serve::start_with(
            server_config(dir.path(), pem),
            EdgeConfig {
                tls: Some(TlsConfig {
                    cert,
                    key,
                    reload_every: Duration::from_secs(5),
                }),
                ..EdgeConfig::default()
            },
        )
    };
    let e = start(c1.clone(), k2.clone())
        .await
        .err()
        .expect("a mismatch fails");
    assert!(e.to_string().contains("does not belong"), "{e}");
    let e = start(dir.path().join("missing.crt"), k2)
        .await
        .err()
        .expect("a missing file fails");
    assert!(e.to_string().contains("cannot read"), "{e}");
    let e = start(c1.clone(), c1).await.err().expect("no key fails");
    assert!(e.to_string().contains("no usable private key"), "{e}");
}

#[test]
fn the_cli_wants_both_files_or_neither() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_telbase"))
        .args(["serve", "--tls-cert", "server.crt"])
        .current_dir(dir.path())
        .env_remove("TELBASE_TLS_KEY_FILE")
        .env_remove("TELBASE_TLS_CERT_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("both --tls-cert and --tls-key"), "{err}");
}

/// SIGHUP reloads at once, whatever the polling interval (here an hour). Unix only: the
/// signal goes to this test process, which the server's handler catches.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_pair_at_once() {
    use reqwest::tls::Version;
    let Some((pem, _)) = app_key() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (Some((c1, k1)), Some((c2, k2))) = (
        make_cert(dir.path(), "before"),
        make_cert(dir.path(), "after"),
    ) else {
        return;
    };
    let live_cert = dir.path().join("live.crt");
    let live_key = dir.path().join("live.key");
    std::fs::copy(&c1, &live_cert).unwrap();
    std::fs::copy(&k1, &live_key).unwrap();
    let running = serve::start_with(
        server_config(dir.path(), pem),
        EdgeConfig {
            tls: Some(TlsConfig {
                cert: live_cert.clone(),
                key: live_key.clone(),
                reload_every: Duration::from_secs(3600),
            }),
            ..EdgeConfig::default()
        },
    )
    .await
    .unwrap();
    let base = format!("https://127.0.0.1:{}", running.addr.port());
    let both: [&Path; 2] = [&c1, &c2];
    std::fs::copy(&c2, &live_cert).unwrap();
    std::fs::copy(&k2, &live_key).unwrap();
    // Without the signal nothing changes (the next check is an hour away).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        served(&both, Version::TLS_1_3, &base).await.unwrap().0,
        der(&c1)
    );
    let killed = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(&both, Version::TLS_1_3, &base).await.unwrap().0 != der(&c2) {
        assert!(Instant::now() < deadline, "SIGHUP did not reload the pair");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
}
