//! A converted image: its layers are SlayerFS index blobs (media type
//! [`MEDIA_TYPE`]), annotated so that containerd passes them to the
//! snapshotter as lazy-pull labels; read back from an OCI layout with each
//! index verified.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};
use slayerfs_layerfs::index::{decode_index, ValidIndex};
use slayerfs_proto::index::MEDIA_TYPE;

use super::layout::OciLayout;
use super::reference::ImageRef;
use super::ImageError;

/// Layer annotation: digest of the layer index blob (also the layer digest).
pub const ANNOTATION_INDEX: &str = "containerd.io/snapshot/slayerfs.index";
/// Layer annotation: digest of the original layer blob.
pub const ANNOTATION_SOURCE_DIGEST: &str = "containerd.io/snapshot/slayerfs.source-digest";
/// Manifest annotation: digest of the original manifest.
pub const ANNOTATION_SOURCE_MANIFEST: &str = "dev.slayerfs.source-manifest";

/// A converted image read back from a layout.
pub struct ConvertedImage {
    pub layout: OciLayout,
    pub manifest_digest: String,
    pub manifest: ImageManifest,
}

impl ConvertedImage {
    pub fn open(r: &ImageRef) -> Result<Self, ImageError> {
        let ImageRef::OciLayout { dir, tag } = r else {
            return Err(ImageError::Unsupported(format!(
                "{r}: only oci:DIR[:TAG] can be inspected for now"
            )));
        };
        let layout = OciLayout::open(dir)?;
        let desc = layout.resolve(tag.as_deref())?;
        let bytes = layout.read_blob(&desc)?;
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid {
                what: format!("manifest {}", desc.digest()),
                message: e.to_string(),
            })?;
        Ok(ConvertedImage {
            layout,
            manifest_digest: desc.digest().to_string(),
            manifest,
        })
    }

    /// Reads, verifies and decodes the index of a converted layer.
    pub fn layer_index(&self, desc: &Descriptor) -> Result<ValidIndex, ImageError> {
        let digest = desc.digest().to_string();
        if desc.media_type().to_string() != MEDIA_TYPE {
            return Err(ImageError::Unsupported(format!(
                "layer {digest} is not a SlayerFS index (not converted)"
            )));
        }
        let blob = self
            .layout
            .read_blob_up_to(desc, slayerfs_layerfs::index::MAX_INDEX_BYTES)?;
        decode_index(&blob).map_err(|e| ImageError::Invalid {
            what: format!("layer {digest}"),
            message: e.to_string(),
        })
    }

    /// The chain id of the image's top layer (what its traces are stored
    /// under), from its config's diff ids.
    pub fn chain_id(&self) -> Result<String, ImageError> {
        let desc = self.manifest.config();
        let bytes = self.layout.read_blob_up_to(desc, 4 << 20)?;
        let config: ImageConfiguration =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid {
                what: format!("config {}", desc.digest()),
                message: e.to_string(),
            })?;
        super::chain_ids(config.rootfs().diff_ids())
            .pop()
            .ok_or_else(|| ImageError::Invalid {
                what: format!("config {}", desc.digest()),
                message: "no layers".into(),
            })
    }
}
