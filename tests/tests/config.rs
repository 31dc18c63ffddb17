//! The configuration file and its precedence, through the real binary: `sonde config check`, and
//! `sonde run --config` exporting to a real receiver (privileged).

use std::{path::Path, process::Command, time::Duration};

use sonde_tests::{
    harness::{self, Sonde, TempDir, curl},
    receiver::Receiver,
};

/// `sonde ARGS` with `env` added: (exit success, stdout, stderr).
fn sonde(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(harness::sonde_bin())
        .args(args)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .envs(env.iter().copied())
        .output()
        .expect("running sonde");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn write(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.path.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// The line of `key` in `sonde config check`'s output.
fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines().find(|l| l.starts_with(&format!("{key}:"))).unwrap_or_else(|| panic!("no {key} in {out}"))
}

#[test]
fn config_check_shows_each_value_and_its_source_in_precedence_order() {
    let dir = TempDir::new("config");
    let file =
        write(&dir, "sonde.yaml", "log: debug\nport: [80, 8080]\ncapture-bytes: 4096\notlp-protocol: grpc\n");
    let (ok, out, err) = sonde(
        &["config", "check", &file],
        &[("SONDE_CAPTURE_BYTES", "2048"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
    );
    assert!(ok, "{err}");
    assert_eq!(line(&out, "log"), "log: debug  # file");
    assert_eq!(line(&out, "port"), "port: [80, 8080]  # file");
    assert_eq!(line(&out, "capture-bytes"), "capture-bytes: 2048  # environment SONDE_CAPTURE_BYTES");
    assert_eq!(
        line(&out, "otlp-protocol"),
        "otlp-protocol:   # unset",
        "the OTEL variable wins over the file"
    );
    assert!(out.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"), "{out}");
    assert_eq!(line(&out, "hooks"), "hooks: auto  # default");

    // The reference file checks as it is (all commented out: defaults).
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sonde.yaml");
    let (ok, out, err) = sonde(&["config", "check", &reference.to_string_lossy()], &[]);
    assert!(ok, "{err}");
    assert_eq!(line(&out, "ring-buffer-bytes"), "ring-buffer-bytes: 4194304  # default");
}

#[test]
fn bad_files_are_errors_that_name_the_key() {
    let dir = TempDir::new("config-bad");
    for (text, expected) in [
        ("portz: 80\n", "key portz: unknown key"),
        ("capture-bytes: lots\n", "key capture-bytes: invalid value 'lots'"),
        ("otlp-protocol: [a, b]\n", "key otlp-protocol: takes one value"),
        ("hooks: [auto\n", "not valid YAML"),
    ] {
        let file = write(&dir, "bad.yaml", text);
        for args in [vec!["config", "check", &file], vec!["run", "--config", &file]] {
            let (ok, _, err) = sonde(&args, &[]);
            assert!(!ok, "{args:?} accepted {text:?}");
            assert!(err.contains(expected) && err.contains(&file), "{args:?} {text:?}: {err}");
        }
    }
    let (ok, _, err) = sonde(&["run", "--config", "/nonexistent/sonde.yaml"], &[]);
    assert!(!ok && err.contains("cannot read"), "{err}");
}

/// `config check` refuses every value `run` would refuse, and both say where it came from: the
/// file and key, or the variable. (No root needed: both stop before loading anything.)
#[test]
fn values_run_would_refuse_fail_the_check_too_naming_their_source() {
    let dir = TempDir::new("config-values");
    for (text, expected) in [
        ("print: fancy\n", "key print: invalid value 'fancy'"),
        ("otlp-protocol: grpcc\n", "key otlp-protocol: invalid value 'grpcc'"),
        ("otlp-endpoint: \"not a url\"\n", "key otlp-endpoint: invalid value 'not a url'"),
        ("exe: \"[\"\n", "key exe: invalid value '['"),
        ("tls-exclude: [\"/opt/[vendor\"]\n", "key tls-exclude: invalid value '/opt/[vendor'"),
        ("k8s-pod-label: novalue\n", "key k8s-pod-label: invalid value 'novalue'"),
        ("exclude-pid: 0\n", "key exclude-pid: invalid value '0'"),
        ("kube-api: \"not a url\"\n", "key kube-api: invalid value 'not a url'"),
        ("log: \"sonde=[\"\n", "key log: invalid value 'sonde=['"),
        ("capture-bytes: 100000\n", "key capture-bytes: invalid value '100000'"),
    ] {
        let file = write(&dir, "bad.yaml", text);
        for args in [vec!["config", "check", &file], vec!["run", "--config", &file]] {
            let (ok, _, err) = sonde(&args, &[]);
            assert!(!ok, "{args:?} accepted {text:?}");
            assert!(err.contains(&format!("config file {file}: {expected}")), "{args:?} {text:?}: {err}");
        }
    }

    // The file is good; the environment is not.
    let file = write(&dir, "good.yaml", "otlp-endpoint: http://127.0.0.1:4318\n");
    for (var, value, expected) in [
        ("SONDE_PRINT", "fancy", "environment variable SONDE_PRINT: invalid value 'fancy'"),
        ("SONDE_EXCLUDE_EXE", "[", "environment variable SONDE_EXCLUDE_EXE: invalid value '['"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpcc", "OTEL_EXPORTER_OTLP_PROTOCOL: unknown OTLP protocol"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "novalue", "OTEL_EXPORTER_OTLP_HEADERS: header entry"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "soon", "OTEL_METRIC_EXPORT_INTERVAL: \"soon\""),
    ] {
        for args in [vec!["config", "check", &file], vec!["run", "--config", &file]] {
            let (ok, _, err) = sonde(&args, &[(var, value)]);
            assert!(!ok, "{args:?} accepted {var}={value}");
            assert!(err.contains(expected), "{args:?} {var}={value}: {err}");
        }
    }

    // On the command line, the flag is named.
    let (ok, _, err) = sonde(&["run", "--print", "fancy"], &[]);
    assert!(!ok && err.contains("'--print <MODE>'"), "{err}");

    // What is resolved is shown.
    let (ok, out, err) = sonde(&["config", "check", &file], &[("OTEL_METRICS_EXPORTER", "none")]);
    assert!(ok, "{err}");
    assert!(
        out.contains("# resolved: spans to http/protobuf http://127.0.0.1:4318/v1/traces; metrics to none"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_takes_its_settings_from_the_file_under_flags_and_environment() {
    let receiver = Receiver::start().await.unwrap();
    let server = harness::python_http_server(&[("OTEL_SERVICE_NAME", "from-config")]);
    let dir = TempDir::new("config-run");
    // The file names the endpoint, the protocol and the server's pid; the environment overrides
    // the print mode the file sets.
    let file = write(
        &dir,
        "sonde.yaml",
        &format!(
            "otlp-endpoint: {}\notlp-protocol: grpc\npid: [{}]\nprint: json\n",
            receiver.grpc_endpoint(),
            server.pid()
        ),
    );
    // Named through SONDE_CONFIG rather than --config, to show that way too.
    let mut sonde = Sonde::start_with_env(&["--print", "none"], &[("SONDE_CONFIG", &file)]);
    curl(&["-o", "/dev/null", &server.url("/index.html")]);
    let spans = receiver
        .wait_for(
            |s| s.iter().any(|s| s.resource.get("service.name").map(String::as_str) == Some("from-config")),
            Duration::from_secs(20),
        )
        .await;
    assert!(
        spans.iter().any(|s| s.attr("url.path").as_deref() == Some("/index.html")),
        "{spans:#?}\n{}",
        sonde.stderr()
    );
    sonde.stop_cleanly();
    assert!(sonde.stdout().is_empty(), "--print none on the command line wins over the file's json");
}
