//! Registry credentials: `--creds`, the configuration's `[registry.auths]`,
//! or docker's `config.json`.

use std::path::PathBuf;

use oci_client::secrets::RegistryAuth;

use super::{RegistryError, RegistryOptions};

/// Credentials for `registry`: `--creds`, else docker's config file.
pub(super) fn auth_for(
    registry: &str,
    opts: &RegistryOptions,
) -> Result<RegistryAuth, RegistryError> {
    if let Some(c) = &opts.creds {
        let (user, pass) = c
            .split_once(':')
            .ok_or_else(|| RegistryError::Creds("expected USER:PASS".into()))?;
        return Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()));
    }
    if let Some(a) = opts.config.auths.get(registry) {
        return Ok(RegistryAuth::Basic(a.username.clone(), a.password.clone()));
    }
    let Some(path) = docker_config_path() else {
        return Ok(RegistryAuth::Anonymous);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RegistryAuth::Anonymous),
        Err(e) => return Err(RegistryError::Creds(format!("{}: {e}", path.display()))),
    };
    auth_from_docker_config(&text, registry)
        .map_err(|e| RegistryError::Creds(format!("{}: {e}", path.display())))
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The `auths` entry for `registry` in a docker config file (keys may be
/// bare hosts or URLs).
pub fn auth_from_docker_config(text: &str, registry: &str) -> Result<RegistryAuth, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let Some(auths) = v["auths"].as_object() else {
        return Ok(RegistryAuth::Anonymous);
    };
    let host_of = |k: &str| {
        let k = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        k.split('/').next().unwrap_or(k).to_string()
    };
    let wanted = if registry == "docker.io" {
        "index.docker.io".to_string()
    } else {
        registry.to_string()
    };
    for (key, entry) in auths {
        let host = host_of(key);
        if host != wanted && host != registry {
            continue;
        }
        let Some(encoded) = entry["auth"].as_str() else {
            continue;
        };
        let decoded = base64_decode(encoded).ok_or("an `auth` that is not base64")?;
        let decoded = String::from_utf8(decoded).map_err(|_| "an `auth` that is not UTF-8")?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or("an `auth` that is not USER:PASS")?;
        return Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()));
    }
    Ok(RegistryAuth::Anonymous)
}

/// Standard base64 with padding (what docker writes).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_auths_are_found_by_host() {
        // "user:pa:ss" in base64.
        let text = r#"{"auths": {"https://reg.example:5000/v1/": {"auth": "dXNlcjpwYTpzcw=="},
                                 "other.example": {"auth": "!!"}}}"#;
        match auth_from_docker_config(text, "reg.example:5000").unwrap() {
            RegistryAuth::Basic(u, p) => assert_eq!((u.as_str(), p.as_str()), ("user", "pa:ss")),
            a => panic!("{a:?}"),
        }
        assert!(matches!(
            auth_from_docker_config(text, "third.example").unwrap(),
            RegistryAuth::Anonymous
        ));
        assert!(auth_from_docker_config(text, "other.example").is_err());
        assert!(auth_from_docker_config("not json", "x").is_err());
    }
}
