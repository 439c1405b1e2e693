//! Writes the CRDs generated from the types into `crds/` and the Helm chart's copy in
//! `charts/kubeci/files/crds/` (or only into the directory given as argument).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dirs = match std::env::args_os().nth(1) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => shared_types::crds::COMMITTED_DIRS
            .iter()
            .map(|dir| shared_types::repo::root().join(dir))
            .collect(),
    };
    for dir in dirs {
        std::fs::create_dir_all(&dir)?;
        for (file, crd) in shared_types::crds::all() {
            let path = dir.join(file);
            std::fs::write(&path, shared_types::crds::to_yaml(&crd))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
