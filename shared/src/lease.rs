//! A per-table lease for maintenance, held as one object created with a conditional write.
//!
//! Two compactions of one table must not run at once: delta-rs 1.1 does not treat two OPTIMIZE
//! commits that remove the same files (`dataChange: false`) as conflicting, so both land and every
//! rewritten row is then in the table twice. Ingestion commits are safe without a lease (they
//! conflict as they should); only maintenance takes one.
//!
//! The lease is created with `If-None-Match: *` (S3 conditional writes, an exclusive create on
//! folders), so exactly one holder wins. A holder that died leaves its lease behind; once it is
//! past its expiry (longer than any Lambda may run), the next one removes and re-creates it.
//! That takeover re-reads the lease first and removes only the one it found expired; between
//! that read and the removal lies a window of one request, and only after a holder crashed.

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longer than the longest Lambda invocation (15 minutes).
pub const LEASE_TTL_MS: i64 = 20 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Body {
    holder: String,
    expires_ms: i64,
}

/// A lease this process holds; [`Lease::release`] removes it.
#[derive(Debug)]
pub struct Lease {
    path: Path,
    body: Body,
}

impl Lease {
    /// Takes the lease at `path`, or `None` when someone else holds it.
    pub async fn acquire(store: &dyn ObjectStore, path: &Path, now_ms: i64) -> Result<Option<Lease>> {
        let body = Body {
            holder: uuid_like(),
            expires_ms: now_ms + LEASE_TTL_MS,
        };
        for _ in 0..2 {
            let bytes =
                serde_json::to_vec(&body).map_err(Error::library(crate::error::Stage::Compact, &path, false))?;
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match store.put_opts(path, PutPayload::from(bytes), opts).await {
                Ok(_) => {
                    return Ok(Some(Lease {
                        path: path.clone(),
                        body,
                    }))
                }
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(Error::storage("create lease", path)(e)),
            }
            // Held: by a live holder (give way), or by one that died (take over once).
            let held = match store.get(path).await {
                Ok(r) => r.bytes().await.map_err(Error::storage("read lease", path))?,
                // Released meanwhile: try again.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(Error::storage("read lease", path)(e)),
            };
            let held = serde_json::from_slice::<Body>(&held).ok();
            // Our own: the create succeeded but its answer was lost, and the client's retry of
            // it met the object it had just written.
            if held.as_ref() == Some(&body) {
                return Ok(Some(Lease {
                    path: path.clone(),
                    body,
                }));
            }
            let expired = held.is_none_or(|b| b.expires_ms < now_ms);
            if !expired {
                return Ok(None);
            }
            tracing::warn!(lease = %path, "an expired lease (its holder died) is taken over");
            match store.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::storage("remove expired lease", path)(e)),
            }
        }
        Ok(None)
    }

    /// Removes the lease if it is still this holder's.
    pub async fn release(self, store: &dyn ObjectStore) -> Result<()> {
        let mine = match store.get(&self.path).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(Error::storage("read lease", &self.path))?;
                serde_json::from_slice::<Body>(&bytes).is_ok_and(|b| b == self.body)
            }
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(Error::storage("read lease", &self.path)(e)),
        };
        if mine {
            match store.delete(&self.path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::storage("release lease", &self.path)(e)),
            }
        }
        Ok(())
    }
}

/// A holder id unique enough to tell two processes apart (time, process and a random part).
fn uuid_like() -> String {
    format!(
        "{}-{}-{:016x}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
        fastrand::u64(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;

    async fn exclusive(store: &dyn ObjectStore) {
        let p = Path::from("leases/t/compact");
        let a = Lease::acquire(store, &p, 1_000).await.unwrap().expect("free");
        assert!(Lease::acquire(store, &p, 2_000).await.unwrap().is_none(), "held");
        a.release(store).await.unwrap();
        let b = Lease::acquire(store, &p, 3_000).await.unwrap().expect("released");
        // Its holder dies: after the expiry the next one takes over, and the dead holder's
        // late release does not remove the new lease.
        let c = Lease::acquire(store, &p, 3_000 + LEASE_TTL_MS + 1)
            .await
            .unwrap()
            .expect("expired");
        b.release(store).await.unwrap();
        assert!(Lease::acquire(store, &p, 3_000 + LEASE_TTL_MS + 2)
            .await
            .unwrap()
            .is_none());
        c.release(store).await.unwrap();
    }

    #[tokio::test]
    async fn one_holder_at_a_time_in_memory_and_on_folders() {
        exclusive(&InMemory::new()).await;
        let dir = tempfile::tempdir().unwrap();
        exclusive(&LocalFileSystem::new_with_prefix(dir.path()).unwrap()).await;
    }

    #[tokio::test]
    async fn racing_takers_get_one_lease() {
        let store = std::sync::Arc::new(InMemory::new());
        let p = Path::from("leases/t/compact");
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (s, p) = (store.clone(), p.clone());
            tasks.push(tokio::spawn(async move {
                Lease::acquire(s.as_ref(), &p, 5).await.unwrap().is_some()
            }));
        }
        let mut won = 0;
        for t in tasks {
            won += usize::from(t.await.unwrap());
        }
        assert_eq!(won, 1);
    }
}
