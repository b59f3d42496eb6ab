//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

/// Every `*.data` file under `dir`, at any depth.
pub fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "data") {
                out.push(path);
            }
        }
    }
    out
}
