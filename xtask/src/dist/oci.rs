//! An OCI image written without a registry or a daemon: one gzip layer, its
//! config and manifest, and the `oci-archive` that carries them (a tar of an
//! OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/<digest>`).
//!
//! Everything is built in memory and is byte for byte reproducible: tar
//! entries sorted by path, owned by root, dated `mtime`; gzip without a name
//! or time; JSON with sorted keys. The same inputs give the same digests.

use std::{collections::BTreeMap, io::Write};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The index annotation that names the image (`podman load` uses it).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { data: Vec<u8>, mode: u32 },
    Symlink { target: String },
}

/// A layer's file tree, keyed by path relative to `/` ("usr/sbin/nft").
/// Parent directories are added as they are needed (mode 0755).
#[derive(Debug, Default, Clone)]
pub struct Tree(BTreeMap<String, Node>);

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.insert(path, Node::Dir { mode })
    }

    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<()> {
        self.insert(path, Node::File { data, mode })
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(
            path,
            Node::Symlink {
                target: target.into(),
            },
        )
    }

    #[cfg(test)]
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.0.get(path.trim_start_matches('/'))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.0.iter().map(|(p, n)| (p.as_str(), n))
    }

    /// Bytes of file content.
    pub fn content_size(&self) -> u64 {
        self.0
            .values()
            .map(|n| match n {
                Node::File { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum()
    }

    /// Adds `node` at `path` (absolute or not) and the directories above it.
    /// The same path twice is an error unless both are directories, or the
    /// same file.
    fn insert(&mut self, path: &str, node: Node) -> Result<()> {
        let path = normalize(path)?;
        for (slash, _) in path.match_indices('/') {
            let parent = &path[..slash];
            match self.0.get(parent) {
                None => {
                    self.0.insert(parent.to_string(), Node::Dir { mode: 0o755 });
                }
                Some(Node::Dir { .. }) => {}
                Some(_) => bail!("{parent} is not a directory but {path} is below it"),
            }
        }
        match (self.0.get(&path), &node) {
            (None, _) => {
                self.0.insert(path, node);
            }
            // An explicit mode wins over the default of a parent made earlier.
            (Some(Node::Dir { .. }), Node::Dir { .. }) => {
                self.0.insert(path, node);
            }
            (Some(old), new) if old == new => {}
            (Some(_), _) => bail!("{path} is in the image twice, with different contents"),
        }
        Ok(())
    }

    /// The layer as an uncompressed tar: parents before children, sorted.
    pub fn layer_tar(&self, mtime: u64) -> Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, node) in &self.0 {
            let mut h = tar::Header::new_ustar();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(mtime);
            let (kind, mode, data): (_, _, &[u8]) = match node {
                Node::Dir { mode } => (tar::EntryType::Directory, *mode, &[]),
                Node::File { data, mode } => (tar::EntryType::Regular, *mode, data),
                Node::Symlink { target } => {
                    h.set_link_name(target)
                        .with_context(|| format!("symlink {path} -> {target}"))?;
                    (tar::EntryType::Symlink, 0o777, &[])
                }
            };
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            let name = if kind == tar::EntryType::Directory {
                format!("{path}/")
            } else {
                path.clone()
            };
            h.set_path(&name)
                .with_context(|| format!("tar entry {name}"))?;
            h.set_cksum();
            tar.append(&h, data)?;
        }
        Ok(tar.into_inner()?)
    }
}

/// "/usr//sbin/nft" → "usr/sbin/nft"; rejects "", "." and ".." parts.
fn normalize(path: &str) -> Result<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    ensure!(
        !parts.is_empty() && parts.iter().all(|p| *p != "." && *p != ".."),
        "bad path in image: {path:?}"
    );
    Ok(parts.join("/"))
}

/// gzip at the best level, with no file name and time 0 in the header.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(data)?;
    Ok(gz.finish()?)
}

/// "sha256:<hex>".
pub fn digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Content-addressed content.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: &'static str,
    pub data: Vec<u8>,
}

impl Blob {
    fn json(media_type: &'static str, v: &Value) -> Result<Self> {
        Ok(Self {
            media_type,
            data: serde_json::to_vec(v)?,
        })
    }

    pub fn digest(&self) -> String {
        digest(&self.data)
    }

    /// The blob's OCI content descriptor.
    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest(),
            "size": self.data.len(),
        })
    }
}

/// What the image config says about running the image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub entrypoint: Vec<String>,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// RFC 3339; left out when `None`.
    pub created: Option<String>,
    /// The index's `org.opencontainers.image.ref.name`, e.g. "lbpath:0.1.0".
    pub ref_name: String,
    /// The config's history line for the layer.
    pub created_by: String,
}

/// An image of one layer, ready to be written as an oci-archive.
#[derive(Debug, Clone)]
pub struct Image {
    pub layer: Blob,
    pub config: Blob,
    pub manifest: Blob,
    /// `index.json`.
    pub index: Vec<u8>,
}

impl Image {
    /// `layer_tar` is the uncompressed layer (its digest is the config's
    /// diff_id); the layer blob is its gzip.
    pub fn new(layer_tar: &[u8], spec: &ImageSpec) -> Result<Self> {
        let layer = Blob {
            media_type: MEDIA_LAYER,
            data: gzip(layer_tar)?,
        };
        let mut history = json!({ "created_by": spec.created_by });
        let mut config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": spec.entrypoint,
                "Env": spec.env,
                "Labels": spec.labels,
            },
            "rootfs": { "type": "layers", "diff_ids": [digest(layer_tar)] },
        });
        if let Some(created) = &spec.created {
            config["created"] = json!(created);
            history["created"] = json!(created);
        }
        config["history"] = json!([history]);
        let config = Blob::json(MEDIA_CONFIG, &config)?;
        let manifest = Blob::json(
            MEDIA_MANIFEST,
            &json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
                "annotations": spec.labels,
            }),
        )?;
        let mut entry = manifest.descriptor();
        entry["platform"] = json!({ "architecture": "amd64", "os": "linux" });
        entry["annotations"] = json!({ REF_NAME: spec.ref_name });
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [entry],
        }))?;
        Ok(Self {
            layer,
            config,
            manifest,
            index,
        })
    }

    /// The oci-archive: `oci-layout`, `index.json` and the three blobs.
    pub fn archive(&self, mtime: u64) -> Result<Vec<u8>> {
        let mut tree = Tree::new();
        tree.file(
            "oci-layout",
            serde_json::to_vec(&json!({ "imageLayoutVersion": "1.0.0" }))?,
            0o644,
        )?;
        tree.file("index.json", self.index.clone(), 0o644)?;
        for blob in [&self.layer, &self.config, &self.manifest] {
            let digest = blob.digest();
            let hex = digest.trim_start_matches("sha256:");
            tree.file(&format!("blobs/sha256/{hex}"), blob.data.clone(), 0o644)?;
        }
        tree.layer_tar(mtime)
    }
}

/// RFC 3339 UTC time of a Unix time ("1970-01-01T00:00:00Z").
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn spec() -> ImageSpec {
        ImageSpec {
            entrypoint: vec!["/usr/local/bin/lbpath".into()],
            env: vec!["PATH=/usr/sbin:/usr/bin".into()],
            labels: BTreeMap::from([(
                "org.opencontainers.image.title".to_string(),
                "lbpath".to_string(),
            )]),
            created: Some(rfc3339(0)),
            ref_name: "lbpath:0.1.0".into(),
            created_by: "test".into(),
        }
    }

    fn tree() -> Tree {
        let mut t = Tree::new();
        t.file("/usr/local/bin/lbpath", b"\x7fELF".to_vec(), 0o755)
            .unwrap();
        t.file("usr/sbin/xtables-nft-multi", b"multi".to_vec(), 0o755)
            .unwrap();
        t.symlink("usr/sbin/iptables-nft-save", "xtables-nft-multi")
            .unwrap();
        t.dir("tmp", 0o1777).unwrap();
        t
    }

    /// (path, type, mode, link, content) of each entry of a tar.
    fn entries(tar: &[u8]) -> Vec<(String, char, u32, String, Vec<u8>)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type().as_byte() as char,
                    h.mode().unwrap(),
                    h.link_name()
                        .unwrap()
                        .map(|l| l.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    data,
                )
            })
            .collect()
    }

    #[test]
    fn tree_adds_parents_and_rejects_conflicts() {
        let t = tree();
        let paths: Vec<&str> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "tmp",
                "usr",
                "usr/local",
                "usr/local/bin",
                "usr/local/bin/lbpath",
                "usr/sbin",
                "usr/sbin/iptables-nft-save",
                "usr/sbin/xtables-nft-multi",
            ]
        );
        assert_eq!(t.get("/tmp"), Some(&Node::Dir { mode: 0o1777 }));
        assert_eq!(t.content_size(), 9);
        let mut t = tree();
        // The same file twice is fine; different content or a file where a
        // directory is are not.
        t.file("usr/sbin/xtables-nft-multi", b"multi".to_vec(), 0o755)
            .unwrap();
        assert!(
            t.file("usr/sbin/xtables-nft-multi", b"other".to_vec(), 0o755)
                .is_err()
        );
        assert!(t.file("usr/local/bin/lbpath/x", vec![], 0o644).is_err());
        assert!(t.file("usr/../etc/passwd", vec![], 0o644).is_err());
        assert!(t.file("/", vec![], 0o644).is_err());
    }

    #[test]
    fn layer_tar_lists_parents_first_owned_by_root() {
        let tar = tree().layer_tar(1_700_000_000).unwrap();
        let e = entries(&tar);
        let names: Vec<(&str, char)> = e.iter().map(|e| (e.0.as_str(), e.1)).collect();
        assert_eq!(
            names,
            [
                ("tmp/", '5'),
                ("usr/", '5'),
                ("usr/local/", '5'),
                ("usr/local/bin/", '5'),
                ("usr/local/bin/lbpath", '0'),
                ("usr/sbin/", '5'),
                ("usr/sbin/iptables-nft-save", '2'),
                ("usr/sbin/xtables-nft-multi", '0'),
            ]
        );
        assert_eq!(e[0].2, 0o1777);
        assert_eq!(e[4].2, 0o755);
        assert_eq!(e[4].4, b"\x7fELF");
        assert_eq!(e[6].3, "xtables-nft-multi");
        // Same tree, same bytes.
        assert_eq!(tar, tree().layer_tar(1_700_000_000).unwrap());
    }

    #[test]
    fn digests_are_sha256_of_the_bytes() {
        assert_eq!(
            digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            digest(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn gzip_round_trips_and_is_stable() {
        let data = b"lbpath ".repeat(1000);
        let gz = gzip(&data).unwrap();
        assert!(gz.len() < data.len() / 10);
        // No name, mtime 0 (bytes 4..8 of the header).
        assert_eq!(&gz[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        assert_eq!(gz, gzip(&data).unwrap());
    }

    #[test]
    fn image_descriptors_chain_index_to_manifest_to_config_and_layer() {
        let layer_tar = tree().layer_tar(0).unwrap();
        let img = Image::new(&layer_tar, &spec()).unwrap();
        let index: Value = serde_json::from_slice(&img.index).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], MEDIA_INDEX);
        let m = &index["manifests"][0];
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(m["mediaType"], MEDIA_MANIFEST);
        assert_eq!(m["digest"], img.manifest.digest());
        assert_eq!(m["size"], img.manifest.data.len());
        assert_eq!(m["platform"]["os"], "linux");
        assert_eq!(m["annotations"][REF_NAME], "lbpath:0.1.0");

        let manifest: Value = serde_json::from_slice(&img.manifest.data).unwrap();
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["config"]["mediaType"], MEDIA_CONFIG);
        assert_eq!(manifest["config"]["digest"], digest(&img.config.data));
        assert_eq!(manifest["config"]["size"], img.config.data.len());
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0]["mediaType"], MEDIA_LAYER);
        assert_eq!(layers[0]["digest"], digest(&img.layer.data));
        assert_eq!(layers[0]["size"], img.layer.data.len());

        let config: Value = serde_json::from_slice(&img.config.data).unwrap();
        assert_eq!(
            config["config"]["Entrypoint"],
            json!(["/usr/local/bin/lbpath"])
        );
        assert_eq!(
            (&config["os"], &config["architecture"]),
            (&json!("linux"), &json!("amd64"))
        );
        // diff_id: the uncompressed layer's digest.
        assert_eq!(config["rootfs"]["type"], "layers");
        assert_eq!(config["rootfs"]["diff_ids"], json!([digest(&layer_tar)]));
        assert_eq!(config["created"], "1970-01-01T00:00:00Z");
        assert_eq!(config["history"][0]["created_by"], "test");
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&img.layer.data[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, layer_tar);
    }

    #[test]
    fn archive_is_an_oci_layout() {
        let img = Image::new(&tree().layer_tar(0).unwrap(), &spec()).unwrap();
        let tar = img.archive(0).unwrap();
        let e = entries(&tar);
        let files: BTreeMap<&str, &Vec<u8>> = e
            .iter()
            .filter(|e| e.1 == '0')
            .map(|e| (e.0.as_str(), &e.4))
            .collect();
        assert_eq!(files.len(), 5, "{:?}", files.keys());
        assert_eq!(
            serde_json::from_slice::<Value>(files["oci-layout"]).unwrap(),
            json!({ "imageLayoutVersion": "1.0.0" })
        );
        assert_eq!(files["index.json"], &img.index);
        for blob in [&img.layer, &img.config, &img.manifest] {
            let d = blob.digest();
            let path = format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
            assert_eq!(files[path.as_str()], &blob.data, "{path}");
        }
        assert!(e.iter().any(|e| e.0 == "blobs/sha256/" && e.1 == '5'));
        assert_eq!(tar, img.archive(0).unwrap());
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
