//! Mamori's data directory and the default rule set.
//!
//! Data directory: `$MAMORI_DATA_DIR`, else `$XDG_DATA_HOME/mamori`, else
//! `~/.local/share/mamori`. The SigmaHQ corpus is installed by `mamori rules install` into
//! `<data>/rules/sigmahq/` (with a `VERSION` file); Mamori's own rules are compiled into the
//! binary. The default rule set is both.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use mamori_sigma::load::Loaded;
use mamori_sigma::{CompileOptions, load};

include!(concat!(env!("OUT_DIR"), "/own_rules.rs"));

/// SigmaHQ folders loaded by default. `rules-placeholder` needs site-specific values and is
/// only loaded when named explicitly with `--rules`.
pub const DEFAULT_SIGMA_DIRS: &[&str] = &[
    "rules",
    "rules-threat-hunting",
    "rules-emerging-threats",
    "rules-dfir",
    "rules-compliance",
];

/// The data directory.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MAMORI_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("mamori");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/mamori")
}

/// Where the SigmaHQ corpus is installed.
pub fn sigmahq_dir() -> PathBuf {
    data_dir().join("rules/sigmahq")
}

/// The embedded rules as (name, text) pairs for the loader.
pub fn own_rules() -> Vec<(&'static str, &'static str)> {
    OWN_RULES.to_vec()
}

/// Loads `explicit` rule paths, or the default set (installed SigmaHQ + Mamori's own).
pub fn load_rules(explicit: &[PathBuf], options: CompileOptions) -> Result<Loaded> {
    if !explicit.is_empty() {
        return load::load(explicit, &[], options).context("loading rules");
    }
    let root = sigmahq_dir();
    if !root.is_dir() {
        bail!(
            "no rules given and the SigmaHQ corpus is not installed in {}.\n\
             Install it with `mamori rules install --from <SigmaHQ folder>` \
             (for example ../shared/data/sigma), or pass --rules DIR",
            root.display()
        );
    }
    let dirs: Vec<PathBuf> = DEFAULT_SIGMA_DIRS
        .iter()
        .map(|d| root.join(d))
        .filter(|p| p.is_dir())
        .collect();
    let own = own_rules();
    load::load(&dirs, &own, options).context("loading rules")
}
