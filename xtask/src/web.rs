//! The web app's files as served: content-hashed directory, precompressed copies.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use sha2::{Digest, Sha256};

/// Hex SHA-256 of `bytes`, first 16 characters (a cache key, not a signature).
pub fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// One hash over every file under `dir` (names and contents, in name order).
pub fn content_hash(dir: &Path) -> Result<String> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut hasher = Sha256::new();
    for rel in files {
        hasher.update(rel.as_bytes());
        hasher.update([0]);
        hasher.update(std::fs::read(dir.join(&rel))?);
    }
    Ok(hasher.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect())
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root)?.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// What a first visit downloads, in bytes on the wire: the brotli copy of every file under `dist` (`index.html`
/// and the assets; a browser fetches them all on a cold load).
pub fn cold_load_bytes(dist: &Path) -> Result<u64> {
    let mut files = Vec::new();
    collect(dist, dist, &mut files)?;
    let mut total = 0;
    for rel in files.iter().filter(|f| f.ends_with(".br")) {
        total += std::fs::metadata(dist.join(rel))?.len();
    }
    Ok(total)
}

pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        let target = to.join(path.file_name().expect("a name"));
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            std::fs::copy(&path, &target)?;
        }
    }
    Ok(())
}

/// Writes `<file>.br` (quality 11) and `<file>.gz` (level 9) next to every HTML, JS, CSS and wasm file under
/// `dir`. Returns how many files it compressed.
pub fn precompress(dir: &Path) -> Result<usize> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    let mut n = 0;
    for rel in files {
        if !["html", "js", "css", "wasm"].iter().any(|ext| rel.ends_with(&format!(".{ext}"))) {
            continue;
        }
        let path = dir.join(&rel);
        let data = std::fs::read(&path)?;
        let mut br = Vec::new();
        {
            let params = brotli::enc::BrotliEncoderParams { quality: 11, lgwin: 24, ..Default::default() };
            brotli::BrotliCompress(&mut &data[..], &mut br, &params)?;
        }
        std::fs::write(format!("{}.br", path.display()), br)?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&data)?;
        std::fs::write(format!("{}.gz", path.display()), gz.finish()?)?;
        n += 1;
    }
    Ok(n)
}
