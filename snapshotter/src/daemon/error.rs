//! Why a snapshots request failed, and the gRPC code containerd expects
//! for it.

use containerd_snapshots::tonic::Status;

use super::records::RecordError;

/// Why a request failed, with the gRPC code containerd expects.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Each cause once (see `error_chain`).
    #[error("{}", slayerfs_chunkstore::error_chain(.0.as_ref()))]
    Internal(#[from] anyhow::Error),
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        let msg = e.to_string();
        match e {
            ServiceError::Record(RecordError::NotFound(_)) => Status::not_found(msg),
            ServiceError::Record(RecordError::AlreadyExists(_)) => Status::already_exists(msg),
            ServiceError::Record(RecordError::FailedPrecondition(_))
            | ServiceError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ServiceError::Record(RecordError::InvalidArgument(_))
            | ServiceError::InvalidArgument(_) => Status::invalid_argument(msg),
            ServiceError::Record(RecordError::NoRoom { .. }) => {
                tracing::warn!(error = %msg, "snapshot request refused");
                Status::resource_exhausted(msg)
            }
            _ => {
                tracing::error!(error = %msg, "snapshot request failed");
                Status::internal(msg)
            }
        }
    }
}

pub(crate) fn internal(e: impl Into<anyhow::Error>) -> ServiceError {
    ServiceError::Internal(e.into())
}

pub type Result<T> = std::result::Result<T, ServiceError>;
