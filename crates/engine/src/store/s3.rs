//! S3 and S3-compatible locations (`s3://bucket/prefix`).
//!
//! Configuration follows what AWS users expect, in the AWS SDKs' order:
//! command-line options (set once through [`configure_s3`]), then the
//! standard `AWS_*` environment variables, then the shared profile files
//! (`~/.aws/credentials`, `~/.aws/config`, `AWS_PROFILE`: static keys,
//! region, endpoint; a profile that needs assume-role, SSO,
//! `credential_process` or a web-identity file is refused by name), then
//! the container and instance credential providers `object_store` falls
//! back to (which also cover `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`
//! in the environment).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{BackoffConfig, ClientConfigKey, RetryConfig};
use url::Url;

use super::StoreError;

/// S3 settings given on the command line; they override the environment.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint of an S3-compatible server (`http://127.0.0.1:9000`); an
    /// `http://` endpoint allows plain HTTP.
    pub endpoint: Option<String>,
    /// Addressing style: `Some(true)` for path style
    /// (`endpoint/bucket/key`), `Some(false)` for virtual-hosted style
    /// (`bucket.endpoint/key`); `None` keeps the environment's choice
    /// (`AWS_VIRTUAL_HOSTED_STYLE_REQUEST`), path style by default.
    pub path_style: Option<bool>,
    /// How long a failing request is retried before the error is reported.
    pub retry_timeout: Option<Duration>,
    /// Explicit credentials (access key id, secret), for programs that
    /// embed fhirlake; the command line takes them from the environment or
    /// profile only, never from arguments (they would show in `ps`).
    pub credentials: Option<(String, String)>,
}

static OPTIONS: OnceLock<S3Options> = OnceLock::new();

/// Sets the command-line S3 options for every later `s3://` location of
/// this process. Returns false if they were already set (the first call wins).
pub fn configure_s3(options: S3Options) -> bool {
    OPTIONS.set(options).is_ok()
}

/// How long requests are retried by default: long enough to ride out S3's
/// throttling (503 SlowDown), short enough that an unreachable endpoint is
/// reported within a minute.
const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// The options set by [`configure_s3`] (defaults when never called).
pub(super) fn configured() -> S3Options {
    OPTIONS.get().cloned().unwrap_or_default()
}

/// Builds the store for the bucket of `url` (an `s3://` URL).
pub(super) fn open(url: &Url, location: &str, options: &S3Options) -> Result<Arc<AmazonS3>, StoreError> {
    let invalid = |reason: String| StoreError::InvalidLocation {
        location: location.to_string(),
        reason,
    };
    let bucket = url
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| invalid("missing bucket name (expected s3://BUCKET/PREFIX)".into()))?;
    let env: HashMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("AWS_")).collect();
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    for (key, value) in profile_settings(&env)? {
        // A command-line endpoint replaces the profile's (and its allow-http).
        if options.endpoint.is_some()
            && matches!(
                key,
                AmazonS3ConfigKey::Endpoint | AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp)
            )
        {
            continue;
        }
        builder = builder.with_config(key, value);
    }
    let endpoint = options
        .endpoint
        .clone()
        // The service-specific variable wins over the general one, as in the SDKs.
        .or_else(|| env.get("AWS_ENDPOINT_URL_S3").cloned())
        .or_else(|| env.get("AWS_ENDPOINT_URL").cloned())
        .or_else(|| env.get("AWS_ENDPOINT").cloned());
    let virtual_hosted = match options.path_style {
        Some(path_style) => !path_style,
        None => builder
            .get_config_value(&AmazonS3ConfigKey::VirtualHostedStyleRequest)
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
    };
    if let Some(endpoint) = &endpoint {
        // object_store expects a virtual-hosted endpoint to name the bucket
        // already (`https://bucket.host`); build it from the plain endpoint.
        let endpoint = if virtual_hosted {
            with_bucket_host(endpoint, bucket).map_err(invalid)?
        } else {
            endpoint.trim_end_matches('/').to_string()
        };
        builder = builder.with_endpoint(endpoint.clone());
        // An explicit http:// endpoint is the user's choice of plain HTTP
        // (a local S3-compatible server); no second flag needed.
        if endpoint.starts_with("http://") {
            builder = builder.with_allow_http(true);
        }
    }
    if let Some((key, secret)) = &options.credentials {
        builder = builder.with_access_key_id(key).with_secret_access_key(secret);
    }
    builder = builder.with_virtual_hosted_style_request(virtual_hosted);
    if builder.get_config_value(&AmazonS3ConfigKey::Region).is_none() {
        builder = builder.with_region("us-east-1");
    }
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 10,
        retry_timeout: options.retry_timeout.unwrap_or(DEFAULT_RETRY_TIMEOUT),
    };
    // Large objects are streamed for minutes while workers parse them; a
    // body that times out is resumed by object_store with a ranged GET.
    // (Set as keys: `with_client_options` would drop allow-http and the
    // environment's client settings.)
    let store = builder
        .with_retry(retry)
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), "5s")
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "300s")
        .build()
        .map_err(|e| invalid(e.to_string()))?;
    Ok(Arc::new(store))
}

/// `https://host:port` → `https://bucket.host:port`.
fn with_bucket_host(endpoint: &str, bucket: &str) -> Result<String, String> {
    let mut url = Url::parse(endpoint).map_err(|e| format!("endpoint '{endpoint}': {e}"))?;
    let host = url
        .host_str()
        .ok_or_else(|| format!("endpoint '{endpoint}' has no host"))?
        .to_string();
    url.set_host(Some(&format!("{bucket}.{host}")))
        .map_err(|e| format!("endpoint '{endpoint}': {e}"))?;
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Profile settings that need a credential provider fhirlake does not
/// have (the AWS SDKs' assume-role, SSO, process and web-identity
/// providers). Without keys in the environment such a profile is refused
/// by name rather than ignored (which would end in "no credentials" or,
/// worse, another identity's keys from the instance role).
const UNSUPPORTED_PROFILE_SETTINGS: [&str; 8] = [
    "role_arn",
    "source_profile",
    "credential_source",
    "credential_process",
    "sso_session",
    "sso_start_url",
    "sso_account_id",
    "web_identity_token_file",
];

/// Settings from the shared AWS profile files for the profile named by
/// `AWS_PROFILE` (default `default`), each only where the environment does
/// not already set it (environment variables win, as in the AWS SDKs).
fn profile_settings(env: &HashMap<String, String>) -> Result<Vec<(AmazonS3ConfigKey, String)>, StoreError> {
    let home = std::env::var("HOME").unwrap_or_default();
    let profile = env.get("AWS_PROFILE").cloned().unwrap_or_else(|| "default".into());
    let credentials_file = env
        .get("AWS_SHARED_CREDENTIALS_FILE")
        .cloned()
        .unwrap_or_else(|| format!("{home}/.aws/credentials"));
    let config_file = env
        .get("AWS_CONFIG_FILE")
        .cloned()
        .unwrap_or_else(|| format!("{home}/.aws/config"));
    let mut values = HashMap::new();
    let mut found = false;
    // `~/.aws/config` names sections `[profile NAME]` (`[default]` for the
    // default); `~/.aws/credentials` uses the bare name. Credentials win.
    if let Ok(text) = std::fs::read_to_string(&config_file) {
        let section = if profile == "default" {
            "default".to_string()
        } else {
            format!("profile {profile}")
        };
        found |= ini_section(&text, &section, &mut values);
    }
    if let Ok(text) = std::fs::read_to_string(&credentials_file) {
        found |= ini_section(&text, &profile, &mut values);
    }
    let env_has_keys = env.contains_key("AWS_ACCESS_KEY_ID");
    if !env_has_keys {
        if !found && env.contains_key("AWS_PROFILE") {
            return Err(StoreError::MissingProfile {
                profile,
                credentials_file,
                config_file,
            });
        }
        let static_keys = values.contains_key("aws_access_key_id");
        if let Some(setting) = UNSUPPORTED_PROFILE_SETTINGS
            .iter()
            .find(|setting| !static_keys && values.contains_key(**setting))
        {
            return Err(StoreError::UnsupportedProfile {
                profile,
                setting: setting.to_string(),
            });
        }
    }
    let mut settings = Vec::new();
    let pairs = [
        ("aws_access_key_id", "AWS_ACCESS_KEY_ID", AmazonS3ConfigKey::AccessKeyId),
        (
            "aws_secret_access_key",
            "AWS_SECRET_ACCESS_KEY",
            AmazonS3ConfigKey::SecretAccessKey,
        ),
        ("aws_session_token", "AWS_SESSION_TOKEN", AmazonS3ConfigKey::Token),
    ];
    // Credentials come as a set: a key id from the environment is never
    // mixed with a secret from a file.
    if !env_has_keys {
        for (file_key, _, config_key) in pairs {
            if let Some(value) = values.get(file_key) {
                settings.push((config_key, value.clone()));
            }
        }
    }
    if !env.contains_key("AWS_REGION")
        && !env.contains_key("AWS_DEFAULT_REGION")
        && let Some(region) = values.get("region")
    {
        settings.push((AmazonS3ConfigKey::Region, region.clone()));
    }
    if !env.contains_key("AWS_ENDPOINT")
        && !env.contains_key("AWS_ENDPOINT_URL")
        && !env.contains_key("AWS_ENDPOINT_URL_S3")
        && let Some(endpoint) = values.get("endpoint_url")
    {
        settings.push((AmazonS3ConfigKey::Endpoint, endpoint.clone()));
        if endpoint.starts_with("http://") {
            settings.push((AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp), "true".into()));
        }
    }
    Ok(settings)
}

/// Adds the `key = value` pairs of section `[name]` of an INI-style AWS
/// file to `values`; whether the section exists.
fn ini_section(text: &str, name: &str, values: &mut HashMap<String, String>) -> bool {
    let (mut inside, mut found) = (false, false);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = header.trim() == name;
            found |= inside;
            continue;
        }
        if inside && let Some((key, value)) = line.split_once('=') {
            values.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    found
}

/// What went wrong with an S3 request, in words a user can act on: not
/// found (and whether it was the bucket), forbidden, unauthenticated or
/// unreachable; `None` when the error says nothing more specific.
pub(super) fn classify(error: &object_store::Error) -> Option<&'static str> {
    let text = error_chain(error);
    match error {
        object_store::Error::NotFound { .. } if text.contains("NoSuchBucket") => Some("bucket not found"),
        object_store::Error::NotFound { .. } => Some("not found"),
        object_store::Error::PermissionDenied { .. } => {
            Some("forbidden: access denied (check the credentials and the bucket policy)")
        }
        object_store::Error::Unauthenticated { .. } => Some("unauthenticated: the credentials were refused"),
        _ if text.contains("NoSuchBucket") => Some("bucket not found"),
        _ if text.contains("InvalidBucketName") => Some("invalid bucket name (S3 names have 3 to 63 characters)"),
        // Without credentials object_store asks the EC2 instance metadata
        // service last; off EC2 that fails with an unhelpful message.
        _ if text.contains("169.254.169.254") || text.contains("169.254.170.2") => Some(
            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (~/.aws/credentials), \
             or run where instance or container credentials exist",
        ),
        _ if text.contains("InvalidAccessKeyId") || text.contains("SignatureDoesNotMatch") => {
            Some("forbidden: the credentials were refused")
        }
        _ if text.contains("AccessDenied") => Some("forbidden: access denied"),
        _ if text.contains("certificate") || text.contains("handshake") || text.contains("InvalidCertificate") => {
            Some("TLS failure: the endpoint's certificate was not accepted")
        }
        _ if text.contains("error sending request")
            || text.contains("connect")
            || text.contains("dns error")
            || text.contains("timed out") =>
        {
            Some("unreachable: no answer from the S3 endpoint")
        }
        _ => None,
    }
}

/// The error and its sources as one string (object_store puts the S3 error
/// code in the response body it carries as a source).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosted_endpoints_name_the_bucket() {
        assert_eq!(
            with_bucket_host("http://127.0.0.1.nip.io:9000/", "lake").unwrap(),
            "http://lake.127.0.0.1.nip.io:9000"
        );
        assert_eq!(
            with_bucket_host("https://s3.example.com", "wh").unwrap(),
            "https://wh.s3.example.com"
        );
        assert!(with_bucket_host("not a url", "b").is_err());
    }

    #[test]
    fn reads_profile_sections() {
        let text =
            "[default]\naws_access_key_id = A\n\n[profile dev]\nregion=eu-west-1\n# c\n[dev]\naws_access_key_id = B\n";
        let section = |name: &str| {
            let mut values = HashMap::new();
            let found = ini_section(text, name, &mut values);
            (found, values)
        };
        let value = |name: &str, key: &str| section(name).1.get(key).cloned();
        assert_eq!(value("default", "aws_access_key_id").as_deref(), Some("A"));
        assert_eq!(value("profile dev", "region").as_deref(), Some("eu-west-1"));
        assert_eq!(value("dev", "aws_access_key_id").as_deref(), Some("B"));
        assert_eq!(section("other"), (false, HashMap::new()));
        assert!(section("dev").0);
    }

    #[test]
    fn profile_credentials_apply_only_without_environment_keys() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = dir.path().join("credentials");
        std::fs::write(&credentials, "[ci]\naws_access_key_id = K\naws_secret_access_key = S\n").unwrap();
        let config = dir.path().join("config");
        std::fs::write(
            &config,
            "[profile ci]\nregion = eu-north-1\nendpoint_url = http://127.0.0.1:1\n",
        )
        .unwrap();
        let mut env = HashMap::from([
            ("AWS_PROFILE".to_string(), "ci".to_string()),
            (
                "AWS_SHARED_CREDENTIALS_FILE".to_string(),
                credentials.display().to_string(),
            ),
            ("AWS_CONFIG_FILE".to_string(), config.display().to_string()),
        ]);
        let settings = profile_settings(&env).unwrap();
        let get = |settings: &[(AmazonS3ConfigKey, String)], key: AmazonS3ConfigKey| {
            settings.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
        };
        assert_eq!(get(&settings, AmazonS3ConfigKey::AccessKeyId).as_deref(), Some("K"));
        assert_eq!(get(&settings, AmazonS3ConfigKey::SecretAccessKey).as_deref(), Some("S"));
        assert_eq!(get(&settings, AmazonS3ConfigKey::Region).as_deref(), Some("eu-north-1"));
        assert_eq!(
            get(&settings, AmazonS3ConfigKey::Endpoint).as_deref(),
            Some("http://127.0.0.1:1")
        );
        env.insert("AWS_ACCESS_KEY_ID".into(), "E".into());
        env.insert("AWS_REGION".into(), "us-west-2".into());
        let settings = profile_settings(&env).unwrap();
        assert_eq!(get(&settings, AmazonS3ConfigKey::AccessKeyId), None);
        assert_eq!(get(&settings, AmazonS3ConfigKey::SecretAccessKey), None);
        assert_eq!(get(&settings, AmazonS3ConfigKey::Region), None);
    }

    #[test]
    fn profiles_needing_other_providers_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::write(
            &config,
            "[profile assume]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = base\n\
             [profile sso]\nsso_session = corp\nsso_account_id = 1\n\
             [profile process]\ncredential_process = /bin/creds\n\
             [profile keys]\nregion = eu-north-1\n",
        )
        .unwrap();
        let credentials = dir.path().join("credentials");
        std::fs::write(
            &credentials,
            "[keys]\naws_access_key_id = K\naws_secret_access_key = S\n",
        )
        .unwrap();
        let env_for = |profile: &str| {
            HashMap::from([
                ("AWS_PROFILE".to_string(), profile.to_string()),
                ("AWS_CONFIG_FILE".to_string(), config.display().to_string()),
                (
                    "AWS_SHARED_CREDENTIALS_FILE".to_string(),
                    credentials.display().to_string(),
                ),
            ])
        };
        for (profile, setting) in [
            ("assume", "role_arn"),
            ("sso", "sso_session"),
            ("process", "credential_process"),
        ] {
            let error = profile_settings(&env_for(profile)).unwrap_err();
            assert!(
                matches!(&error, StoreError::UnsupportedProfile { profile: p, setting: s } if p == profile && s == setting),
                "{profile}: {error}"
            );
            assert!(error.to_string().contains("export-credentials --profile"), "{error}");
        }
        assert!(profile_settings(&env_for("keys")).is_ok());
        assert!(matches!(
            profile_settings(&env_for("nobody")),
            Err(StoreError::MissingProfile { .. })
        ));
        // Keys in the environment win: the profile is not consulted for them.
        let mut env = env_for("assume");
        env.insert("AWS_ACCESS_KEY_ID".into(), "E".into());
        assert!(profile_settings(&env).is_ok());
    }
}
