//! HTTP clients for a plain `http://` endpoint (a local garage or MinIO). The SDK's default
//! client loads the system's root certificates (on Debian a bundle and some 140 files) as
//! soon as a client is built, S3's and the credential providers', whether or not a TLS
//! connection follows: about 35 ms of a cold start, a tenth of a small incremental.
//!
//! With an `http://` endpoint, S3 requests get a client with no roots (nothing to verify),
//! and the credential providers (STS, SSO, instance metadata) one that loads the roots when
//! it first connects, so they still reach HTTPS services and cost nothing when the
//! credentials come from the environment or a file. Either is the SDK's own default client
//! otherwise: rustls with AWS-LC, the environment's proxy settings.

use aws_sdk_s3::config::SharedHttpClient;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_http_client::{Builder, ConnectorBuilder};

/// The two clients for a plain endpoint: S3's, and the credential providers'.
pub(super) struct Clients {
    pub s3: SharedHttpClient,
    pub providers: SharedHttpClient,
}

/// The clients for `endpoint`, or `None` to keep the SDK's default: an `https://` endpoint (or
/// none, so AWS), or a proxy from the environment (`env`) reached over TLS, which needs the
/// roots to verify the proxy.
pub(super) fn clients_for(
    endpoint: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Option<Clients> {
    let plain = endpoint.is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"));
    let tls_proxy = [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .iter()
    .filter_map(|k| env(k))
    .any(|v| v.trim().to_ascii_lowercase().starts_with("https://"));
    if !plain || tls_proxy {
        return None;
    }
    let no_roots = TlsContext::builder()
        .with_trust_store(TrustStore::empty())
        .build()
        .ok()?;
    let s3 = {
        let ctx = no_roots.clone();
        Builder::new().build_with_connector_fn(move |settings, components| {
            connector(ctx.clone(), settings, components)
        })
    };
    // The SDK builds a connector with no settings and no components only to load the roots
    // early (`validate_base_client_config`) and drops it; every connector a request uses
    // is built with both.
    let providers = Builder::new().build_with_connector_fn(move |settings, components| {
        let ctx = if settings.is_none() && components.is_none() {
            no_roots.clone()
        } else {
            TlsContext::default()
        };
        connector(ctx, settings, components)
    });
    Some(Clients { s3, providers })
}

/// What aws-smithy-runtime's `default_https_client` builds, with the trust of `ctx`.
fn connector(
    ctx: TlsContext,
    settings: Option<&aws_smithy_runtime_api::client::http::HttpConnectorSettings>,
    components: Option<&aws_smithy_runtime_api::client::runtime_components::RuntimeComponents>,
) -> aws_smithy_http_client::Connector {
    let mut b = ConnectorBuilder::default()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(ctx);
    b.set_connector_settings(settings.cloned());
    if let Some(c) = components {
        b.set_sleep_impl(c.sleep_impl());
    }
    b.set_proxy_config(Some(ProxyConfig::from_env()));
    b.build()
}

#[cfg(test)]
mod tests {
    use super::clients_for;

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn only_a_plain_endpoint_without_a_tls_proxy_gets_its_own_clients() {
        assert!(clients_for(Some("http://127.0.0.1:3900"), none).is_some());
        assert!(clients_for(Some("HTTP://minio.lan"), none).is_some());
        assert!(clients_for(Some("https://s3.example.com"), none).is_none());
        assert!(clients_for(None, none).is_none());
        let tls_proxy = |k: &str| (k == "https_proxy").then(|| "https://proxy:3128".to_string());
        assert!(clients_for(Some("http://127.0.0.1:3900"), tls_proxy).is_none());
        let plain_proxy = |k: &str| (k == "HTTP_PROXY").then(|| "http://proxy:3128".to_string());
        assert!(clients_for(Some("http://127.0.0.1:3900"), plain_proxy).is_some());
    }
}
