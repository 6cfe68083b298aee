//! Writing one object: a single put for small payloads, a multipart upload for large ones,
//! aborted when it fails so that no orphaned parts are left behind on S3-like stores.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use tokio::task::JoinSet;

/// Payloads larger than this go through a multipart upload.
pub(crate) const MULTIPART_THRESHOLD: usize = 8 * 1024 * 1024;
/// The size of every part but the last (S3 needs at least 5 MiB; R2 needs equal sizes).
pub(crate) const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts in flight at once for one upload.
pub(crate) const MAX_PARTS_IN_FLIGHT: usize = 4;

/// How an upload failed.
#[derive(Debug)]
pub(crate) enum UploadError {
    /// The single put, or starting the multipart upload, failed: nothing to clean up.
    Put(object_store::Error),
    /// A part or the completion failed; the upload was aborted. `abort` is the abort's own
    /// error, if it failed too (parts may then be left until a lifecycle rule removes them).
    Multipart {
        source: object_store::Error,
        abort: Option<object_store::Error>,
    },
}

/// Writes `bytes` to `location`: one put up to `threshold` bytes, otherwise a multipart
/// upload in `part_size` parts, at most [`MAX_PARTS_IN_FLIGHT`] of them in flight. Runs on
/// the caller's runtime (the part uploads are spawned on it).
pub(crate) async fn put_object(
    store: Arc<dyn ObjectStore>,
    location: Path,
    bytes: Bytes,
    threshold: usize,
    part_size: usize,
) -> Result<(), UploadError> {
    if bytes.len() <= threshold {
        return store
            .put(&location, PutPayload::from(bytes))
            .await
            .map(drop)
            .map_err(UploadError::Put);
    }
    let mut upload = store
        .put_multipart(&location)
        .await
        .map_err(UploadError::Put)?;
    let mut parts = JoinSet::new();
    match upload_parts(upload.as_mut(), &mut parts, bytes, part_size.max(1)).await {
        Ok(()) => Ok(()),
        Err(source) => {
            // Stop the parts still in flight before aborting, so none lands after the abort.
            parts.shutdown().await;
            let abort = upload.abort().await.err();
            Err(UploadError::Multipart { source, abort })
        }
    }
}

async fn upload_parts(
    upload: &mut dyn MultipartUpload,
    parts: &mut JoinSet<object_store::Result<()>>,
    mut bytes: Bytes,
    part_size: usize,
) -> object_store::Result<()> {
    while !bytes.is_empty() {
        while parts.len() >= MAX_PARTS_IN_FLIGHT {
            join_one(parts).await?;
        }
        let part = bytes.split_to(part_size.min(bytes.len()));
        parts.spawn(upload.put_part(PutPayload::from(part)));
    }
    while !parts.is_empty() {
        join_one(parts).await?;
    }
    upload.complete().await.map(drop)
}

async fn join_one(parts: &mut JoinSet<object_store::Result<()>>) -> object_store::Result<()> {
    match parts.join_next().await {
        None => Ok(()),
        Some(Ok(result)) => result,
        Some(Err(join)) => Err(object_store::Error::Generic {
            store: "cairn-storage",
            source: Box::new(join),
        }),
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;
    use crate::fault::{FaultyObjectStore, OpKind};

    /// A store over memory that fails the `fail_part`th part (1-based) and counts what
    /// reaches it.
    fn store(fail_part: Option<u64>) -> (Arc<InMemory>, Arc<FaultyObjectStore>) {
        let inner = Arc::new(InMemory::new());
        let store = Arc::new(FaultyObjectStore::new(inner.clone()));
        if let Some(n) = fail_part {
            store.fail_nth(OpKind::PutPart, n);
        }
        (inner, store)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn payload(len: usize) -> Bytes {
        Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>())
    }

    #[test]
    fn small_payloads_are_one_put_large_ones_are_parts() {
        let rt = rt();
        let (inner, s) = store(None);
        let path = Path::from("a/small");
        let bytes = payload(1000);
        rt.block_on(put_object(
            s.clone(),
            path.clone(),
            bytes.clone(),
            1000,
            300,
        ))
        .unwrap();
        assert_eq!(s.count(OpKind::Put), 1);
        assert_eq!(s.count(OpKind::PutPart), 0);
        let got = rt
            .block_on(async { inner.get(&path).await?.bytes().await })
            .unwrap();
        assert_eq!(got, bytes);

        let path = Path::from("a/large");
        let bytes = payload(1001);
        rt.block_on(put_object(
            s.clone(),
            path.clone(),
            bytes.clone(),
            1000,
            300,
        ))
        .unwrap();
        assert_eq!(s.count(OpKind::Put), 1);
        // 300 + 300 + 300 + 101.
        assert_eq!(s.count(OpKind::PutPart), 4);
        assert_eq!(s.count(OpKind::CompleteMultipart), 1);
        assert_eq!(s.count(OpKind::AbortMultipart), 0);
        let got = rt
            .block_on(async { inner.get(&path).await?.bytes().await })
            .unwrap();
        assert_eq!(got, bytes, "parts are reassembled in order");
    }

    #[test]
    fn a_failed_part_aborts_the_upload_and_leaves_no_object() {
        let rt = rt();
        for fail_part in [1, 3, 6] {
            let (inner, s) = store(Some(fail_part));
            let path = Path::from("a/large");
            let err = rt
                .block_on(put_object(
                    s.clone(),
                    path.clone(),
                    payload(6000),
                    1000,
                    1000,
                ))
                .unwrap_err();
            match err {
                UploadError::Multipart { source, abort } => {
                    assert!(source.to_string().contains("injected"), "{source}");
                    assert!(abort.is_none(), "{abort:?}");
                }
                other => panic!("expected a multipart error, got {other:?}"),
            }
            assert_eq!(s.count(OpKind::AbortMultipart), 1, "part {fail_part}");
            assert_eq!(s.count(OpKind::CompleteMultipart), 0);
            let head = rt.block_on(inner.head(&path));
            assert!(
                matches!(head, Err(object_store::Error::NotFound { .. })),
                "{head:?}"
            );
        }
    }
}
