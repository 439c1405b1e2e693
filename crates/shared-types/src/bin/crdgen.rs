//! Writes the CRDs generated from the types into `crds/` (or the directory given as argument).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crds"));
    std::fs::create_dir_all(&dir)?;
    for (file, crd) in shared_types::crds::all() {
        let path = dir.join(file);
        std::fs::write(&path, shared_types::crds::to_yaml(&crd))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
