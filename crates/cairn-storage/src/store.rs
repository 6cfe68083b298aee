//! The I/O layer: an `object_store` plus the runtime that drives it, with blocking wrappers,
//! URL parsing and the local-disk durability additions.

use std::future::Future;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, ObjectStoreScheme};
use tokio::runtime::Runtime;

use crate::error::StorageError;
use crate::upload::{put_object, UploadError, MULTIPART_THRESHOLD, PART_SIZE};

/// What identifies one checkpoint directory in this process (see [`Store::directory_key`]).
/// An `Object` key is only ever looked up while a storage holding that store is alive, so
/// its address cannot name another store meanwhile.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum DirectoryKey {
    Local(PathBuf),
    Cloud(String, String),
    Object(usize, String),
}

/// The runtime shared by every storage in the process (created on first use).
static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);

fn shared_runtime() -> Result<Arc<Runtime>, StorageError> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = slot.as_ref() {
        return Ok(rt.clone());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cairn-storage")
        .enable_all()
        .build()
        .map_err(|source| StorageError::Runtime { source })?;
    let rt = Arc::new(rt);
    *slot = Some(rt.clone());
    Ok(rt)
}

/// An object store, the runtime that drives it, and — when this crate built the store over a
/// local directory — that directory, for the syncs `object_store` does not do.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    store: Arc<dyn ObjectStore>,
    rt: Arc<Runtime>,
    /// The file-system directory that object path `""` maps to (local stores opened by URL).
    local_root: Option<PathBuf>,
    /// `scheme://bucket` of a cloud store opened by URL (which builds a new client each time).
    cloud: Option<String>,
}

impl Store {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        local_root: Option<PathBuf>,
    ) -> Result<Self, StorageError> {
        Ok(Self {
            store,
            rt: shared_runtime()?,
            local_root,
            cloud: None,
        })
    }

    /// What names the directory `root` of this store within the process, so that every
    /// storage opened on one directory shares one in-flight registry: the local directory,
    /// the cloud bucket and prefix, or else the store object itself (a store given to
    /// `from_store`, shared by handing the same `Arc` around; `memory://` opens a fresh one).
    pub(crate) fn directory_key(&self, root: &Path) -> DirectoryKey {
        if let Some(p) = self.local_path(root) {
            return DirectoryKey::Local(p);
        }
        if let Some(cloud) = &self.cloud {
            return DirectoryKey::Cloud(cloud.clone(), root.to_string());
        }
        // The data pointer only (a `dyn` pointer's vtable part may differ between casts).
        let object = Arc::as_ptr(&self.store) as *const () as usize;
        DirectoryKey::Object(object, root.to_string())
    }

    /// Opens `url` (`memory://[path]`, `file:///abs/dir`, a plain local path, or a cloud URL),
    /// returning the store and the prefix inside it. `create` creates a missing local
    /// directory.
    pub(crate) fn open(url: &str, create: bool) -> Result<(Self, Path), StorageError> {
        let invalid = |reason: String| StorageError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        if !url.contains("://") {
            if url.is_empty() {
                return Err(invalid("empty path".into()));
            }
            if let Some(scheme) = url_scheme_without_slashes(url) {
                return Err(invalid(format!(
                    "this is a {scheme} URL without `//` (write {scheme}://…); a local path \
                     that starts so must be written ./{url}"
                )));
            }
            return Self::open_local(url, FsPath::new(url), create);
        }
        let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let (scheme, path) =
            ObjectStoreScheme::parse(&parsed).map_err(|e| invalid(e.to_string()))?;
        match scheme {
            ObjectStoreScheme::Memory => {
                let prefix = Path::parse(path).map_err(|e| invalid(e.to_string()))?;
                Ok((Self::new(Arc::new(InMemory::new()), None)?, prefix))
            }
            ObjectStoreScheme::Local => {
                let fs_path = parsed
                    .to_file_path()
                    .map_err(|()| invalid("not an absolute file path".into()))?;
                Self::open_local(url, &fs_path, create)
            }
            ObjectStoreScheme::AmazonS3 => Self::open_cloud(url, &path, crate::cloud::s3),
            ObjectStoreScheme::GoogleCloudStorage => {
                Self::open_cloud(url, &path, crate::cloud::gcs)
            }
            ObjectStoreScheme::MicrosoftAzure => Self::open_cloud(url, &path, crate::cloud::azure),
            _ => Err(invalid(format!("unsupported scheme {}", parsed.scheme()))),
        }
    }

    /// A cloud store built by `build` from the URL and the environment, with the URL's path
    /// as the prefix.
    fn open_cloud(
        url: &str,
        path: &Path,
        build: fn(&str) -> Result<Arc<dyn ObjectStore>, StorageError>,
    ) -> Result<(Self, Path), StorageError> {
        let store = build(url)?;
        let mut this = Self::new(store, None)?;
        this.cloud = url::Url::parse(url)
            .ok()
            .map(|u| format!("{}://{}", u.scheme(), u.host_str().unwrap_or_default()));
        Ok((this, path.clone()))
    }

    fn open_local(url: &str, dir: &FsPath, create: bool) -> Result<(Self, Path), StorageError> {
        let dir = std::path::absolute(dir).map_err(|e| StorageError::io("resolve", dir, e))?;
        if create && !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| StorageError::io("create_dir", &dir, e))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        if !dir.is_dir() {
            return Err(StorageError::InvalidUrl {
                url: url.to_string(),
                reason: NOT_A_DIRECTORY.into(),
            });
        }
        let fs = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| StorageError::store("open", dir.display(), e))?
            // Durability: sync_all the staged file, rename, fsync the parent directory (and any
            // directories it created). Off by default in object_store.
            .with_fsync(true);
        let root =
            std::fs::canonicalize(&dir).map_err(|e| StorageError::io("canonicalize", &dir, e))?;
        Ok((Self::new(Arc::new(fs), Some(root))?, Path::default()))
    }

    /// The same store seen through `wrap` (for example a fault-injecting wrapper); the local
    /// directory, if any, is kept.
    pub(crate) fn wrapped(
        self,
        wrap: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>,
    ) -> Self {
        Self {
            store: wrap(self.store),
            ..self
        }
    }

    /// Runs the future `make` builds on the storage runtime and waits for it. The future is
    /// built and polled on the runtime's worker threads, so all I/O (HTTP connections,
    /// multipart parts, local-file `spawn_blocking`) is driven there and the caller's thread
    /// needs no runtime of its own. The wait is a plain thread park (not `Runtime::block_on`),
    /// so it neither panics nor deadlocks inside another runtime, including in
    /// `spawn_blocking`; from an async task it blocks that task's worker thread meanwhile.
    fn run<T, Fut>(
        &self,
        op: &'static str,
        make: impl FnOnce(Arc<dyn ObjectStore>) -> Fut + Send + 'static,
    ) -> Result<T, StorageError>
    where
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.store.clone();
        let task = self.rt.spawn(async move { make(store).await });
        futures::executor::block_on(task).map_err(|e| StorageError::Task {
            op,
            detail: if e.is_panic() {
                "the storage task panicked".into()
            } else {
                "the storage task was cancelled (runtime shut down)".into()
            },
        })
    }

    /// Writes an object atomically and durably (see the crate docs): one put, or above
    /// [`MULTIPART_THRESHOLD`] bytes a multipart upload that is aborted if it fails.
    pub(crate) fn put(&self, path: &Path, bytes: Bytes) -> Result<(), StorageError> {
        let location = path.clone();
        let result = self.run("put", move |store| {
            put_object(store, location, bytes, MULTIPART_THRESHOLD, PART_SIZE)
        })?;
        result.map_err(|e| match e {
            UploadError::Put(source) => StorageError::store("put", path, source),
            UploadError::Multipart {
                source,
                abort: None,
            } => StorageError::store("put_multipart", path, source),
            UploadError::Multipart {
                source,
                abort: Some(abort),
            } => StorageError::MultipartAbort {
                path: path.to_string(),
                source,
                abort: Box::new(abort),
            },
        })
    }

    /// Reads a whole object whose size is at most `max` bytes; a larger one is an error before
    /// any of it is read (so a bad or hostile object cannot make the reader allocate
    /// unboundedly).
    pub(crate) fn get_bounded(&self, path: &Path, max: u64) -> Result<Bytes, StorageError> {
        let location = path.clone();
        self.run("get", move |store| async move {
            let result = store.get(&location).await?;
            let size = result.meta.size;
            if size > max {
                return Ok(Err(StorageError::TooLarge {
                    path: location.to_string(),
                    size,
                    max,
                }));
            }
            result.bytes().await.map(Ok)
        })?
        .map_err(|e| StorageError::store("get", path, e))?
    }

    /// The size of an object, `None` if it does not exist.
    pub(crate) fn size(&self, path: &Path) -> Result<Option<u64>, StorageError> {
        let location = path.clone();
        match self.run(
            "head",
            move |store| async move { store.head(&location).await },
        )? {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::store("head", path, e)),
        }
    }

    /// Every object under `prefix`, recursively.
    pub(crate) fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>, StorageError> {
        let prefix_owned = prefix.clone();
        match self.run("list", move |store| {
            store.list(Some(&prefix_owned)).try_collect::<Vec<_>>()
        })? {
            Ok(v) => Ok(v),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(StorageError::store("list", prefix, e)),
        }
    }

    /// The "directories" directly under `prefix`.
    pub(crate) fn list_dirs(&self, prefix: &Path) -> Result<Vec<Path>, StorageError> {
        let prefix_owned = prefix.clone();
        match self.run("list", move |store| async move {
            store.list_with_delimiter(Some(&prefix_owned)).await
        })? {
            Ok(r) => Ok(r.common_prefixes),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(StorageError::store("list", prefix, e)),
        }
    }

    /// Deletes an object; a missing object is not an error.
    pub(crate) fn delete(&self, path: &Path) -> Result<(), StorageError> {
        let location = path.clone();
        match self.run("delete", move |store| async move {
            store.delete(&location).await
        })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::store("delete", path, e)),
        }
    }

    /// Makes a deletion in directory `dir` durable (local stores only; `object_store` does
    /// not fsync after deletes). A no-op for other stores, whose deletes are durable on ack.
    pub(crate) fn sync_deletes_in(&self, dir: &Path) -> Result<(), StorageError> {
        match self.local_path(dir) {
            Some(p) if p.is_dir() => sync_dir(&p),
            _ => Ok(()),
        }
    }

    /// Removes what is left of a local directory after its objects were deleted: staging
    /// files of interrupted puts (`name#<n>`, invisible to `object_store` listings) and the
    /// empty directories. A no-op for other stores.
    pub(crate) fn remove_local_dir(&self, dir: &Path) -> Result<(), StorageError> {
        if let Some(p) = self.local_path(dir) {
            match std::fs::remove_dir_all(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(StorageError::io("remove_dir", &p, e)),
            }
            if let Some(parent) = p.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }

    /// The staging files under local directory `dir`, recursively: `<name>#<digits>`, where
    /// `object_store` writes a put before renaming it to `<name>`. A process that dies in
    /// between leaves one behind, and `object_store` listings skip such names, so only this
    /// finds them. Each comes as its path relative to `dir` (`/`-separated) with its
    /// modification time. Empty for other stores and for a missing directory.
    pub(crate) fn local_staging_files(
        &self,
        dir: &Path,
    ) -> Result<Vec<(String, Option<SystemTime>)>, StorageError> {
        fn walk(
            p: &FsPath,
            prefix: &str,
            out: &mut Vec<(String, Option<SystemTime>)>,
        ) -> std::io::Result<()> {
            // An entry that goes while this walks (a put renamed, a directory removed) is
            // skipped; the walk goes on.
            let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
            for entry in std::fs::read_dir(p)? {
                let entry = entry?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                let rel = format!("{prefix}{name}");
                let is_dir = match entry.file_type() {
                    Ok(t) => t.is_dir(),
                    Err(e) if gone(&e) => continue,
                    Err(e) => return Err(e),
                };
                if is_dir {
                    match walk(&entry.path(), &format!("{rel}/"), out) {
                        Err(e) if gone(&e) => {}
                        other => other?,
                    }
                } else if staging_base(&name).is_some() {
                    match entry.metadata() {
                        Ok(m) => out.push((rel, m.modified().ok())),
                        Err(e) if gone(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(())
        }
        let Some(p) = self.local_path(dir) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        match walk(&p, "", &mut out) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("list_staging", &p, e)),
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Deletes staging file `name` (relative to local directory `dir`; see
    /// [`Store::local_staging_files`]); a missing one is not an error. A no-op for other
    /// stores.
    pub(crate) fn remove_local_staging(&self, dir: &Path, name: &str) -> Result<(), StorageError> {
        let Some(mut p) = self.local_path(dir) else {
            return Ok(());
        };
        p.extend(name.split('/'));
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io("remove_staging", &p, e)),
        }
    }

    /// Removes a local directory left empty (and empty directories in it); one that still
    /// holds a file stays. A no-op for other stores.
    pub(crate) fn remove_local_dir_if_empty(&self, dir: &Path) -> Result<(), StorageError> {
        fn prune(p: &FsPath) -> std::io::Result<bool> {
            let mut empty = true;
            for entry in std::fs::read_dir(p)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    empty &= prune(&entry.path())?;
                } else {
                    empty = false;
                }
            }
            if empty {
                std::fs::remove_dir(p)?;
            }
            Ok(empty)
        }
        let Some(p) = self.local_path(dir) else {
            return Ok(());
        };
        match prune(&p) {
            Ok(true) => match p.parent() {
                Some(parent) => sync_dir(parent),
                None => Ok(()),
            },
            Ok(false) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io("remove_dir", &p, e)),
        }
    }

    /// The file-system path of `dir` (local stores opened by URL only).
    pub(crate) fn local_path(&self, dir: &Path) -> Option<PathBuf> {
        let root = self.local_root.as_ref()?;
        let mut p = root.clone();
        for part in dir.parts() {
            p.push(part.as_ref());
        }
        Some(p)
    }
}

/// Fsyncs a directory so that changes to its entries are durable (Unix; a no-op elsewhere,
/// where directories cannot be opened portably — the same choice as `object_store`).
fn sync_dir(dir: &FsPath) -> Result<(), StorageError> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| StorageError::io("fsync_dir", dir, e))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// The name a staging file of `object_store`'s local puts stands in for: `name` of
/// `name#<digits>` (the test its listings skip a file by, first `#` included), `None` for
/// any other file name.
pub(crate) fn staging_base(file_name: &str) -> Option<&str> {
    let (base, suffix) = file_name.split_once('#')?;
    (!base.is_empty() && !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
        .then_some(base)
}

/// The reason of [`StorageError::InvalidUrl`] for a local path that is no directory.
pub(crate) const NOT_A_DIRECTORY: &str = "not a directory";

/// The scheme of `url` when it starts like a storage URL that lost its `//` (`s3:/bucket`,
/// `file:dir`): a plain local path so named is far more often a typo than meant.
fn url_scheme_without_slashes(url: &str) -> Option<&str> {
    const SCHEMES: [&str; 11] = [
        "file", "memory", "s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "http", "https",
    ];
    let (scheme, _) = url.split_once(':')?;
    SCHEMES
        .iter()
        .find(|known| known.eq_ignore_ascii_case(scheme))
        .copied()
}
