//! Defaults, validation and the one-line errors of the configuration.
use super::*;

#[test]
fn no_file_gives_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    // An explicit path must exist...
    let err = Config::load(Some(&dir.path().join("missing.toml"))).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    // ...and the defaults describe a local store under the state dir.
    let c = Config::default();
    c.validate().unwrap();
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/slayerfs"));
    assert_eq!(
        c.store_location(),
        StoreLocation::Local("/var/lib/slayerfs/store".into())
    );
    assert_eq!(c.db_dir(), PathBuf::from("/var/lib/slayerfs/db"));
    assert_eq!(c.cache_dir(), PathBuf::from("/var/lib/slayerfs/cache"));
}

#[test]
fn full_file_parses() {
    let c = Config::from_toml(
        r#"
        state_dir = "/srv/slayer"
        [store]
        url = "s3://images/a/b/"
        [store.s3]
        endpoint = "http://127.0.0.1:9000"
        access_key_id = "k"
        secret_access_key = "s"
        max_attempts = 2
        [convert]
        zstd_level = 5
        workers = 3
        [cache]
        read_ahead_blocks = 0
        [snapshotter]
        unmount_on_exit = true
        fd_holder = "/opt/slayerfs/slayerfs-fdholder"
        "#,
    )
    .unwrap();
    assert!(c.snapshotter.unmount_on_exit);
    assert_eq!(
        c.snapshotter.fd_holder.as_deref(),
        Some(Path::new("/opt/slayerfs/slayerfs-fdholder"))
    );
    assert_eq!(
        c.store_location(),
        StoreLocation::S3 {
            bucket: "images".into(),
            prefix: "a/b".into()
        }
    );
    assert_eq!(c.store.s3.max_attempts, 2);
    assert_eq!(c.convert_workers(), 3);
    assert_eq!(c.cache.read_ahead_blocks, 0);
    assert!(
        !format!("{:?}", c.store.s3).contains("\"s\""),
        "secret leaked into Debug"
    );
}

#[test]
fn errors_name_the_key() {
    let cases = [
        ("[convert]\nzstd_level = 40", "convert.zstd_level"),
        ("[store.s3]\nmax_attempts = 0", "store.s3.max_attempts"),
        ("[store]\nurl = \"s3://A_B\"", "store.url"),
        ("[store]\nurl = \"ftp://x\"", "store.url"),
        ("state_dir = \"relative\"", "state_dir"),
        (
            "[store.s3]\nendpoint = \"127.0.0.1:9000\"",
            "store.s3.endpoint",
        ),
        (
            "[store.s3]\naccess_key_id = \"k\"",
            "store.s3.secret_access_key",
        ),
        ("[cache]\nread_ahead_blocks = 65", "cache.read_ahead_blocks"),
        ("[cache]\nmemory_bytes = 1", "cache.memory_bytes"),
        ("[trace]\nwindow_ms = 0", "trace.window_ms"),
        ("[trace]\nparallel = 0", "trace.parallel"),
        ("[trace]\nmax_files = 0", "trace.max_files"),
        (
            "[trace]\nmax_ranges_per_file = 5000",
            "trace.max_ranges_per_file",
        ),
        ("[registry]\ninsecure = [\"http://x:5000\"]", "registry"),
        (
            "[registry]\nmirrors = { \"docker.io\" = [\"m/x\"] }",
            "registry",
        ),
    ];
    for (text, key) in cases {
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains(key), "{text:?}: {err}");
    }
    let err = Config::from_toml("[convert]\nzstd_levle = 3")
        .unwrap_err()
        .to_string();
    assert!(err.contains("zstd_levle"), "{err}");
    let err = Config::from_toml("[convert]\nworkers = \"many\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("workers"), "{err}");
}

#[test]
fn store_locations() {
    assert_eq!(
        StoreLocation::parse("/d").unwrap(),
        StoreLocation::Local("/d".into())
    );
    assert_eq!(
        StoreLocation::parse("s3://bkt").unwrap(),
        StoreLocation::S3 {
            bucket: "bkt".into(),
            prefix: String::new()
        }
    );
    assert!(StoreLocation::parse("s3://bkt/a/../b").is_err());
    assert!(StoreLocation::parse("").is_err());
    assert_eq!(
        StoreLocation::parse("s3://bkt/p").unwrap().to_string(),
        "s3://bkt/p"
    );
}

#[test]
fn registry_settings_parse_and_hide_passwords() {
    let c = Config::from_toml(
        "[registry]\ninsecure = [\"reg.lan:5000\"]\nmirrors = { \"docker.io\" = [\"m.lan:5000\"] }\n[registry.auths.\"reg.example\"]\nusername = \"u\"\npassword = \"hunter2\"\n",
    )
    .unwrap();
    assert_eq!(c.registry.insecure, vec!["reg.lan:5000".to_string()]);
    assert_eq!(
        c.registry.mirrors["docker.io"],
        vec!["m.lan:5000".to_string()]
    );
    assert_eq!(c.registry.auths["reg.example"].username, "u");
    assert!(!format!("{c:?}").contains("hunter2"));
}
