//! `kvbench report`: the subcommand, and the HTML report checked in headless Chromium (it
//! renders, logs nothing to the console, and the rendered DOM holds the verdict).
//!
//! The Chromium tests skip with a printed reason when Debian's `chromium` is absent, unless
//! `KVBENCH_REQUIRE_CHROMIUM` is set (scripts/test.sh sets it under CI=true).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command as Cmd;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn comparison(name: &str) -> kvbench::compare::Comparison {
    let v = serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap();
    kvbench::report::from_value(v).unwrap()
}

#[test]
fn report_writes_html_and_markdown_files() {
    let dir = tempfile::tempdir().unwrap();
    let (h, m) = (dir.path().join("r.html"), dir.path().join("r.md"));
    let out = Cmd::cargo_bin("kvbench")
        .unwrap()
        .arg("report")
        .arg(fixture("comparison-sample.json"))
        .arg("--html")
        .arg(&h)
        .arg("--md")
        .arg(&m)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("verdict     MONITOR"), "{stdout}");
    assert!(stdout.contains(&h.display().to_string()));
    let html = std::fs::read_to_string(&h).unwrap();
    let md = std::fs::read_to_string(&m).unwrap();
    let c = comparison("comparison-sample.json");
    assert_eq!(html, kvbench::report::html(&c));
    assert_eq!(md, kvbench::report::markdown(&c));
}

#[test]
fn report_md_to_stdout_and_bad_usage() {
    let out = Cmd::cargo_bin("kvbench")
        .unwrap()
        .arg("report")
        .arg(fixture("comparison-failed-arm.json"))
        .args(["--md", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("# kvbench report · fp8\n"));
    assert!(stdout.contains("## Verdict: **INCONCLUSIVE**"));
    // The verdict line goes to stderr so stdout stays pure Markdown.
    assert!(String::from_utf8_lossy(&out.stderr).contains("verdict     INCONCLUSIVE"));

    // No output requested: a usage error.
    let out = Cmd::cargo_bin("kvbench")
        .unwrap()
        .arg("report")
        .arg(fixture("comparison-sample.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--html"));

    // Not a comparison: a clear error, non-zero exit, nothing written.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "[1, 2]").unwrap();
    let h = dir.path().join("r.html");
    let out = Cmd::cargo_bin("kvbench")
        .unwrap()
        .arg("report")
        .arg(&bad)
        .arg("--html")
        .arg(&h)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a comparison"));
    assert!(!h.exists());
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium

/// Debian's Chromium, or `None` (after saying why on stderr) when the test should skip.
fn chromium() -> Option<PathBuf> {
    // KVBENCH_CHROMIUM names another binary (and, pointing nowhere, shows the skip path).
    let path = std::env::var_os("KVBENCH_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "chromium not found at {} (Debian's chromium; scripts/test.sh installs it)",
        path.display()
    );
    if std::env::var_os("KVBENCH_REQUIRE_CHROMIUM").is_some() {
        panic!("KVBENCH_REQUIRE_CHROMIUM is set but {why}");
    }
    // Straight to stderr, so it shows even under the test harness's output capture.
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
    None
}

/// What Chromium made of one page.
struct Rendered {
    /// The DOM after load (`--dump-dom`).
    dom: String,
    /// Chromium's log (stderr).
    log: String,
}

/// Loads `page` in headless Chromium and dumps its DOM; no network (the page is a local file,
/// and background networking is off).
fn render(chromium: &Path, page: &Path) -> Rendered {
    render_with(chromium, page, &[])
}

/// [`render`] with more Chromium arguments (a window size).
fn render_with(chromium: &Path, page: &Path, extra: &[&str]) -> Rendered {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile");
    let (out, err) = (dir.path().join("dom"), dir.path().join("log"));
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within 90 s; log:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(&err).unwrap();
    assert!(status.success(), "chromium failed ({status}):\n{log}");
    Rendered {
        dom: std::fs::read_to_string(&out).unwrap(),
        log,
    }
}

/// Console messages in Chromium's log. This Chromium (Debian 156) logs every console message,
/// `console.error` and uncaught exceptions included, as `INFO:CONSOLE:<line>] "<text>", source:`
/// (not `ERROR:CONSOLE`), and Content-Security-Policy violations the same way; older versions
/// used `ERROR:CONSOLE` or `CONSOLE(<line>)`. The report has no script, so any console message
/// at all is a defect.
fn console_messages(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("CONSOLE(") || l.contains("Uncaught"))
        .collect()
}

#[test]
fn console_check_recognises_chromium_console_lines() {
    // Lines as Chromium 156 printed them for a page with console.error and a thrown error.
    let log = "[1:1:1127/233132.686941:ERROR:dbus/bus.cc:405] Failed to connect to the bus\n\
        [7682:7682:1127/233133.126830:INFO:CONSOLE:1] \"deliberate-error-123\", source: file:///tmp/ce.html (1)\n\
        [7682:7682:1127/233133.127477:INFO:CONSOLE:1] \"Uncaught ReferenceError: f is not defined\", source: file:///tmp/ce.html (1)\n\
        [1:1:0101/000000.000000:ERROR:CONSOLE(3)] \"older format\", source: x (3)\n";
    let found = console_messages(log);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found[0].contains("deliberate-error-123"));
    assert!(
        console_messages("[1:1:0101:ERROR:dbus/bus.cc:405] Failed to connect to the bus")
            .is_empty()
    );
}

#[test]
fn html_report_renders_in_chromium_without_console_errors() {
    let Some(chromium) = chromium() else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    for (name, verdict, reason) in [
        (
            "comparison-sample.json",
            "MONITOR",
            "Monitor: apply fp8-calibrated and watch it.",
        ),
        (
            "comparison-failed-arm.json",
            "INCONCLUSIVE",
            "Inconclusive: the reference arm failed to start",
        ),
    ] {
        let page = dir.path().join(name.replace(".json", ".html"));
        std::fs::write(&page, kvbench::report::html(&comparison(name))).unwrap();
        let r = render(&chromium, &page);
        let console = console_messages(&r.log);
        assert!(
            console.is_empty(),
            "{name}: console messages:\n{}",
            console.join("\n")
        );
        // Rendered: the DOM Chromium built holds the verdict banner, the reason and the charts.
        assert!(
            r.dom
                .contains(&format!("<div class=\"label\">{verdict}</div>")),
            "{name}: verdict missing from the DOM:\n{}",
            &r.dom[..r.dom.len().min(2000)]
        );
        assert!(r.dom.contains(reason), "{name}");
        assert!(
            r.dom.contains("<svg") && r.dom.contains("<polyline"),
            "{name}"
        );
        assert!(r.dom.contains("id=\"warnings\"") && r.dom.contains("id=\"server\""));
        // The warning line with a <script> stayed text: no script element in the live DOM.
        assert!(!r.dom.contains("<script"), "{name}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "chromium check of 2 reports took {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

/// The check can fail: a page that logs an error, and the report with a script spliced in
/// (which its Content-Security-Policy blocks, with a console message), are both caught.
#[test]
fn chromium_check_catches_console_errors() {
    let Some(chromium) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("error.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><body><p>MONITOR</p>\
         <script>console.error('deliberate console error'); missingFunction();</script></body></html>",
    )
    .unwrap();
    let r = render(&chromium, &page);
    let console = console_messages(&r.log);
    assert!(
        console
            .iter()
            .any(|l| l.contains("deliberate console error")),
        "console.error not seen in:\n{}",
        r.log
    );
    assert!(console
        .iter()
        .any(|l| l.contains("Uncaught ReferenceError")));

    let html = kvbench::report::html(&comparison("comparison-sample.json"));
    let injected = html.replacen(
        "</body>",
        "<script>console.log('escaped the escaping')</script></body>",
        1,
    );
    let page = dir.path().join("injected.html");
    std::fs::write(&page, injected).unwrap();
    let r = render(&chromium, &page);
    let console = console_messages(&r.log);
    assert!(
        console
            .iter()
            .any(|l| l.contains("Content Security Policy")),
        "the blocked script left no console message:\n{}",
        r.log
    );
    assert!(!console.iter().any(|l| l.contains("escaped the escaping")));
}

/// The page with its Content-Security-Policy lifted and a script appended that writes onto
/// `<body>` what a person would see at the window's width: the tables wider than their box
/// (`data-overflow`, each named by the heading before it, or `none`) and the page's width.
fn layout_probe(html: &str) -> String {
    let start = html
        .find("<meta http-equiv=\"Content-Security-Policy\"")
        .unwrap();
    let end = start + html[start..].find('>').unwrap() + 1;
    let script = r#"<script>
const over = [...document.querySelectorAll('.scroll')]
  .filter(d => d.scrollWidth > d.clientWidth + 1)
  .map(d => { let h = d.previousElementSibling; while (h && !/^H[1-3]$/.test(h.tagName)) h = h.previousElementSibling; return h ? h.textContent : '?'; });
document.body.setAttribute('data-overflow', over.length ? over.join(' | ') : 'none');
document.body.setAttribute('data-page-width', String(document.documentElement.scrollWidth));
</script>"#;
    format!("{}{}", &html[..start], &html[end..]).replacen(
        "</body>",
        &format!("{script}</body>"),
        1,
    )
}

/// What the probe wrote: (overflowing tables, page width in px).
fn probe(chromium: &Path, dir: &Path, name: &str, html: &str) -> (String, u32) {
    let page = dir.join(format!("{name}.probe.html"));
    std::fs::write(&page, layout_probe(html)).unwrap();
    let r = render_with(chromium, &page, &["--window-size=1280,1000"]);
    let attr = |key: &str| -> String {
        let at = r
            .dom
            .find(&format!("{key}=\""))
            .unwrap_or_else(|| panic!("{name}: no {key}"));
        let rest = &r.dom[at + key.len() + 2..];
        rest[..rest.find('"').unwrap()].to_owned()
    };
    (
        attr("data-overflow"),
        attr("data-page-width").parse().unwrap(),
    )
}

/// Numbers with more than six decimals in the page's text (tags and the SVG left out).
fn long_decimals(html: &str) -> Vec<String> {
    let tags = regex::Regex::new(r"(?s)<style.*?</style>|<svg.*?</svg>|<[^>]+>").unwrap();
    let text = tags.replace_all(html, " ");
    regex::Regex::new(r"\d\.\d{7,}")
        .unwrap()
        .find_iter(&text)
        .map(|m| m.as_str().to_owned())
        .collect()
}

/// Every committed report (docs/validation) is what `kvbench report` renders from its JSON
/// today (scripts/render-reports.sh rewrites them), has no number with more than six
/// decimals, and at 1280 px no table wider than the page.
#[test]
fn committed_reports_are_current_and_fit_1280_px() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut jsons: Vec<PathBuf> = std::fs::read_dir(root.join("docs/validation"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("comparison") && n.ends_with(".json")
        })
        .collect();
    jsons.sort();
    assert!(jsons.len() >= 2, "{jsons:?}");
    let chromium = chromium();
    let dir = tempfile::tempdir().unwrap();
    for json in &jsons {
        let c = kvbench::report::read_comparison(json).unwrap();
        let html = kvbench::report::html(&c);
        let committed = json.with_extension("html");
        assert!(
            std::fs::read_to_string(&committed).ok().as_deref() == Some(html.as_str()),
            "{} is not what kvbench report renders today: run scripts/render-reports.sh",
            committed.display()
        );
        let md = std::fs::read_to_string(json.with_extension("md")).unwrap();
        assert_eq!(md, kvbench::report::markdown(&c), "{}", json.display());
        let long = long_decimals(&html);
        assert!(long.is_empty(), "{}: {long:?}", json.display());
        if let Some(chromium) = &chromium {
            let name = json.file_stem().unwrap().to_string_lossy().into_owned();
            let (over, width) = probe(chromium, dir.path(), &name, &html);
            assert_eq!(
                over,
                "none",
                "{}: tables wider than the page",
                json.display()
            );
            assert!(width <= 1280, "{}: page {width} px wide", json.display());
        }
    }
}

/// The checks can fail: a table too wide for 1280 px and a long decimal are caught.
#[test]
fn layout_and_precision_checks_catch_a_wide_table_and_a_raw_float() {
    let html = kvbench::report::html(&comparison("comparison-sample.json"));
    let wide = html.replacen(
        "<section",
        &format!(
            "<h3>too wide</h3><div class=\"scroll\"><table><tr><td style=\"white-space:nowrap\">{}</td></tr></table></div><p>18.687960777496603</p><section",
            "x".repeat(600)
        ),
        1,
    );
    assert_eq!(long_decimals(&wide), ["8.687960777496603".to_owned()]);
    let Some(chromium) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (over, _) = probe(&chromium, dir.path(), "wide", &wide);
    assert!(over.contains("too wide"), "{over}");
}
