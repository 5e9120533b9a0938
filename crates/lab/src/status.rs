//! `status.json`: what the lab's runtime knows (running pods, problems), written by the
//! controller and read by `get`, `exec`, `logs` and `down`.

use serde::{Deserialize, Serialize};

use crate::LabError;
use crate::pod::RunningPod;
use crate::spec::{LabSpec, write_atomic};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub pods: Vec<RunningPod>,
    pub problems: Vec<String>,
}

pub fn load(spec: &LabSpec) -> Result<Status, LabError> {
    let path = spec.status_file();
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t)
            .map_err(|e| LabError::Invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Status::default()),
        Err(e) => Err(LabError::Io(path.display().to_string(), e)),
    }
}

pub fn save(spec: &LabSpec, s: &Status) -> Result<(), LabError> {
    write_atomic(
        &spec.status_file(),
        serde_json::to_string_pretty(s).expect("json").as_bytes(),
    )
}
