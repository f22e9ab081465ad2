use clap::{Arg, Command, FromArgMatches};

use super::*;

/// `run` as the CLI defines it, for the settings' flags alone (`--config` is named by them).
fn command() -> Command {
    RunSettings::augment_args(Command::new("run").arg(Arg::new("config").long("config")))
}

fn run_settings(args: &[&str]) -> RunSettings {
    let mut argv = vec!["run", "--config", "exp.toml"];
    argv.extend(args);
    let m = command().try_get_matches_from(argv).unwrap();
    RunSettings::from_arg_matches(&m).unwrap()
}

fn table(text: &str) -> Result<RunSettings, SettingsError> {
    RunSettings::from_table(&toml::from_str(text).unwrap())
}

#[test]
fn defaults_are_the_flags_defaults() {
    let d = format!("{:?}", RunSettings::default());
    assert_eq!(format!("{:?}", run_settings(&[])), d);
    assert_eq!(format!("{:?}", table("").unwrap()), d);
}

/// Every settings flag but those kvbench sets for an arm is a key, named as the flag with `_`.
#[test]
fn keys_are_the_flag_names() {
    let mut flags: Vec<String> = command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(|l| l.replace('-', "_"))
        .filter(|k| !RESERVED_KEYS.contains(&k.as_str()))
        .collect();
    flags.sort();
    let mut keys: Vec<String> = RunSettings::keys().iter().map(|k| k.to_string()).collect();
    keys.sort();
    assert_eq!(flags, keys);
}

#[test]
fn a_table_and_the_flags_give_the_same_settings() {
    let t = table(
        "num_requests = 50\nconcurrency = 8\ninput_len = \"1024\"\nmax_tokens = 64\nignore_eos = true\ntemperature = 0.5\nheader = [\"X-A: 1\", \"X-B:2\"]\nimage_size = \"64x32\"\ntimeout = 90\nquality = [\"passkey\", \"arithmetic\"]\nquality_lengths = \"1024,2048\"\nquality_items = 5\nendpoint = \"completions\"\n",
    )
    .unwrap();
    let c = run_settings(&[
        "--num-requests",
        "50",
        "--concurrency",
        "8",
        "--input-len",
        "1024",
        "--max-tokens",
        "64",
        "--ignore-eos",
        "--temperature",
        "0.5",
        "--header",
        "X-A: 1",
        "--header",
        "X-B:2",
        "--image-size",
        "64x32",
        "--timeout",
        "90",
        "--quality",
        "passkey,arithmetic",
        "--quality-lengths",
        "1024",
        "--quality-lengths",
        "2048",
        "--quality-items",
        "5",
        "--endpoint",
        "completions",
    ]);
    assert_eq!(format!("{t:?}"), format!("{c:?}"));
}

#[test]
fn table_errors_name_the_key() {
    let e = table("concurrency = 0\n").unwrap_err();
    assert_eq!(e.key, "concurrency");
    assert!(e.to_string().contains("not a positive integer"), "{e}");
    let e = table("url = \"http://x\"\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "key `url` is set by kvbench itself and cannot appear here"
    );
    let e = table("num_requets = 3\n").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("key `num_requets` is not a setting"),
        "{e}"
    );
    let e = table("concurrency = 2\nrequest_rate = 3\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "key `concurrency` cannot be used with `request_rate`"
    );
    let e = table("arrival = \"gamma\"\n").unwrap_err();
    assert_eq!(e.to_string(), "key `arrival` needs `request_rate`");
    let e = table("endpoint = \"chatty\"\n").unwrap_err();
    assert!(e.to_string().contains("chat, completions"), "{e}");
    let e = table("input_len = 0\n").unwrap_err();
    assert!(e.to_string().contains("input_len"), "{e}");
    let e = table("concurrency = [1, 2]\n").unwrap_err();
    assert_eq!(e.key, "concurrency");
    assert!(e.to_string().contains("a string or a number"), "{e}");
    let e = table("quality = \"passkey,bogus\"\n").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("key `quality`: unknown quality suite"),
        "{e}"
    );
    let e = table("ignore_eos = \"yes\"\n").unwrap_err();
    assert_eq!(e.key, "ignore_eos");
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn validate_applies_the_run_rules() {
    let s = RunSettings {
        output: Some("x.json".into()),
        ..table("temperature = 3\n").unwrap()
    };
    let e = s.validate("http://h:1".into()).unwrap_err().to_string();
    assert!(e.contains("--temperature"), "{e}");
    let s = RunSettings {
        output: Some("no-such-dir/x.json".into()),
        ..RunSettings::default()
    };
    let e = s.validate("http://h:1".into()).unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{e}");
    let s = RunSettings {
        output: Some("x.json".into()),
        ..table("request_rate = 4\nburstiness = 0.5\n").unwrap()
    };
    let cfg = s.validate("http://h:1".into()).unwrap();
    assert_eq!(cfg.journal, PathBuf::from("x.requests.jsonl"));
    match cfg.arrival {
        Arrival::Open {
            kind, burstiness, ..
        } => assert_eq!((kind, burstiness), (ArrivalKind::Gamma, 0.5)),
        other => panic!("{other:?}"),
    }
}

/// The rules between keys are those between the flags: each pair the table refuses, clap
/// refuses too, and each alone is accepted by both.
#[test]
fn the_key_rules_are_the_flag_rules() {
    let value = |k: &str| match k {
        "duration" => "1s",
        "arrival" => "poisson",
        _ => "1",
    };
    let flags = |keys: &[&str]| {
        let mut argv = vec!["run".to_owned(), "--config".into(), "e.toml".into()];
        for k in keys {
            argv.push(format!("--{}", k.replace('_', "-")));
            argv.push(value(k).to_owned());
        }
        command().try_get_matches_from(argv)
    };
    let keys = |keys: &[&str]| {
        let text: String = keys
            .iter()
            .map(|k| format!("{k} = \"{}\"\n", value(k)))
            .collect();
        table(&text)
    };
    for (a, b) in CONFLICTS.iter().chain(NEEDS) {
        if CONFLICTS.contains(&(a, b)) {
            assert!(flags(&[a, b]).is_err() && keys(&[a, b]).is_err(), "{a} {b}");
            assert!(flags(&[a]).is_ok() && keys(&[a]).is_ok(), "{a}");
        } else {
            assert!(flags(&[a]).is_err() && keys(&[a]).is_err(), "{a}");
            assert!(flags(&[a, b]).is_ok() && keys(&[a, b]).is_ok(), "{a} {b}");
        }
        assert!(flags(&[b]).is_ok() && keys(&[b]).is_ok(), "{b}");
    }
}

#[test]
fn latency_targets_from_a_table_and_from_flags_agree() {
    let t = table("slo = [\"ttft_ms=2000\", \"tpot_ms=50\"]\n").unwrap();
    assert_eq!(
        format!("{:?}", t.slo),
        format!(
            "{:?}",
            run_settings(&["--slo", "ttft_ms=2000,tpot_ms=50"]).slo
        )
    );
    let mut s = t.clone();
    s.output = Some("o.json".into());
    let cfg = s.validate("http://127.0.0.1:9".into()).unwrap();
    assert_eq!(cfg.slo.ttft_ms, Some(2000.0));
    assert_eq!(cfg.slo.tpot_ms, Some(50.0));
    assert_eq!(cfg.slo.e2e_ms, None);
    let mut twice = table("slo = \"ttft_ms=1,ttft_ms=2\"\n").unwrap();
    twice.output = Some("o.json".into());
    let e = twice.validate("http://127.0.0.1:9".into()).unwrap_err();
    assert!(e.to_string().contains("given twice"), "{e}");
}
