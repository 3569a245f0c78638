//! Reading the file: defaults for what it leaves out, `PAYNOTIFY_…` environment overrides
//! on top, then every `*_file` secret read into its value.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, SQLITE_PAYMENT_TIMEOUT_MS};

/// The sections of the file whose keys `PAYNOTIFY_{SECTION}_{KEY}` may override.
const SECTIONS: &[&str] = &[
    "server",
    "database",
    "plugins",
    "tasks",
    "orders",
    "reconcile",
    "retention",
    "audit",
];

/// Section keys whose environment value is always taken as text, never parsed as TOML.
const STRING_KEYS: &[&str] = &[
    "listen",
    "api_token",
    "api_token_file",
    "url",
    "sqlite_synchronous",
    "dir",
    "cache_dir",
    "allowed_signers",
];

impl Config {
    /// Loads `path` if it exists (defaults otherwise), then applies `PAYNOTIFY_…` overrides
    /// from `env` and resolves `*_file` secrets relative to the file's directory.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (text, file_exists) = match std::fs::read_to_string(path) {
            Ok(t) => (t, true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), false),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let file_name = if file_exists {
            path.display().to_string()
        } else {
            format!("{} (absent, defaults)", path.display())
        };
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    source_name: file_name.clone(),
                    message: e.to_string(),
                })?;
        let overridden = apply_env(&mut table, env)?;
        let source_name = if overridden.is_empty() {
            file_name
        } else {
            format!("{file_name} with environment {}", overridden.join(", "))
        };
        let mut config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    source_name: source_name.clone(),
                    message: e.to_string(),
                })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_files(base, &source_name)?;
        config.validate(&source_name)?;
        if config.plugins.payment_timeout_ms.is_none() {
            config.plugins.payment_timeout_ms = Some(if config.database.is_sqlite() {
                SQLITE_PAYMENT_TIMEOUT_MS.min(config.plugins.timeout_ms)
            } else {
                config.plugins.timeout_ms
            });
        }
        Ok(config)
    }

    /// Reads every `*_file` secret into its value so the rest of the host sees one field.
    fn resolve_files(&mut self, base: &Path, source_name: &str) -> Result<(), ConfigError> {
        let read = |key: String, file: &Path| -> Result<String, ConfigError> {
            let full = if file.is_absolute() {
                file.to_owned()
            } else {
                base.join(file)
            };
            std::fs::read_to_string(&full)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| ConfigError::Key {
                    source_name: source_name.to_owned(),
                    key,
                    message: format!("cannot read {}: {e}", full.display()),
                })
        };
        if let Some(f) = &self.plugins.allowed_signers {
            let full = if f.is_absolute() {
                f.clone()
            } else {
                base.join(f)
            };
            // Read now, so a bad line stops the start (and `config check`) with its number;
            // the registry reads the file again at every scan, so ops can add or revoke a
            // key without a restart.
            crate::signers::AllowedSigners::load(&full).map_err(|e| ConfigError::Key {
                source_name: source_name.to_owned(),
                key: "plugins.allowed_signers".into(),
                message: e.to_string(),
            })?;
            self.plugins.allowed_signers = Some(full);
        }
        if let Some(f) = &self.server.api_token_file {
            self.server.api_token = Some(read("server.api_token_file".into(), f)?);
        }
        for (i, a) in self.accounts.iter_mut().enumerate() {
            let pairs: [(&str, &Option<PathBuf>, &mut Option<String>); 15] = [
                ("api_key_file", &a.api_key_file, &mut a.api_key),
                ("api_v3_key_file", &a.api_v3_key_file, &mut a.api_v3_key),
                (
                    "alipay_public_key_file",
                    &a.alipay_public_key_file,
                    &mut a.alipay_public_key,
                ),
                ("app_cert_file", &a.app_cert_file, &mut a.app_cert),
                ("alipay_cert_file", &a.alipay_cert_file, &mut a.alipay_cert),
                (
                    "alipay_root_cert_file",
                    &a.alipay_root_cert_file,
                    &mut a.alipay_root_cert,
                ),
                ("secret_file", &a.secret_file, &mut a.secret),
                ("notify_key_file", &a.notify_key_file, &mut a.notify_key),
                (
                    "merchant_private_key_file",
                    &a.merchant_private_key_file,
                    &mut a.merchant_private_key,
                ),
                (
                    "app_private_key_file",
                    &a.app_private_key_file,
                    &mut a.app_private_key,
                ),
                ("client_cert_file", &a.client_cert_file, &mut a.client_cert),
                ("client_key_file", &a.client_key_file, &mut a.client_key),
                ("api_ca_cert_file", &a.api_ca_cert_file, &mut a.api_ca_cert),
                ("token_file", &a.token_file, &mut a.token),
                (
                    "encoding_aes_key_file",
                    &a.encoding_aes_key_file,
                    &mut a.encoding_aes_key,
                ),
            ];
            for (key, file, value) in pairs {
                if let Some(f) = file {
                    *value = Some(read(format!("accounts[{i}].{key}"), f)?);
                }
            }
            for p in a
                .public_keys
                .values_mut()
                .chain(a.platform_certs.iter_mut())
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        if self.plugins.dir.is_relative() {
            self.plugins.dir = base.join(&self.plugins.dir);
        }
        Ok(())
    }
}

/// Applies `PAYNOTIFY_{SECTION}_{KEY}=value` and `PAYNOTIFY_ACCOUNTS_{INDEX}_{KEY}=value`.
/// Values parse as TOML when they can (`8080`, `true`, `[1, 2]`) and are strings otherwise.
/// Returns the variables applied, for error messages.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    let mut applied = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("PAYNOTIFY_"))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let rest = var["PAYNOTIFY_".len()..].to_ascii_lowercase();
        if let Some(tail) = rest.strip_prefix("accounts_") {
            let (index, key) = tail.split_once('_').ok_or_else(|| ConfigError::Key {
                source_name: format!("environment variable {var}"),
                key: var.clone(),
                message: "expected PAYNOTIFY_ACCOUNTS_{INDEX}_{KEY}".into(),
            })?;
            let index: usize = index.parse().map_err(|_| ConfigError::Key {
                source_name: format!("environment variable {var}"),
                key: var.clone(),
                message: format!("`{index}` is not an account index"),
            })?;
            let accounts = table
                .entry("accounts")
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            let Some(accounts) = accounts.as_array_mut() else {
                return Err(ConfigError::Key {
                    source_name: format!("environment variable {var}"),
                    key: "accounts".into(),
                    message: "`accounts` must be an array of tables".into(),
                });
            };
            while accounts.len() <= index {
                accounts.push(toml::Value::Table(toml::Table::new()));
            }
            // Every account key is text (ids such as mch_id look numeric but are not
            // numbers) except the key maps and certificate lists.
            let value = if raw.starts_with('[') || raw.starts_with('{') {
                parse_env_value(&raw)
            } else {
                toml::Value::String(raw)
            };
            if let Some(t) = accounts[index].as_table_mut() {
                t.insert(key.to_owned(), value);
            }
            applied.push(var);
            continue;
        }
        let Some((section, key)) = SECTIONS
            .iter()
            .find_map(|s| rest.strip_prefix(&format!("{s}_")).map(|k| (*s, k)))
        else {
            // PAYNOTIFY_CONFIG and variables of other tools are not config keys.
            continue;
        };
        let value = if STRING_KEYS.contains(&key) {
            toml::Value::String(raw)
        } else {
            parse_env_value(&raw)
        };
        let section_table = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match section_table.as_table_mut() {
            Some(t) => {
                t.insert(key.to_owned(), value);
            }
            None => {
                return Err(ConfigError::Key {
                    source_name: format!("environment variable {var}"),
                    key: section.into(),
                    message: format!("`{section}` must be a table"),
                })
            }
        }
        applied.push(var);
    }
    Ok(applied)
}

fn parse_env_value(raw: &str) -> toml::Value {
    // Parse as a TOML value via a one-key document; anything that is not valid TOML
    // (a bare word, a URL) is taken as a string.
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    #[test]
    fn defaults_work_without_a_file() {
        let c =
            Config::load(Path::new("/nonexistent/paynotify.toml"), Vec::new()).expect("defaults");
        assert_eq!(c.server.listen.port(), 8080);
        assert_eq!(c.plugins.timeout_ms, 4000);
        assert!(c.database.url.starts_with("sqlite://"));
    }

    #[test]
    fn payment_calls_are_limited_by_the_backend_unless_configured() {
        let sqlite = load_str("", &[]).expect("sqlite");
        assert_eq!(
            sqlite.plugins.payment_timeout_ms,
            Some(SQLITE_PAYMENT_TIMEOUT_MS)
        );
        let pg = load_str("[database]\nurl = \"postgres://u@db/x\"\n", &[]).expect("pg");
        assert_eq!(pg.plugins.payment_timeout_ms, Some(4000));
        let set = load_str("[plugins]\npayment_timeout_ms = 900\n", &[]).expect("set");
        assert_eq!(set.plugins.payment_timeout_ms, Some(900));
        let e = load_str("[plugins]\npayment_timeout_ms = 40000\n", &[]).unwrap_err();
        assert!(e.to_string().contains("plugins.payment_timeout_ms"), "{e}");
        let e = load_str("[plugins]\nbreaker_timeouts = 0\n", &[]).unwrap_err();
        assert!(e.to_string().contains("plugins.breaker_timeouts"), "{e}");
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let e = load_str("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n", &[]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("paynotify.toml"), "{msg}");
        assert!(msg.contains("listne"), "{msg}");
    }

    #[test]
    fn env_overrides_sections_and_accounts() {
        let c = load_str(
            "[[accounts]]\nprovider = \"wechat-v2\"\nappid = \"wx1\"\n",
            &[
                ("PAYNOTIFY_SERVER_LISTEN", "127.0.0.1:9999"),
                ("PAYNOTIFY_PLUGINS_TIMEOUT_MS", "1000"),
                ("PAYNOTIFY_ACCOUNTS_0_MCH_ID", "12345"),
                ("PAYNOTIFY_TEST_SOMETHING", "ignored"),
            ],
        )
        .expect("config");
        assert_eq!(c.server.listen.port(), 9999);
        assert_eq!(c.plugins.timeout_ms, 1000);
        // Numeric-looking merchant ids stay text.
        assert_eq!(c.accounts[0].mch_id.as_deref(), Some("12345"));
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let e = load_str("", &[("PAYNOTIFY_SERVER_LISTEN", "not-an-address")]).unwrap_err();
        assert!(e.to_string().contains("PAYNOTIFY_SERVER_LISTEN"), "{e}");
    }

    #[test]
    fn secret_files_are_read_and_missing_ones_named() {
        let e = load_str(
            "[[accounts]]\nprovider = \"wechat-v2\"\napi_key_file = \"nope.key\"\n",
            &[],
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("accounts[0].api_key_file") && msg.contains("nope.key"),
            "{msg}"
        );
    }
}
