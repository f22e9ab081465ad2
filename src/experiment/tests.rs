use super::*;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

const EXAMPLE: &str = r#"
name = "fp8-calibration"

[server]
launcher = "process"
command = ["vllm", "serve", "/models/m"]
args = ["--kv-cache-dtype", "fp8", "--max-model-len", "4096", "--port", "{port}"]
env = { VLLM_USE_FLASHINFER_SAMPLER = "0" }
port = "auto"

[workload]
num_requests = 50
concurrency = 8
ignore_eos = true

[[arms]]
name = "baseline"

[[arms]]
name = "calibrated"
args = ["--calculate-kv-scales"]
env = { EXTRA = "1" }

[[arms]]
name = "auto"
set = { "--kv-cache-dtype" = "auto" }
[arms.workload]
concurrency = 4
"#;

#[test]
fn arms_apply_their_changes() {
    let e = parse(EXAMPLE, Path::new("exp.toml")).unwrap();
    assert_eq!(e.arms.len(), 3);
    let base = match &e.arms[0].launch {
        LaunchSpec::Process {
            program, args, env, ..
        } => {
            assert_eq!(program, "vllm");
            assert_eq!(
                env.get("VLLM_USE_FLASHINFER_SAMPLER").map(String::as_str),
                Some("0")
            );
            args.clone()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(apply_changes(&base, &e.arms[0].changes), base);
    let cal = apply_changes(&base, &e.arms[1].changes);
    assert_eq!(
        cal.last().map(String::as_str),
        Some("--calculate-kv-scales")
    );
    match &e.arms[1].launch {
        LaunchSpec::Process { env, .. } => assert_eq!(env.len(), 2),
        other => panic!("{other:?}"),
    }
    let auto = apply_changes(&base, &e.arms[2].changes);
    assert_eq!(
        flag_value(&auto, "--kv-cache-dtype").as_deref(),
        Some("auto")
    );
    assert_eq!(auto.len(), base.len());
    assert!(e.arms[2]
        .workload_args
        .windows(2)
        .any(|w| w == ["--concurrency", "4"]));
    assert!(e.arms[0]
        .workload_args
        .windows(2)
        .any(|w| w == ["--concurrency", "8"]));
    assert!(e.arms[0].workload_args.contains(&"--ignore-eos".to_owned()));
}

#[test]
fn changes_handle_equals_form_bare_flags_and_removal() {
    let base = s(&[
        "serve",
        "m",
        "--kv-cache-dtype=fp8",
        "--calculate-kv-scales",
        "--tp",
        "2",
    ]);
    let ch = ArgChanges {
        append: s(&["--x"]),
        set: vec![
            ("--kv-cache-dtype".into(), Some("auto".into())),
            ("--enforce-eager".into(), None),
        ],
        remove: s(&["--calculate-kv-scales", "--tp"]),
    };
    assert_eq!(
        apply_changes(&base, &ch),
        s(&[
            "serve",
            "m",
            "--kv-cache-dtype",
            "auto",
            "--enforce-eager",
            "--x"
        ])
    );
    assert_eq!(
        flag_value(&base, "--kv-cache-dtype").as_deref(),
        Some("fp8")
    );
    assert_eq!(
        flag_value(&base, "--calculate-kv-scales").as_deref(),
        Some("")
    );
    assert_eq!(flag_value(&base, "--nope"), None);
}

fn err(text: &str) -> String {
    parse(text, Path::new("bad.toml")).unwrap_err().to_string()
}

#[test]
fn errors_point_at_file_line_and_key() {
    let e = err("name = \"x\"\n[server]\ncommand = [\"a\"]\n[[arms]]\nname = \"a\"\nargz = []\n");
    assert!(
        e.starts_with("bad.toml:6:1:") && e.contains("unknown field `argz`"),
        "{e}"
    );
    let e = err("name = \"x\"\n[[arms]]\nname = \"a\"\n");
    assert!(
        e.starts_with("bad.toml:3:") && e.contains("`server.command`"),
        "{e}"
    );
    let e = err("name = \"x\"\n[server]\ncommand = [\"a\"]\n[[arms]]\nname = \"a\"\n[[arms]]\nname = \"a\"\n");
    assert!(
        e.starts_with("bad.toml:7:") && e.contains("used twice"),
        "{e}"
    );
    let e = err("name = \"x\"\n[server]\ncommand = [\"a\"]\n[workload]\nconcurrency = 0\n[[arms]]\nname = \"a\"\n");
    assert!(
        e.starts_with("bad.toml:5:") && e.contains("`concurrency`"),
        "{e}"
    );
    let e = err("name = \"x\"\n[server]\ncommand = [\"a\"]\n[workload]\nurl = \"http://x\"\n[[arms]]\nname = \"a\"\n");
    assert!(e.contains("key `url` is set by kvbench"), "{e}");
    let e = err("name = \"x\"\n[server]\nlauncher = \"compose\"\n[[arms]]\nname = \"a\"\n");
    assert!(e.contains("`server.compose_file`"), "{e}");
    let e = err("name = \"x\"\n[server]\nlauncher = \"attach\"\nurl = \"http://h\"\n[[arms]]\nname = \"a\"\nargs = [\"--x\"]\n");
    assert!(e.contains("cannot change its arguments"), "{e}");
    let e = err("name = \"x\"\n[server]\ncommand = [\"a\"]\n[[arms]]\nname = \"a\"\nset = { \"kv\" = \"x\" }\n");
    assert!(e.contains("not a flag"), "{e}");
    let e = err("name = \"x\"\n");
    assert!(e.contains("arms"), "{e}");
}

#[test]
fn environment_variables_are_expanded_and_missing_ones_rejected() {
    std::env::set_var("KVBENCH_TEST_SERVER_BIN", "/opt/llama-server");
    let e = parse(
        "name = \"x\"\n[server]\ncommand = [\"${KVBENCH_TEST_SERVER_BIN}\", \"-m\", \"a\"]\n[[arms]]\nname = \"a\"\nargs = [\"--x\", \"${KVBENCH_TEST_SERVER_BIN}\"]\n",
        Path::new("exp.toml"),
    )
    .unwrap();
    match &e.arms[0].launch {
        LaunchSpec::Process { program, .. } => assert_eq!(program, "/opt/llama-server"),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.arms[0].changes.append[1], "/opt/llama-server");
    let msg = err("name = \"x\"\n[server]\ncommand = [\"${KVBENCH_SURELY_UNSET_42}\"]\n[[arms]]\nname = \"a\"\n");
    assert!(
        msg.starts_with("bad.toml:5:") && msg.contains("KVBENCH_SURELY_UNSET_42 is not set"),
        "{msg}"
    );
}
