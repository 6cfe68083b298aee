//! Cloud object stores opened by URL, configured from the environment the way `object_store`
//! reads it (`AmazonS3Builder::from_env()` and its GCS and Azure counterparts), plus the URL.
//!
//! S3 (`s3://bucket/prefix`, cargo feature `s3`, on by default) reads the `AWS_*` variables:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` (default
//! `us-east-1`), `AWS_ENDPOINT` (an S3-compatible server, path-style requests),
//! `AWS_ALLOW_HTTP=true` (needed for an `http://` endpoint), and the rest of
//! `object_store::aws::AmazonS3ConfigKey`. Opening checks what would otherwise only fail at
//! the first request: that credentials are configured and that an `http://` endpoint is
//! allowed. Instance-metadata credentials (EC2) are used only when `AWS_METADATA_ENDPOINT`
//! is set, so a machine without credentials gets an error naming the variables instead of
//! requests to a metadata address that is not there.

use std::sync::Arc;

use object_store::ObjectStore;

use crate::error::StorageError;

#[cfg(any(feature = "s3", feature = "gcp", feature = "azure"))]
fn config_error(url: &str, reason: impl Into<String>) -> StorageError {
    StorageError::StoreConfig {
        url: url.to_string(),
        reason: reason.into(),
    }
}

#[cfg(not(all(feature = "s3", feature = "gcp", feature = "azure")))]
fn disabled(url: &str, feature: &'static str) -> StorageError {
    let scheme = url.split_once("://").map_or(url, |(s, _)| s);
    StorageError::FeatureDisabled {
        url: url.to_string(),
        scheme: scheme.to_string(),
        feature,
    }
}

/// An S3 store for `url` (`s3://bucket/prefix`; the prefix is applied by the caller).
#[cfg(feature = "s3")]
pub(crate) fn s3(url: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey as Key};
    use object_store::ClientConfigKey;

    let builder = AmazonS3Builder::from_env().with_url(url);
    let set = |key: Key| builder.get_config_value(&key).filter(|v| !v.is_empty());
    let is_true = |key: Key| set(key).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    match (set(Key::AccessKeyId), set(Key::SecretAccessKey)) {
        (Some(_), None) => {
            return Err(config_error(
                url,
                "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
            ))
        }
        (None, Some(_)) => {
            return Err(config_error(
                url,
                "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not",
            ))
        }
        (Some(_), Some(_)) => {}
        (None, None) => {
            let other_source = (set(Key::WebIdentityTokenFile).is_some()
                && set(Key::RoleArn).is_some())
                || set(Key::ContainerCredentialsRelativeUri).is_some()
                || (set(Key::ContainerCredentialsFullUri).is_some()
                    && set(Key::ContainerAuthorizationTokenFile).is_some())
                || set(Key::MetadataEndpoint).is_some()
                || is_true(Key::SkipSignature);
            if !other_source {
                return Err(config_error(
                    url,
                    "no s3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                     (or AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, \
                     AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, AWS_METADATA_ENDPOINT for \
                     instance credentials, or AWS_SKIP_SIGNATURE=true for a public bucket)",
                ));
            }
        }
    }
    let endpoint = set(Key::S3Endpoint).or_else(|| set(Key::Endpoint));
    if let Some(endpoint) = endpoint {
        let allow_http = builder
            .get_config_value(&Key::Client(ClientConfigKey::AllowHttp))
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if endpoint.starts_with("http://") && !allow_http {
            return Err(config_error(
                url,
                format!(
                    "AWS_ENDPOINT is plain http but AWS_ALLOW_HTTP is not true endpoint={endpoint}"
                ),
            ));
        }
    }
    let store = builder
        .build()
        .map_err(|e| config_error(url, format!("cannot configure the s3 client: {e}")))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "s3"))]
pub(crate) fn s3(url: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
    Err(disabled(url, "s3"))
}

/// A Google Cloud Storage store for `url` (`gs://bucket/prefix`), from the `GOOGLE_*`
/// variables.
#[cfg(feature = "gcp")]
pub(crate) fn gcs(url: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
        .with_url(url)
        .build()
        .map_err(|e| config_error(url, format!("cannot configure the gcs client: {e}")))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "gcp"))]
pub(crate) fn gcs(url: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
    Err(disabled(url, "gcp"))
}

/// An Azure Blob Storage store for `url` (`az://container/prefix` and the other forms
/// `object_store` parses), from the `AZURE_*` variables.
#[cfg(feature = "azure")]
pub(crate) fn azure(url: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let store = object_store::azure::MicrosoftAzureBuilder::from_env()
        .with_url(url)
        .build()
        .map_err(|e| config_error(url, format!("cannot configure the azure client: {e}")))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "azure"))]
pub(crate) fn azure(url: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
    Err(disabled(url, "azure"))
}
