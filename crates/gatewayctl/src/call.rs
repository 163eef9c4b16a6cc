//! `gatewayctl call`: one request through the gateway, signed with an app's key and secret
//! when given, the way a client of an APP API must sign it (see the `signer` crate).

use crate::output::{Format, print};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use serde_json::json;
use std::time::Duration;
use upstream::client::exchange;

#[derive(Debug, Args)]
pub struct CallArgs {
    /// The URL to call, e.g. http://127.0.0.1:8080/shop/items/1?x=1 (or https://, with --ca).
    #[arg(long)]
    url: String,
    /// The HTTP method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// A request header, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// The request body.
    #[arg(long)]
    data: Option<String>,
    /// The stage to call (X-Ca-Stage): RELEASE, PRE or TEST.
    #[arg(long)]
    stage: Option<String>,
    /// The app's AppKey: with the secret, the request is signed.
    #[arg(long, requires = "app_secret_file")]
    app_key: Option<String>,
    /// A file holding the app's AppSecret.
    #[arg(long, requires = "app_key")]
    app_secret_file: Option<std::path::PathBuf>,
    /// For an https:// URL: the CA bundle (PEM) the gateway's certificate must chain to.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
}

fn nonce() -> Result<String> {
    use std::io::Read;
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("no randomness for the nonce")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Sends the request; fails (exit 1) when the answer is not a 2xx.
pub async fn call(f: Format, a: CallArgs) -> Result<()> {
    let uri: http::Uri = a
        .url
        .parse()
        .with_context(|| format!("invalid --url {}", a.url))?;
    let authority = uri
        .authority()
        .map(|x| x.to_string())
        .context("--url needs a host, e.g. http://127.0.0.1:8080/path")?;
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let method = a.method.to_ascii_uppercase();
    let mut parts = signer::RequestParts::from_uri(method.clone(), target);
    for h in &a.headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("--header '{h}' is not 'Name: value'"))?;
        parts.set_header(k.trim(), v.trim());
    }
    if let Some(stage) = &a.stage {
        parts.set_header("x-ca-stage", stage.as_str());
    }
    if let (Some(key), Some(file)) = (&a.app_key, &a.app_secret_file) {
        let secret = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --app-secret-file {}", file.display()))?;
        if let Some(body) = &a.data
            && parts
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"))
        {
            parts = parts.with_form_body(body.as_bytes());
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        signer::Signer::new(key.as_str(), secret.trim()).sign(&mut parts, now_ms, &nonce()?);
    }
    let mut req = http::Request::builder()
        .method(method.as_str())
        .uri(parts.path_and_query())
        .header("host", authority.as_str());
    for (k, v) in &parts.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(a.data.unwrap_or_default())))
        .context("cannot build the request")?;
    let host = uri.host().unwrap_or_default();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") | None => false,
        Some(other) => bail!("--url scheme {other}: use http or https"),
    };
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let answer = async {
        if https {
            let Some(ca) = &a.ca else {
                bail!("--url is https: give --ca with the CA that issued the gateway's certificate")
            };
            let tls = tls::ClientFiles {
                ca: ca.clone(),
                identity: None,
            }
            .load("gatewayctl call", tls::ALPN_HTTP1)
            .context("--ca")?;
            let stream = tls::connect(&tls, host, port)
                .await
                .with_context(|| format!("cannot reach {authority} over TLS"))?;
            Ok(exchange(stream, req).await?)
        } else {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let stream = tokio::net::TcpStream::connect((host, port))
                .await
                .with_context(|| format!("cannot reach {authority}"))?;
            Ok(exchange(stream, req).await?)
        }
    };
    let upstream::client::Answer {
        status,
        headers: resp_headers,
        body,
    } = tokio::time::timeout(Duration::from_secs(30), answer)
        .await
        .context("no answer within 30 s")??;
    let headers: Vec<(String, String)> = resp_headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-ca-") || *k == "retry-after")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = String::from_utf8_lossy(&body).into_owned();
    let v = json!({"status": status.as_u16(), "headers": headers.iter().map(|(k, v)| json!({k: v})).collect::<Vec<_>>(), "body": body});
    match f {
        Format::Json | Format::Csv | Format::Yaml => print(f, v, || unreachable!()),
        Format::Table => {
            println!("{status}");
            for (k, v) in &headers {
                println!("{k}: {v}");
            }
            println!("\n{body}");
        }
    }
    if !status.is_success() {
        bail!("the gateway answered {status}");
    }
    Ok(())
}
