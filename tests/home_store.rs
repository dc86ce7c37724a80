//! Homes in a `HomeStore` instead of under the data root: the path a server of a cluster
//! takes, where every home is a `Storage` opened by name (an object store's key prefix).
//! Here the store is the local backend rooted elsewhere, so the generic path (open by key,
//! count the home through `Storage::usage`, sweep through `Storage::sweep_partials`, link
//! folders as homes of their own) is exercised on every machine; the S3 backend runs the
//! same path against Garage in the `needs_garage_*` tests.

use std::path::PathBuf;
use std::sync::Arc;

use ferry::client::ClientError;
use ferry::domain::BoxFuture;
use ferry::protocol::ErrorCode;
use ferry::server::SharedState;
use ferry::storage::local::LocalStorage;
use ferry::storage::{HomeStore, Storage, StorageError};

use crate::util::{TestServer, no_progress, random_file, sha256_hex, test_limits};

/// Homes as directories of another tree, opened by key.
#[derive(Debug)]
pub(crate) struct DirHomes(pub(crate) PathBuf);

impl HomeStore for DirHomes {
    fn key(&self, home: &str) -> String {
        format!("dir:{home}")
    }

    fn open<'a>(&'a self, home: &'a str) -> BoxFuture<'a, Result<Arc<dyn Storage>, StorageError>> {
        Box::pin(async move {
            let dir = self.0.join(home);
            let store = tokio::task::spawn_blocking(move || LocalStorage::open(&dir, true))
                .await
                .map_err(|e| StorageError::Io(std::io::Error::other(e)))??;
            Ok(Arc::new(store) as Arc<dyn Storage>)
        })
    }
}

async fn start(store: &tempfile::TempDir) -> TestServer {
    let state = SharedState {
        homes: Some(Arc::new(DirHomes(store.path().to_path_buf()))),
        ..SharedState::default()
    };
    TestServer::start_with_state(test_limits(), state).await
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Remote(w) => Some(w.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_land_in_the_home_store_and_come_back_verified() {
    let store = tempfile::tempdir().unwrap();
    let server = start(&store).await;
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("report.bin");
    let data = random_file(&src, 3 << 20, 7);
    let mut conn = server.alice().await;
    let put = conn
        .put(&src, "/report.bin", false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(put.sha256, sha256_hex(&data));
    // In the store, under the home's key; nothing under the data root.
    let stored = std::fs::read(store.path().join("alice/report.bin")).unwrap();
    assert_eq!(stored, data);
    assert!(!server.home("alice").join("report.bin").exists());
    let names: Vec<String> = conn
        .list("/")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["report.bin"]);
    let back = local.path().join("back.bin");
    conn.get("/report.bin", &back, false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), data);
    // No overwrite without asking, as with a home under the root.
    let err = conn
        .put(&src, "/report.bin", false, &mut no_progress())
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::AlreadyExists), "{err}");
    server.stop().await;
}

/// carol's quota (1 MiB, 5 files) counts what her home in the store already holds, found
/// through `Storage::usage` at her first login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_counts_what_the_store_already_holds() {
    let store = tempfile::tempdir().unwrap();
    std::fs::create_dir(store.path().join("carol")).unwrap();
    random_file(&store.path().join("carol/old.bin"), 900_000, 1);
    let server = start(&store).await;
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("new.bin");
    random_file(&src, 200_000, 2);
    let mut conn = server.connect("carol", "carol-pw").await;
    let usage = conn.usage().await.unwrap();
    assert_eq!(usage.used_bytes, Some(900_000));
    assert_eq!(usage.used_files, Some(1));
    let err = conn
        .put(&src, "/new.bin", false, &mut no_progress())
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::QuotaExceeded), "{err}");
    assert!(!store.path().join("carol/new.bin").exists());
    conn.remove("/old.bin").await.unwrap();
    conn.put(&src, "/new.bin", false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(conn.usage().await.unwrap().used_bytes, Some(200_000));
    server.stop().await;
}

/// A drop link's folder is a home of its own in the store: uploads land in it, counted in
/// the owner's quota, and nothing outside it can be named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_link_uploads_into_its_folder_in_the_store() {
    use crate::util::http::{BOTH, Client, digest_field, link_for};
    let store = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(store.path().join("alice/drop")).unwrap();
    std::fs::write(store.path().join("alice/secret.txt"), "not for senders").unwrap();
    let server = start(&store).await;
    let (token, _) = link_for(&server, "alice", "/drop", |_| {}).await;
    for proto in BOTH {
        let mut c = Client::connect(&server, proto).await;
        let body = format!("sent over {proto:?}").into_bytes();
        let r = c
            .plain(
                "PUT",
                &format!("/d/{token}/scan.pdf"),
                &[("content-digest", &digest_field(&body))],
                body.clone(),
            )
            .await;
        assert_eq!(r.status(), 201, "{proto:?}: {}", r.text());
        let name = r.json()["receipt"]["name"].as_str().unwrap().to_string();
        assert_eq!(
            std::fs::read(store.path().join("alice/drop").join(&name)).unwrap(),
            body
        );
        let r = c
            .plain("PUT", &format!("/d/{token}/..%2fsecret.txt"), &[], "x")
            .await;
        assert!(matches!(r.status(), 400 | 404), "{}", r.status());
    }
    assert_eq!(
        std::fs::read_to_string(store.path().join("alice/secret.txt")).unwrap(),
        "not for senders"
    );
    assert!(!server.home("alice").join("drop").exists());
    server.stop().await;
}
