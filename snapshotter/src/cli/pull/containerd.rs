//! The calls `slayerfs pull` makes on containerd's API, each in one
//! namespace and under one lease (so nothing written is collected before
//! the image record holds it).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, CreateRequest, DeleteRequest, Image, UpdateImageRequest,
    WriteAction, WriteContentRequest,
};
use containerd_client::tonic::metadata::{Ascii, MetadataValue};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};
use containerd_client::types::{Descriptor, Mount};

/// A connection to containerd, in one namespace, under one lease.
pub struct Containerd {
    channel: Channel,
    namespace: MetadataValue<Ascii>,
    lease: Option<MetadataValue<Ascii>>,
    lease_id: Option<String>,
}

/// What Prepare answered.
pub enum Prepared {
    /// The snapshotter has the layer already (pulled lazily).
    Exists,
    /// An empty snapshot to unpack the layer into.
    Mounts(Vec<Mount>),
}

fn header(what: &str, value: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    value
        .parse()
        .map_err(|_| anyhow::anyhow!("{what} `{value}` cannot be sent as a gRPC header"))
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

impl Containerd {
    pub async fn connect(address: &Path, namespace: &str) -> anyhow::Result<Self> {
        let channel = containerd_client::connect(address).await.map_err(|e| {
            anyhow::anyhow!("connecting to containerd at {}: {e}", address.display())
        })?;
        Ok(Containerd {
            channel,
            namespace: header("namespace", namespace)?,
            lease: None,
            lease_id: None,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        if let Some(l) = &self.lease {
            r.metadata_mut().insert("containerd-lease", l.clone());
        }
        r
    }

    /// Takes a lease that expires on its own in a day (if this process
    /// dies before [`Self::release`]).
    pub async fn lease(&mut self, id: &str) -> anyhow::Result<()> {
        let expire = SystemTime::now() + Duration::from_secs(24 * 3600);
        let expire = rfc3339(expire);
        let labels: HashMap<String, String> =
            [("containerd.io/gc.expire".to_string(), expire)].into();
        LeasesClient::new(self.channel.clone())
            .create(self.request(CreateRequest {
                id: id.to_string(),
                labels,
            }))
            .await
            .map_err(|s| anyhow::anyhow!("creating lease {id}: {}", s.message()))?;
        self.lease = Some(header("lease", id)?);
        self.lease_id = Some(id.to_string());
        Ok(())
    }

    /// Ends the lease: what the image record references stays.
    pub async fn release(&mut self) -> anyhow::Result<()> {
        let Some(id) = self.lease_id.take() else {
            return Ok(());
        };
        self.lease = None;
        LeasesClient::new(self.channel.clone())
            .delete(self.request(DeleteRequest {
                id: id.clone(),
                sync: false,
            }))
            .await
            .map_err(|s| anyhow::anyhow!("deleting lease {id}: {}", s.message()))?;
        Ok(())
    }

    /// Stores a blob in the content store (already there is fine).
    pub async fn write_content(
        &self,
        digest: &str,
        data: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> anyhow::Result<()> {
        let total = data.len() as i64;
        let req = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: format!("slayerfs-pull-{digest}"),
            total,
            expected: digest.to_string(),
            offset: 0,
            data,
            labels,
        };
        let stream = tokio_stream::iter(vec![req]);
        match ContentClient::new(self.channel.clone())
            .write(self.request(stream))
            .await
        {
            Ok(mut responses) => {
                while responses
                    .get_mut()
                    .message()
                    .await
                    .map_err(|s| content_err(digest, &s))?
                    .is_some()
                {}
                Ok(())
            }
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(content_err(digest, &s)),
        }
    }

    /// Whether the snapshotter has snapshot `key` in this namespace.
    pub async fn snapshot_exists(&self, snapshotter: &str, key: &str) -> anyhow::Result<bool> {
        match SnapshotsClient::new(self.channel.clone())
            .stat(self.request(StatSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => anyhow::bail!("snapshot {key}: {}", s.message()),
        }
    }

    pub async fn prepare(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> anyhow::Result<Prepared> {
        match SnapshotsClient::new(self.channel.clone())
            .prepare(self.request(PrepareSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.to_string(),
                parent: parent.to_string(),
                labels,
            }))
            .await
        {
            Ok(r) => Ok(Prepared::Mounts(r.into_inner().mounts)),
            Err(s) if s.code() == Code::AlreadyExists => Ok(Prepared::Exists),
            Err(s) => anyhow::bail!("preparing {key}: {}", s.message()),
        }
    }

    pub async fn commit(
        &self,
        snapshotter: &str,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> anyhow::Result<()> {
        SnapshotsClient::new(self.channel.clone())
            .commit(self.request(CommitSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                name: name.to_string(),
                key: key.to_string(),
                labels,
            }))
            .await
            .map_err(|s| anyhow::anyhow!("committing {name}: {}", s.message()))?;
        Ok(())
    }

    pub async fn remove(&self, snapshotter: &str, key: &str) -> anyhow::Result<()> {
        SnapshotsClient::new(self.channel.clone())
            .remove(self.request(RemoveSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.to_string(),
            }))
            .await
            .map_err(|s| anyhow::anyhow!("removing {key}: {}", s.message()))?;
        Ok(())
    }

    /// Unpacks layer blob `layer` (in the content store) into `mounts`
    /// with containerd's own differ; returns the diff id it computed.
    pub async fn apply(&self, layer: Descriptor, mounts: Vec<Mount>) -> anyhow::Result<String> {
        let digest = layer.digest.clone();
        let r = DiffClient::new(self.channel.clone())
            .apply(self.request(ApplyRequest {
                diff: Some(layer),
                mounts,
                payloads: HashMap::new(),
            }))
            .await
            .map_err(|s| anyhow::anyhow!("unpacking layer {digest}: {}", s.message()))?;
        Ok(r.into_inner().applied.map(|d| d.digest).unwrap_or_default())
    }

    /// Creates the image record `name` → `target`, or points an existing
    /// one at it.
    pub async fn set_image(&self, name: &str, target: Descriptor) -> anyhow::Result<()> {
        let now = timestamp(SystemTime::now());
        let image = Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(target),
            created_at: Some(now.clone()),
            updated_at: Some(now),
        };
        let mut images = ImagesClient::new(self.channel.clone());
        match images
            .create(self.request(CreateImageRequest {
                image: Some(image.clone()),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                images
                    .update(self.request(UpdateImageRequest {
                        image: Some(image),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["target".into()],
                        }),
                    }))
                    .await
                    .map_err(|s| anyhow::anyhow!("updating image {name}: {}", s.message()))?;
                Ok(())
            }
            Err(s) => Err(anyhow::anyhow!("creating image {name}: {}", s.message())),
        }
    }
}

fn content_err(digest: &str, s: &Status) -> anyhow::Error {
    anyhow::anyhow!(
        "storing {digest} in containerd's content store: {}",
        s.message()
    )
}

/// RFC 3339 in UTC, seconds precision (what containerd's gc.expire takes).
fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_times_are_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
    }
}
