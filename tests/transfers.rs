//! Verified round trips through the library client against a real server.

use crate::util::{TestServer, no_progress, random_file, sha256_hex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_sizes_around_the_chunk_boundary() {
    let server = TestServer::start().await;
    let mut conn = server.alice().await;
    let local = tempfile::tempdir().unwrap();
    let chunk = ferry::protocol::DATA_CHUNK_LEN;
    for (i, len) in [0, 1, chunk - 1, chunk, chunk + 1, 10 * 1024 * 1024].into_iter().enumerate() {
        let src = local.path().join(format!("src{i}"));
        let data = random_file(&src, len, i as u64);
        let up = conn
            .put(&src, &format!("/f{i}"), false, &mut no_progress())
            .await
            .unwrap();
        assert_eq!(up.size, len as u64);
        assert_eq!(up.sha256, sha256_hex(&data));
        assert_eq!(std::fs::read(server.home("alice").join(format!("f{i}"))).unwrap(), data);
        let dst = local.path().join(format!("dst{i}"));
        let down = conn
            .get(&format!("/f{i}"), &dst, false, &mut no_progress())
            .await
            .unwrap();
        assert_eq!(down.sha256, up.sha256);
        assert_eq!(std::fs::read(&dst).unwrap(), data);
    }
    conn.close().await.unwrap();
    server.stop().await;
}
