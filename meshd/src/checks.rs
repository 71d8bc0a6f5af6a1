//! The check runner: runs the HTTP, TCP and TTL checks of this agent's services and writes a
//! check's status to the registry only when it changes.
//!
//! INTERFACE SKELETON — bodies are being written; the signatures are the contract.

use registry::{Registry, Status, WriteError};

/// Why a TTL update was refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckUpdateError {
    #[error("unknown check ID {0:?}")]
    NotFound(String),
    #[error("check {0:?} is not a TTL check")]
    NotTtl(String),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Handle to the check runner; cheap to clone.
#[derive(Clone)]
pub struct CheckRunner {
    registry: Registry,
}

impl CheckRunner {
    /// Records a TTL check update (`/v1/agent/check/{pass,warn,fail,update}/{id}`): resets the
    /// TTL timer and writes the status and output if they changed.
    pub async fn ttl_update(
        &self,
        check_id: &str,
        status: Status,
        output: String,
    ) -> Result<(), CheckUpdateError> {
        let _ = (check_id, status, output, &self.registry);
        todo!()
    }
}
