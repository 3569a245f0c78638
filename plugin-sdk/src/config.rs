//! Settings ops give a handler in the `[config]` table of its manifest (`{type}.toml`):
//!
//! ```toml
//! [config]
//! backend_url = "https://merchant.example.com/paynotify"
//! ```

use crate::bindings::paynotify::plugin::config as raw;
use crate::Error;

/// The value of `key`, if the manifest sets it.
pub fn get(key: &str) -> Option<String> {
    raw::get(key)
}

/// The value of `key`, or an error naming the key and where to set it.
pub fn require(key: &str) -> Result<String, Error> {
    get(key).ok_or_else(|| {
        Error::new(
            "missing-config",
            format!("`{key}` is not set in the [config] table of this handler's manifest"),
        )
    })
}
