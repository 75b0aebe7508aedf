//! A small HTTP(S) GET for disk downloads: hyper with rustls (ring, the system's CA
//! certificates), redirects followed, timeouts on connecting and on every read.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::plan::redact_url;

/// How long connecting and receiving the response headers may take.
const HEADERS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may stay silent in the middle of the body.
pub(crate) const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_REDIRECTS: usize = 10;

/// Why a download could not start.
#[derive(Debug)]
pub(crate) struct HttpError {
    pub message: String,
    pub retryable: bool,
}

/// A response with a 2xx status, after redirects.
pub(crate) struct Download {
    pub content_length: Option<u64>,
    pub content_type: Option<String>,
    pub body: Incoming,
}

impl Download {
    /// The next chunk of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, HttpError> {
        loop {
            let frame = tokio::time::timeout(BODY_IDLE_TIMEOUT, self.body.frame())
                .await
                .map_err(|_| HttpError {
                    message: format!("the server sent nothing for {} s", BODY_IDLE_TIMEOUT.as_secs()),
                    retryable: true,
                })?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(HttpError {
                        message: format!("reading the body failed: {e}"),
                        retryable: true,
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

fn client() -> Client<HttpsConnector<HttpConnector>, Empty<Bytes>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider.clone())
        .unwrap_or_else(|e| {
            // No CA certificates on this machine: plain http still works, https fails with a
            // certificate error naming the cause.
            tracing::warn!(error = %e, "no system CA certificates: https downloads will fail");
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                })
                .unwrap_or_else(|_| {
                    rustls::ClientConfig::builder_with_protocol_versions(rustls::DEFAULT_VERSIONS)
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                });
            HttpsConnectorBuilder::new().with_tls_config(config)
        });
    let https = builder.https_or_http().enable_http1().build();
    Client::builder(TokioExecutor::new()).build(https)
}

/// Resolves a `Location` header against the URL that sent it.
pub(crate) fn resolve_location(base: &Uri, location: &str) -> Option<String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Some(location.to_string());
    }
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    if let Some(rest) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Some(format!("{scheme}://{authority}{location}"));
    }
    let path = base.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    Some(format!("{scheme}://{authority}{dir}{location}"))
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// GETs `url`, following redirects; a non-2xx final status is an error naming it.
pub(crate) async fn get(url: &str) -> Result<Download, HttpError> {
    let client = client();
    let mut current = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let uri: Uri = current.parse().map_err(|e| HttpError {
            message: format!("'{}' is not a valid URL: {e}", redact_url(&current)),
            retryable: false,
        })?;
        let request = Request::get(uri.clone())
            .header(
                header::USER_AGENT,
                concat!("seapath-operator/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| HttpError {
                message: format!("cannot build a request for '{}': {e}", redact_url(&current)),
                retryable: false,
            })?;
        let response: Response<Incoming> = tokio::time::timeout(HEADERS_TIMEOUT, client.request(request))
            .await
            .map_err(|_| HttpError {
                message: format!(
                    "no answer from {} within {} s",
                    redact_url(&current),
                    HEADERS_TIMEOUT.as_secs()
                ),
                retryable: true,
            })?
            .map_err(|e| HttpError {
                message: format!("cannot reach {}: {}", redact_url(&current), error_chain(&e)),
                retryable: true,
            })?;
        let status = response.status();
        if is_redirect(status) {
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| resolve_location(&uri, l))
                .ok_or_else(|| HttpError {
                    message: format!(
                        "HTTP {status} from {} without a usable Location header",
                        redact_url(&current)
                    ),
                    retryable: false,
                })?;
            current = location;
            continue;
        }
        if !status.is_success() {
            let code = status.as_u16();
            return Err(HttpError {
                message: format!(
                    "HTTP {code} {} from {}",
                    status.canonical_reason().unwrap_or("?"),
                    redact_url(&current)
                ),
                retryable: code >= 500 || code == 408 || code == 429,
            });
        }
        let content_length = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        return Ok(Download {
            content_length,
            content_type,
            body: response.into_body(),
        });
    }
    Err(HttpError {
        message: format!(
            "more than {MAX_REDIRECTS} redirects starting at {}",
            redact_url(url)
        ),
        retryable: false,
    })
}

/// An error with its causes: hyper's top-level messages ("client error (Connect)") say little.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let base: Uri = "http://h:8080/a/b/disk.qcow2?x=1".parse().unwrap();
        assert_eq!(resolve_location(&base, "https://o/x").unwrap(), "https://o/x");
        assert_eq!(resolve_location(&base, "/c/d").unwrap(), "http://h:8080/c/d");
        assert_eq!(
            resolve_location(&base, "e.img").unwrap(),
            "http://h:8080/a/b/e.img"
        );
        assert_eq!(resolve_location(&base, "//cdn/x").unwrap(), "http://cdn/x");
    }
}
