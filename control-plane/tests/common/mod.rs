//! Shared by the control-plane integration tests.

/// The zip of a minimal valid app: one HTTP function `f` at `route`.
pub fn app_zip(route: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("host.json"),
        r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"sh"}}}"#,
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("f")).unwrap();
    std::fs::write(
        dir.path().join("f/function.json"),
        format!(
            r#"{{"bindings":[{{"type":"httpTrigger","direction":"in","name":"req","route":"{route}"}},{{"type":"http","direction":"out","name":"res"}}]}}"#
        ),
    )
    .unwrap();
    strom_proto::manifest::pack_dir(dir.path()).unwrap()
}
