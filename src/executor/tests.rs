use super::*;

fn exp(text: &str) -> Experiment {
    crate::experiment::parse(text, Path::new("/tmp/x/e.toml")).unwrap()
}

const TWO_ARMS: &str = r#"
name = "e"
[server]
command = ["srv", "--port", "{port}"]
port = "auto"
gpus = 2
[[arms]]
name = "a"
[[arms]]
name = "b"
"#;

#[test]
fn on_accepts_local_local_gpus_and_ray_addresses() {
    assert_eq!(parse_on("local").unwrap(), (ExecutorKind::Local, None));
    assert_eq!(
        parse_on("local-gpus").unwrap(),
        (ExecutorKind::LocalGpus, None)
    );
    assert_eq!(
        parse_on("ray://10.0.0.5:8265").unwrap(),
        (ExecutorKind::Ray, Some("http://10.0.0.5:8265".into()))
    );
    assert_eq!(
        parse_on("https://ray.example/").unwrap(),
        (ExecutorKind::Ray, Some("https://ray.example".into()))
    );
    for bad in ["gpus", "ray://", "tcp://h:1", ""] {
        assert!(parse_on(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn gpus_alone_means_local_gpus_and_sets_are_whole() {
    let e = exp(TWO_ARMS);
    let x = Executor::resolve(&e, None, Some("0,1,2,3,4")).unwrap();
    assert_eq!(x.kind, ExecutorKind::LocalGpus);
    // Five devices in sets of two: the fifth is idle.
    assert_eq!(
        x.slots(2),
        vec![
            vec!["0".to_string(), "1".into()],
            vec!["2".into(), "3".into()]
        ]
    );
}

#[test]
fn parallel_executors_refuse_what_cannot_run_at_once() {
    let e = exp(TWO_ARMS);
    let err = |on: Option<&str>, gpus: Option<&str>| {
        Executor::resolve(&e, on, gpus).unwrap_err().to_string()
    };
    assert!(err(Some("local-gpus"), None).contains("--gpus 0,1,2,3"));
    assert!(err(None, Some("0")).contains("needs 2 GPUs"));
    assert!(err(None, Some("0,0")).contains("listed twice"));
    let fixed = exp(&TWO_ARMS.replace("port = \"auto\"", "port = 8000"));
    let m = Executor::resolve(&fixed, Some("ray://h:8265"), None)
        .unwrap_err()
        .to_string();
    assert!(m.contains("port = \"auto\""), "{m}");
    let mixed = exp(&format!("{TWO_ARMS}server = {{ gpus = 1 }}\n"));
    let m = Executor::resolve(&mixed, None, Some("0,1,2,3"))
        .unwrap_err()
        .to_string();
    assert!(m.contains("same [server] gpus"), "{m}");
    // The local executor takes any experiment.
    assert!(Executor::resolve(&fixed, None, None).unwrap().is_local());
}

#[test]
fn the_executor_table_is_read_and_the_command_line_wins() {
    let text = format!(
        "{TWO_ARMS}\n[executor]\nkind = \"ray\"\naddress = \"ray://head:8265\"\ngpu_resource = \"kvgpu\"\nnum_cpus = 0.5\n"
    );
    // The table comes before [[arms]] in a real file; TOML allows it after too.
    let e = exp(&text);
    let x = Executor::resolve(&e, None, None).unwrap();
    assert_eq!(x.kind, ExecutorKind::Ray);
    assert_eq!(x.address.as_deref(), Some("http://head:8265"));
    assert_eq!(x.gpu_resource.as_deref(), Some("kvgpu"));
    assert_eq!(x.num_cpus, 0.5);
    assert!(Executor::resolve(&e, Some("local"), None)
        .unwrap()
        .is_local());
}

#[test]
fn a_ray_submission_asks_for_the_arms_gpus_or_the_stand_in_resource() {
    let e = exp(TWO_ARMS);
    let mut x = Executor::resolve(&e, Some("ray://h:8265"), None).unwrap();
    x.kvbench = "/opt/kv bench/kvbench".into();
    let job = Job::new(
        &e.arms[0],
        PathBuf::from("/r/benchmark_e_a_20261202_010101.json"),
        true,
    );
    assert!(
        job.id.starts_with("kvbench-e_a_20261202_010101-"),
        "{}",
        job.id
    );
    let env = BTreeMap::new();
    let body = ray::submission_for_test(&x, &e, &job, &env);
    assert_eq!(body["entrypoint_num_gpus"], 2);
    assert!(body.get("entrypoint_resources").is_none());
    let ep = body["entrypoint"].as_str().unwrap();
    assert!(ep.starts_with("'/opt/kv bench/kvbench' run --config /tmp/x/e.toml --arm a --output /r/benchmark_e_a_20261202_010101.json --executor ray --job-id kvbench-"), "{ep}");
    assert!(ep.ends_with("--speed-only --print-result"), "{ep}");
    x.gpu_resource = Some("kvgpu".into());
    let body = ray::submission_for_test(&x, &e, &job, &env);
    assert_eq!(body["entrypoint_resources"]["kvgpu"], 2);
    assert!(body.get("entrypoint_num_gpus").is_none());
}

#[test]
fn shell_quoting_round_trips_through_sh() {
    for s in ["plain", "with space", "it's", "$HOME", "a\"b", "", "-x=1,2"] {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(s)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), s);
    }
}

#[test]
fn an_unknown_executor_kind_is_a_one_line_error_with_its_line() {
    let text = format!("{TWO_ARMS}\n[executor]\nkind = \"slurm\"\n");
    let err = crate::experiment::parse(&text, Path::new("e.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("e.toml:"), "{err}");
    assert!(err.contains("slurm"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}
