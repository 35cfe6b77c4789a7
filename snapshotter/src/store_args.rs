//! The `--store` and `--s3-endpoint` flags both binaries take, and how they
//! override the configuration file.

use slayerfs_config::Config;

/// Where blocks are; overrides the config file.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// Block store: a directory or s3://BUCKET[/PREFIX] (default from the
    /// config, else <state_dir>/store).
    #[arg(long)]
    pub store: Option<String>,
    /// S3 endpoint URL, e.g. http://127.0.0.1:9000.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
}

impl StoreArgs {
    /// Writes the flags given over `config` (validate it afterwards).
    pub fn apply(&self, config: &mut Config) {
        if let Some(s) = &self.store {
            config.store.url = Some(s.clone());
        }
        if let Some(ep) = &self.s3_endpoint {
            config.store.s3.endpoint = Some(ep.clone());
        }
    }
}
