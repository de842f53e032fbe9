//! `flash-coupons attack --report FILE.html` against the real service: the
//! page is self-contained (it names no URL but the SVG namespace and loads
//! nothing), and headless Chromium draws its charts. Chromium is Debian's
//! `chromium` package (`.ci/run` installs it); the page and the screenshot
//! are left in the target directory as `attack-report.html` and
//! `attack-report.png`.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::attack_command::attack;
use crate::support::TestApp;
use crate::support::serial;

/// Chromium's own run is bounded by this; it takes a few seconds here.
const CHROMIUM_LIMIT: Duration = Duration::from_secs(120);
const SCREENSHOT_SIZE: (u32, u32) = (1200, 4400);
/// The namespace URIs an SVG may name; they are never fetched.
const NAMESPACES: [&str; 2] = ["http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"];

fn target_dir() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
}

#[test]
fn the_report_of_an_attack_is_one_self_contained_page_whose_charts_chromium_draws() {
    let _turn = serial::turn!();
    // Before any load: without Chromium there is nothing to check with.
    let chromium = chromium();
    let app = TestApp::spawn();
    let page_path = target_dir().join("attack-report.html");
    an_attack_with_a_report_passes_and_says_where_it_wrote_it(&app, &page_path);

    let page = std::fs::read_to_string(&page_path).expect("reading the report");
    the_page_is_self_contained_and_says_every_scenario_passed(&page);

    let profile = tempdir("chromium-profile");
    let dom = run_chromium(
        &chromium,
        &profile,
        &["--dump-dom".to_owned(), file_url(&page_path)],
    );
    let throughput = chromium_builds_nine_charts_drawn_with_their_labels(&dom);
    the_bursts_throughput_has_a_line_for_granted_and_for_out_of_stock(&throughput);

    let screenshot = chromium_screenshots_the_page(&chromium, &profile, &page_path);
    let _ = std::fs::remove_dir_all(&profile);
    the_screenshot_is_inked_in_the_charts_colours(&screenshot);
}

/// `attack --report` on 2000 users exits 0 and prints where it wrote the page.
fn an_attack_with_a_report_passes_and_says_where_it_wrote_it(app: &TestApp, page_path: &Path) {
    let _ = std::fs::remove_file(page_path);
    let page_arg = page_path.to_str().expect("a UTF-8 target directory");
    let (code, stdout, stderr) = attack(&[
        "--url",
        &app.base,
        "--users",
        "2000",
        "--stock",
        "300",
        "--concurrency",
        "32",
        "--report",
        page_arg,
    ]);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(&format!("report written to {page_arg}")),
        "{stdout}"
    );
}

/// The page loads nothing, and says PASS for the attack and each scenario with its counts.
fn the_page_is_self_contained_and_says_every_scenario_passed(page: &str) {
    assert_self_contained(page);
    for text in [
        "<h1>flash-coupons attack <span class=\"pass\">PASS</span></h1>",
        "<h2>Flash Sale Attack <span class=\"pass\">PASS</span></h2>",
        "<h2>Double Dip Attack <span class=\"pass\">PASS</span></h2>",
        "<h2>Burst <span class=\"pass\">PASS</span></h2>",
        "<li class=\"ok\">200 answers: 5 (expected 5)</li>",
        "<li class=\"ok\">409 already_claimed answers: 9 (expected 9)</li>",
        "<li class=\"ok\">400 out_of_stock answers: 1700 (expected 1700)</li>",
        "PASS  Burst",
    ] {
        assert!(page.contains(text), "no {text:?} in the report:\n{page}");
    }
    assert!(!page.contains("class=\"failed\""), "{page}");
}

/// Chromium's DOM has nine charts with labels and lines or bars; the three throughput charts.
fn chromium_builds_nine_charts_drawn_with_their_labels(dom: &str) -> Vec<&str> {
    // Three scenarios, three charts each, every one drawn with its axes'
    // labels and its lines or bars.
    let svgs: Vec<&str> = dom.split("<svg").skip(1).collect();
    assert_eq!(svgs.len(), 9, "the DOM Chromium built:\n{dom}");
    for svg in &svgs {
        let svg = &svg[..svg.find("</svg>").expect("a closed <svg>")];
        assert!(svg.matches("<text").count() >= 8, "{svg}");
        assert!(svg.contains("<polyline") || svg.contains("<rect"), "{svg}");
    }
    let throughput: Vec<&str> = svgs
        .iter()
        .filter(|s| s.contains("answers per second by outcome"))
        .copied()
        .collect();
    assert_eq!(throughput.len(), 3, "{dom}");
    for wanted in [
        "answers/s",
        "latency (ms)",
        "seconds since the claims were released",
        "granted (2xx)",
        "400 out_of_stock",
        "409 already_claimed",
        "p50",
        "p90",
        "p99",
        "claims by status and code",
    ] {
        assert!(dom.contains(wanted), "no {wanted:?} in the DOM:\n{dom}");
    }
    throughput
}

/// The burst's throughput has two green and two orange polylines, each colour's longest ≥10 points.
fn the_bursts_throughput_has_a_line_for_granted_and_for_out_of_stock(throughput: &[&str]) {
    // The burst's throughput: a line (and its legend's swatch) for the
    // granted claims (green) and for the out_of_stock ones (orange), through
    // many points.
    let burst = throughput
        .iter()
        .find(|s| s.contains("Burst: answers per second"))
        .expect("the burst's throughput chart");
    for colour in ["#2E8B57", "#E6911E"] {
        let lines: Vec<&str> = burst
            .split("<polyline")
            .skip(1)
            .filter(|l| l.contains(&format!("stroke=\"{colour}\"")))
            .collect();
        assert_eq!(lines.len(), 2, "{colour} lines in {burst}");
        let points = lines.iter().map(|l| l.matches(',').count()).max();
        assert!(points >= Some(10), "{colour} lines in {burst}");
    }
}

/// Headless Chromium screenshots the page into `attack-report.png`; its path.
fn chromium_screenshots_the_page(chromium: &Path, profile: &Path, page_path: &Path) -> PathBuf {
    let screenshot = target_dir().join("attack-report.png");
    let _ = std::fs::remove_file(&screenshot);
    run_chromium(
        chromium,
        profile,
        &[
            format!("--screenshot={}", screenshot.display()),
            format!("--window-size={},{}", SCREENSHOT_SIZE.0, SCREENSHOT_SIZE.1),
            file_url(page_path),
        ],
    );
    screenshot
}

/// The screenshot is the window's size, over 2% not white, with ≥200 pixels of each bar colour.
fn the_screenshot_is_inked_in_the_charts_colours(screenshot: &Path) {
    let pixels = Pixels::read(screenshot);
    assert_eq!((pixels.width, pixels.height), SCREENSHOT_SIZE);
    let total = pixels.width as usize * pixels.height as usize;
    let inked = pixels.count(|(r, g, b)| r < 235 || g < 235 || b < 235);
    assert!(
        inked * 50 > total,
        "only {inked} of {total} pixels are not white in {}",
        screenshot.display()
    );
    // The charts' own colours, as the bars fill them: granted (green), out
    // of stock (orange), already claimed (blue).
    for (name, colour) in [
        ("granted green", (46, 139, 87)),
        ("out_of_stock orange", (230, 145, 30)),
        ("already_claimed blue", (65, 105, 225)),
    ] {
        let n = pixels.count(|p| p == colour);
        assert!(
            n >= 200,
            "{n} pixels of {name} {colour:?} in {}",
            screenshot.display()
        );
    }
}

#[test]
fn a_report_that_cannot_be_written_is_a_usage_error_before_any_claim() {
    let _turn = serial::turn!();
    let missing = target_dir().join("no-such-directory").join("report.html");
    let (code, stdout, stderr) = attack(&[
        "--url",
        "http://127.0.0.1:1",
        "--report",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("cannot write --report {}", missing.display())),
        "{stderr}"
    );
    assert_eq!(stdout, "");
}

/// Every URL in the page is an SVG namespace, and nothing in it loads
/// anything: no scripts, style sheets, images, frames or fonts.
fn assert_self_contained(page: &str) {
    let mut rest = page;
    while let Some(at) = rest.find("://") {
        let start = rest[..at]
            .rfind(|c: char| !c.is_ascii_alphanumeric())
            .map_or(0, |i| i + 1);
        let end = rest[at..]
            .find(|c: char| c == '"' || c == '\'' || c == '<' || c.is_whitespace())
            .map_or(rest.len(), |i| at + i);
        let url = &rest[start..end];
        assert!(NAMESPACES.contains(&url), "the report names {url:?}");
        rest = &rest[end..];
    }
    let lower = page.to_ascii_lowercase();
    for tag in [
        "<script",
        "<link",
        "<img",
        "<iframe",
        "<object",
        "<embed",
        "<image",
        "<use",
        "src=",
        "href=",
        "url(",
        "@import",
        "@font-face",
    ] {
        assert!(!lower.contains(tag), "the report has {tag}");
    }
    assert!(
        lower.contains("content=\"default-src 'none'; style-src 'unsafe-inline'\""),
        "the report's Content-Security-Policy forbids fetching"
    );
}

/// Chromium on PATH; the test fails naming the package when it is not.
fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium is not on PATH: install Debian's `chromium` package \
                 (apt-get install -y chromium; .ci/run does)"
            )
        })
}

/// Runs headless Chromium with `args` in a process group of its own, for
/// at most [`CHROMIUM_LIMIT`], then ends whatever of the group is left;
/// returns what it printed on stdout.
fn run_chromium(chromium: &Path, profile: &Path, args: &[String]) -> String {
    let out_path = profile.with_extension("stdout");
    let err_path = profile.with_extension("stderr");
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("chromium's stdout file"))
        .stderr(File::create(&err_path).expect("chromium's stderr file"))
        .process_group(0)
        .spawn()
        .expect("starting chromium");
    let group = i32::try_from(child.id()).expect("a pid");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            break Some(status);
        }
        if started.elapsed() > CHROMIUM_LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Chromium's helpers are in its group; none should outlive it.
    // SAFETY: kill(2) on the group this test started.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
    let _ = child.wait();
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    match status {
        Some(status) if status.success() => stdout,
        Some(status) => panic!("chromium {args:?} exited with {status}:\n{stderr}"),
        None => panic!(
            "chromium {args:?} did not finish within {} s:\n{stderr}",
            CHROMIUM_LIMIT.as_secs()
        ),
    }
}

fn file_url(path: &Path) -> String {
    let path = path.canonicalize().expect("the report's path");
    let path = path.to_str().expect("a UTF-8 path");
    assert!(
        path.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)),
        "a path that needs no percent-encoding: {path}"
    );
    format!("file://{path}")
}

fn tempdir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory for chromium's profile");
    dir
}

/// A decoded PNG as 8-bit RGB(A) rows.
struct Pixels {
    width: u32,
    height: u32,
    channels: usize,
    data: Vec<u8>,
}

impl Pixels {
    fn read(path: &Path) -> Pixels {
        let file = File::open(path)
            .unwrap_or_else(|e| panic!("chromium wrote no screenshot {}: {e}", path.display()));
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().expect("a PNG header");
        let mut data = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut data).expect("a PNG frame");
        let channels = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => panic!("a screenshot in {other:?}"),
        };
        data.truncate(info.buffer_size());
        Pixels {
            width: info.width,
            height: info.height,
            channels,
            data,
        }
    }

    fn count(&self, wanted: impl Fn((u8, u8, u8)) -> bool) -> usize {
        self.data
            .chunks_exact(self.channels)
            .filter(|p| wanted((p[0], p[1], p[2])))
            .count()
    }
}
