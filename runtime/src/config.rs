//! Layered configuration: a service's defaults, then an optional TOML file (`CADRE_CONFIG`),
//! then `CADRE_`-prefixed environment variables (`__` separates nesting levels, as Kubernetes
//! ConfigMaps expect), then the conventional `NATS_URL` and `DATABASE_URL`.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Loads `T` from its defaults and the layers above.
pub fn load<T: Serialize + DeserializeOwned + Default>() -> Result<T, Box<figment::Error>> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Ok(path) = std::env::var("CADRE_CONFIG") {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment
        .merge(Env::prefixed("CADRE_").split("__").ignore(&["CONFIG"]))
        .merge(
            Env::raw()
                .only(&["NATS_URL", "DATABASE_URL"])
                .map(|key| key.as_str().to_ascii_lowercase().into()),
        )
        .extract()
        .map_err(Box::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Example {
        nats_url: String,
        http: Http,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Http {
        port: u16,
        body_limit: usize,
    }

    impl Default for Example {
        fn default() -> Self {
            Self {
                nats_url: "nats://127.0.0.1:4222".into(),
                http: Http {
                    port: 8080,
                    body_limit: 10,
                },
            }
        }
    }

    #[test]
    // figment's `Jail` closures return its (large) error type.
    #[allow(clippy::result_large_err)]
    fn layers_defaults_file_and_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("cadre.toml", "[http]\nport = 9000\nbody_limit = 20\n")?;
            jail.set_env("CADRE_CONFIG", "cadre.toml");
            jail.set_env("CADRE_HTTP__BODY_LIMIT", "30");
            jail.set_env("NATS_URL", "nats://nats:4222");
            let loaded: Example = load().map_err(|e| e.to_string())?;
            assert_eq!(
                loaded,
                Example {
                    nats_url: "nats://nats:4222".into(),
                    http: Http {
                        port: 9000,
                        body_limit: 30
                    },
                }
            );
            Ok(())
        });
    }
}
