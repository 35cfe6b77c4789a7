//! Snapshot records: their life, containerd's rules, concurrent changes.
use super::*;

fn records() -> (tempfile::TempDir, Records) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path().join("db")).unwrap();
    (dir, Records::open(&db).unwrap())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_life_of_a_snapshot_chain() {
    let (_d, r) = records();
    let a = r
        .create("a", "", SnapshotKind::Active, labels(&[("x", "1")]))
        .unwrap();
    assert_eq!(r.get("a").unwrap(), a);
    let base = r
        .commit("base", "a", "sha256:layer", labels(&[("y", "2")]))
        .unwrap();
    assert_eq!(base.kind, SnapshotKind::Committed);
    assert_eq!(base.id, a.id, "the committed snapshot keeps the state's id");
    assert_eq!(base.labels, labels(&[("y", "2")]));
    assert_eq!(base.layer, "sha256:layer");
    assert!(matches!(r.get("a"), Err(RecordError::NotFound(_))));

    let child = r
        .create("c", "base", SnapshotKind::Active, BTreeMap::new())
        .unwrap();
    let view = r
        .create("v", "base", SnapshotKind::View, BTreeMap::new())
        .unwrap();
    assert_ne!(child.id, view.id);
    assert_eq!(
        r.children("base").unwrap(),
        vec!["c".to_string(), "v".to_string()]
    );
    assert!(matches!(
        r.remove("base"),
        Err(RecordError::FailedPrecondition(_))
    ));
    r.remove("c").unwrap();
    r.remove("v").unwrap();
    assert!(r.children("base").unwrap().is_empty());
    r.remove("base").unwrap();
    assert!(r.all().unwrap().is_empty());
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let (_d, r) = records();
    r.create("a", "", SnapshotKind::Active, BTreeMap::new())
        .unwrap();
    let before = r.all().unwrap();
    let cases: Vec<(RecordError, &str)> = vec![
        (
            r.create("a", "", SnapshotKind::Active, BTreeMap::new())
                .unwrap_err(),
            "AlreadyExists",
        ),
        (
            r.create("b", "missing", SnapshotKind::Active, BTreeMap::new())
                .unwrap_err(),
            "NotFound",
        ),
        (
            r.create("b", "a", SnapshotKind::View, BTreeMap::new())
                .unwrap_err(),
            "InvalidArgument",
        ),
        (
            r.create("", "", SnapshotKind::Active, BTreeMap::new())
                .unwrap_err(),
            "InvalidArgument",
        ),
        (
            r.create(
                "b",
                "",
                SnapshotKind::Active,
                labels(&[("big", &"x".repeat(MAX_LABEL_BYTES))]),
            )
            .unwrap_err(),
            "InvalidArgument",
        ),
        (
            r.commit("x", "missing", "sha256:layer", BTreeMap::new())
                .unwrap_err(),
            "NotFound",
        ),
        (r.remove("missing").unwrap_err(), "NotFound"),
        (
            r.update("a", &BTreeMap::new(), &["parent".to_string()])
                .unwrap_err(),
            "InvalidArgument",
        ),
    ];
    for (err, want) in cases {
        assert!(
            format!("{err:?}").starts_with(want),
            "{err:?}, wanted {want}"
        );
    }
    assert_eq!(r.all().unwrap(), before, "refused requests change nothing");
    // A view cannot be committed; a name cannot be taken twice.
    r.commit("base", "a", "sha256:layer", BTreeMap::new())
        .unwrap();
    r.create("v", "base", SnapshotKind::View, BTreeMap::new())
        .unwrap();
    assert!(matches!(
        r.commit("other", "v", "sha256:layer", BTreeMap::new()),
        Err(RecordError::FailedPrecondition(_))
    ));
    r.create("a2", "base", SnapshotKind::Active, BTreeMap::new())
        .unwrap();
    assert!(matches!(
        r.commit("base", "a2", "sha256:layer", BTreeMap::new()),
        Err(RecordError::AlreadyExists(_))
    ));
    assert_eq!(r.get("a2").unwrap().kind, SnapshotKind::Active);
}

#[test]
fn update_follows_field_paths() {
    let (_d, r) = records();
    r.create(
        "a",
        "",
        SnapshotKind::Active,
        labels(&[("k1", "v1"), ("k2", "v2")]),
    )
    .unwrap();
    let u = r
        .update(
            "a",
            &labels(&[("k1", "new"), ("k3", "v3")]),
            &["labels.k1".into()],
        )
        .unwrap();
    assert_eq!(u.labels, labels(&[("k1", "new"), ("k2", "v2")]));
    let u = r
        .update("a", &BTreeMap::new(), &["labels.k2".into()])
        .unwrap();
    assert_eq!(u.labels, labels(&[("k1", "new")]));
    let u = r.update("a", &labels(&[("only", "this")]), &[]).unwrap();
    assert_eq!(u.labels, labels(&[("only", "this")]));
    assert!(u.updated >= u.created);
    assert_eq!(r.get("a").unwrap().labels, labels(&[("only", "this")]));
}

#[test]
fn records_survive_reopening_and_concurrent_clients_keep_them_consistent() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        let r = Records::open(&db).unwrap();
        r.create("a", "", SnapshotKind::Active, BTreeMap::new())
            .unwrap();
        r.commit("base", "a", "sha256:layer", BTreeMap::new())
            .unwrap();
        // A child that stays: `base` can never be removed below.
        r.create("keep", "base", SnapshotKind::View, BTreeMap::new())
            .unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let key = format!("t{t}-{i}");
                        r.create(&key, "base", SnapshotKind::Active, BTreeMap::new())
                            .unwrap();
                        if i % 2 == 0 {
                            r.remove(&key).unwrap();
                        }
                        // Everyone races to remove the parent: always refused.
                        assert!(r.remove("base").is_err());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
    let db = sled::open(dir.path().join("db")).unwrap();
    let r = Records::open(&db).unwrap();
    assert_eq!(r.children("base").unwrap().len(), 8 * 25 + 1);
    assert_eq!(r.all().unwrap().len(), 8 * 25 + 2);
    for key in r.children("base").unwrap() {
        r.remove(&key).unwrap();
    }
    r.remove("base").unwrap();
    assert!(r.all().unwrap().is_empty());
}
