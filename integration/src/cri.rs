//! A CRI v1 client, as kubelet talks to containerd's CRI plugin: the
//! generated stubs of `proto/cri.proto` and a connection over containerd's
//! socket.

#![allow(clippy::all, missing_docs)]
tonic::include_proto!("runtime.v1");

use std::path::Path;

use tonic::transport::{Channel, Endpoint, Uri};

/// A channel to the CRI plugin of the containerd whose socket is `socket`.
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            tokio::net::UnixStream::connect(socket.clone())
        }))
        .await
}
