//! Hostile values in every field of the snapshots API (huge keys, NUL
//! bytes, any UTF-8, thousands of labels, oversized messages, garbage
//! filters and field paths): each request gets a status code, nothing is
//! half made, and the daemon goes on answering.

use std::collections::HashMap;

use containerd_snapshots::api::snapshots::v1::*;
use containerd_snapshots::tonic::Code;
use slayerfs_integration::snapshots_api::{commit, prepare, remove, state, Daemon, NAME};

/// The code of an answer, `Ok` included.
fn status_of<T>(r: Result<T, containerd_snapshots::tonic::Status>) -> Code {
    r.map_or_else(|s| s.code(), |_| Code::Ok)
}

fn labels(n: usize, len: usize) -> HashMap<String, String> {
    (0..n).map(|i| (format!("l{i}"), "v".repeat(len))).collect()
}

async fn prepare_with(
    c: &mut slayerfs_integration::snapshots_api::Client,
    key: &str,
    parent: &str,
    labels: HashMap<String, String>,
) -> Code {
    status_of(
        c.prepare(PrepareSnapshotRequest {
            snapshotter: NAME.into(),
            key: key.into(),
            parent: parent.into(),
            labels,
        })
        .await,
    )
}

async fn list_code(
    c: &mut slayerfs_integration::snapshots_api::Client,
    filters: Vec<String>,
) -> Code {
    match c
        .list(ListSnapshotsRequest {
            snapshotter: NAME.into(),
            filters,
        })
        .await
    {
        Err(s) => s.code(),
        Ok(stream) => {
            let mut stream = stream.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Code::Ok,
                    Err(s) => return s.code(),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_fields_get_a_status_and_the_daemon_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(tmp.path());
    let mut c = daemon.client().await;
    prepare(&mut c, "base", "").await.unwrap();
    commit(&mut c, "c1", "base").await.unwrap();
    let before = state(&mut c).await;

    let huge_key = "k".repeat(1 << 20);
    let refused: Vec<(&str, Code, Code)> = vec![
        (
            "a 1 MiB key",
            prepare_with(&mut c, &huge_key, "", HashMap::new()).await,
            Code::InvalidArgument,
        ),
        (
            "a key with NUL",
            prepare_with(&mut c, "a\0b", "", HashMap::new()).await,
            Code::InvalidArgument,
        ),
        (
            "a parent with NUL",
            prepare_with(&mut c, "p", "c1\0", HashMap::new()).await,
            Code::NotFound,
        ),
        (
            "a 1 MiB parent",
            prepare_with(&mut c, "p", &huge_key, HashMap::new()).await,
            Code::NotFound,
        ),
        (
            "an empty label key",
            prepare_with(&mut c, "p", "", [(String::new(), "v".into())].into()).await,
            Code::InvalidArgument,
        ),
        (
            "a label of 5000 bytes",
            prepare_with(&mut c, "p", "", labels(1, 5000)).await,
            Code::InvalidArgument,
        ),
        (
            "a message over the 4 MiB limit",
            prepare_with(&mut c, "p", "", labels(1100, 4000)).await,
            Code::OutOfRange,
        ),
        (
            "a commit name with NUL",
            status_of(commit(&mut c, "n\0", "base").await),
            Code::NotFound,
        ),
        (
            "a filter with NUL and odd UTF-8",
            list_code(&mut c, vec!["name==\u{0}\u{202e}é\u{1F600}".into()]).await,
            Code::Ok,
        ),
        (
            "a filter of operators only",
            list_code(&mut c, vec!["~=!=,==\"\\".into()]).await,
            Code::InvalidArgument,
        ),
        (
            "a 1 MiB filter",
            list_code(&mut c, vec![format!("labels.{huge_key}==x")]).await,
            Code::Ok,
        ),
        (
            "ten thousand filters",
            list_code(&mut c, (0..10_000).map(|i| format!("name=={i}")).collect()).await,
            Code::Ok,
        ),
        (
            "an update of a field path with NUL",
            status_of(
                c.update(UpdateSnapshotRequest {
                    snapshotter: NAME.into(),
                    info: Some(Info {
                        name: "c1".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["labels.\0".into(), "\u{1F600}".into()],
                    }),
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "an update with no info",
            status_of(
                c.update(UpdateSnapshotRequest {
                    snapshotter: NAME.into(),
                    info: None,
                    update_mask: None,
                })
                .await,
            ),
            // What the containerd-snapshots server answers itself.
            Code::FailedPrecondition,
        ),
        (
            "a stat of a 1 MiB key",
            status_of(
                c.stat(StatSnapshotRequest {
                    snapshotter: NAME.into(),
                    key: huge_key.clone(),
                })
                .await,
            ),
            Code::NotFound,
        ),
        (
            "a remove of a key with NUL",
            status_of(remove(&mut c, "c1\0").await),
            Code::NotFound,
        ),
    ];
    let wrong: Vec<String> = refused
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what}: {got:?}, not {want:?}"))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}\n{}", daemon.paths.log_text());
    assert_eq!(
        state(&mut c).await,
        before,
        "a refused request changed the records"
    );

    // What containerd allows is accepted: any UTF-8 in a key, thousands of
    // labels, a key at the limit.
    let odd = "ключ/\u{202e}é\u{1F600}/\u{7f} a\tb\nc,d\\040";
    assert_eq!(
        prepare_with(&mut c, odd, "c1", HashMap::new()).await,
        Code::Ok
    );
    let many = labels(5000, 10);
    assert_eq!(
        prepare_with(&mut c, "many-labels", "", many.clone()).await,
        Code::Ok
    );
    let got = c
        .stat(StatSnapshotRequest {
            snapshotter: NAME.into(),
            key: "many-labels".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(got.labels, many);
    let at_limit = "k".repeat(4096);
    assert_eq!(
        prepare_with(&mut c, &at_limit, "", HashMap::new()).await,
        Code::Ok
    );
    for key in [odd, "many-labels", at_limit.as_str()] {
        remove(&mut c, key).await.unwrap();
    }
    assert_eq!(state(&mut c).await, before);

    let log = daemon.paths.log_text();
    assert!(!log.contains("panicked"), "{log}");
}
