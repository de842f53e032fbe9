//! The `--report` page: one self-contained HTML file (its charts are inline
//! SVG, its style inline, and its Content-Security-Policy forbids fetching
//! anything) with the run's verdict, and for each scenario its verdict and
//! checks, its numbers, and three charts: answers per second over time by
//! outcome, latency percentiles over time, and the mix of statuses and
//! codes.

use std::fmt::Write as _;
use std::time::Duration;

use super::charts::{self, Bar, Line, Rgb, XScale};
use super::report::{self, Scenario, count_status, ms, tally};
use super::timeline::{Class, Timeline};

/// What the page says about the run as a whole.
pub struct RunInfo<'a> {
    /// The service's address, `host:port` (every request was plain HTTP).
    pub service: &'a str,
    pub run_id: &'a str,
    /// When the run started, as text.
    pub started: &'a str,
    pub timeout: Duration,
    pub deadline: Duration,
    pub idempotency_keys: bool,
}

const STYLE: &str = "
body { font-family: sans-serif; color: #222; max-width: 1000px; margin: 24px auto; padding: 0 12px; }
h1, h2 { margin-bottom: 6px; }
.pass, .fail { color: #fff; padding: 1px 8px; border-radius: 4px; font-size: 80%; vertical-align: middle; }
.pass { background: #2e8b57; }
.fail { background: #c62828; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
ul.checks { list-style: none; padding-left: 0; }
ul.checks li.ok::before { content: '\\2713  '; color: #2e8b57; font-weight: bold; }
ul.checks li.failed::before { content: '\\2717  '; color: #c62828; font-weight: bold; }
ul.checks li.failed { color: #c62828; }
.verdict { font-family: monospace; }
figure.chart { margin: 14px 0; }
figure.chart svg { max-width: 100%; height: auto; display: block; border: 1px solid #eee; }
section { border-top: 2px solid #ccc; margin-top: 28px; }
";

/// The page for `scenarios`.
pub fn render(info: &RunInfo, scenarios: &[Scenario]) -> Result<String, String> {
    let passed = scenarios.iter().all(Scenario::passed);
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>flash-coupons attack on {}: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(info.service),
        if passed { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(
        page,
        "<h1>flash-coupons attack {}</h1>",
        badge(passed, "PASS", "FAIL")
    );
    let _ = writeln!(
        page,
        "<p>The service at {} (plain HTTP), run {} started {}; request timeout {} s, run deadline {} s{}.</p>",
        escape(info.service),
        escape(info.run_id),
        escape(info.started),
        info.timeout.as_secs(),
        info.deadline.as_secs(),
        if info.idempotency_keys {
            "; every claim with an Idempotency-Key of its own, sent again with it after no answer or a 503"
        } else {
            ""
        }
    );
    summary(&mut page, scenarios);
    for (i, s) in scenarios.iter().enumerate() {
        section(&mut page, i, s)?;
    }
    page.push_str("</body>\n</html>\n");
    Ok(page)
}

fn summary(page: &mut String, scenarios: &[Scenario]) {
    page.push_str(
        "<table class=\"summary\">\n<tr><th>scenario</th><th>claims</th><th>2xx</th><th>400</th>\
         <th>409</th><th>503</th><th>other</th><th>req/s</th><th>p50</th><th>p90</th><th>p99</th>\
         <th>result</th></tr>\n",
    );
    for s in scenarios {
        let ok = s
            .outcomes
            .iter()
            .filter(|o| o.status.is_some_and(|c| (200..300).contains(&c)))
            .count();
        let (c400, c409, c503) = (
            count_status(&s.outcomes, 400),
            count_status(&s.outcomes, 409),
            count_status(&s.outcomes, 503),
        );
        let other = s.outcomes.len() - ok - c400 - c409 - c503;
        let p = s.latency_percentiles(&[50.0, 90.0, 99.0]);
        let shown = |d: &Option<Duration>| d.map_or("-".to_owned(), ms);
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{ok}</td><td>{c400}</td><td>{c409}</td><td>{c503}</td>\
             <td>{other}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&s.title),
            s.outcomes.len(),
            s.requests_per_sec(),
            shown(&p[0]),
            shown(&p[1]),
            shown(&p[2]),
            badge(s.passed(), "PASS", "FAIL")
        );
    }
    page.push_str("</table>\n");
}

fn section(page: &mut String, index: usize, s: &Scenario) -> Result<(), String> {
    let _ = writeln!(
        page,
        "<section id=\"scenario-{index}\">\n<h2>{} {}</h2>\n<p>{}</p>",
        escape(&s.title),
        badge(s.passed(), "PASS", "FAIL"),
        escape(&s.setup)
    );
    for note in &s.notes {
        let _ = writeln!(page, "<p>Note: {}</p>", escape(note));
    }
    if !s.outcomes.is_empty() {
        let p = s.latency_percentiles(&[50.0, 90.0, 99.0]);
        let latency = match p[..] {
            [Some(p50), Some(p90), Some(p99)] => {
                format!("latency p50 {}, p90 {}, p99 {}", ms(p50), ms(p90), ms(p99))
            }
            _ => "no latency: nothing was sent".to_owned(),
        };
        let _ = writeln!(
            page,
            "<p>{} claims in {:.3} s: {:.0} req/s; {latency}.</p>",
            s.outcomes.len(),
            s.wall.as_secs_f64(),
            s.requests_per_sec()
        );
        let retried = s.outcomes.iter().filter(|o| o.retries > 0).count();
        if retried > 0 {
            let retries: u32 = s.outcomes.iter().map(|o| o.retries).sum();
            let _ = writeln!(
                page,
                "<p>{retried} claims got no answer or a 503 and were sent again with their \
                 idempotency key ({retries} retries in all).</p>"
            );
        }
    }
    page.push_str("<h3>Checks</h3>\n<ul class=\"checks\">\n");
    for check in &s.checks {
        let _ = writeln!(
            page,
            "<li class=\"{}\">{}</li>",
            if check.ok { "ok" } else { "failed" },
            escape(&check.text)
        );
    }
    let _ = writeln!(
        page,
        "</ul>\n<p class=\"verdict\">{}</p>",
        escape(&report::verdict(s))
    );
    match &s.timeline {
        Some(timeline) if !s.outcomes.is_empty() => {
            for svg in [
                throughput_chart(&s.title, timeline)?,
                latency_chart(&s.title, timeline)?,
                mix_chart(s)?,
            ] {
                let _ = writeln!(page, "<figure class=\"chart\">\n{svg}\n</figure>");
            }
        }
        _ => page.push_str("<p>No claims were sent: nothing to chart.</p>\n"),
    }
    page.push_str("</section>\n");
    Ok(())
}

fn class_color(class: Class) -> Rgb {
    match class {
        Class::Granted => (46, 139, 87),
        Class::AlreadyClaimed => (65, 105, 225),
        Class::OutOfStock => (230, 145, 30),
        Class::Overloaded => (214, 39, 40),
        Class::OtherAnswer => (148, 103, 189),
        Class::NoAnswer => (60, 60, 60),
    }
}

/// The middle of bucket `i`, in seconds from the release.
fn bucket_middle(timeline: &Timeline, i: usize) -> f64 {
    (i as f64 + 0.5) * timeline.width().as_secs_f64()
}

/// Answers per second in each bucket, a line per outcome that occurred.
fn throughput_chart(title: &str, timeline: &Timeline) -> Result<String, String> {
    let secs = timeline.width().as_secs_f64();
    let lines: Vec<Line> = Class::ALL
        .iter()
        .filter(|&&class| timeline.buckets().iter().any(|b| b.count(class) > 0))
        .map(|&class| Line {
            label: class.label().to_owned(),
            color: class_color(class),
            points: timeline
                .buckets()
                .iter()
                .enumerate()
                .map(|(i, b)| (bucket_middle(timeline, i), b.count(class) as f64 / secs))
                .collect(),
        })
        .collect();
    charts::lines(
        &format!("{title}: answers per second by outcome"),
        &format!(
            "seconds since the claims were released ({} buckets)",
            duration(timeline.width())
        ),
        "answers/s",
        &lines,
        &XScale::Linear,
    )
}

/// p50, p90 and p99 of the answers of each bucket that had any.
fn latency_chart(title: &str, timeline: &Timeline) -> Result<String, String> {
    let lines: Vec<Line> = [
        ("p50", 0.50, (31, 119, 180)),
        ("p90", 0.90, (23, 190, 207)),
        ("p99", 0.99, (214, 39, 40)),
    ]
    .into_iter()
    .map(|(label, quantile, color)| Line {
        label: label.to_owned(),
        color,
        points: timeline
            .buckets()
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let latency = b.latency_at(quantile)?;
                Some((bucket_middle(timeline, i), latency.as_secs_f64() * 1000.0))
            })
            .collect(),
    })
    .collect();
    charts::lines(
        &format!("{title}: latency percentiles of the answers in each bucket"),
        &format!(
            "seconds since the claims were released ({} buckets)",
            duration(timeline.width())
        ),
        "latency (ms)",
        &lines,
        &XScale::Linear,
    )
}

/// Claims by status and code, as the text report counts them.
fn mix_chart(s: &Scenario) -> Result<String, String> {
    let bars: Vec<Bar> = tally(&s.outcomes)
        .into_iter()
        .map(|((status, code), n)| {
            let (label, color) = if status == u32::MAX {
                let color = if matches!(code.as_str(), "not_sent_deadline" | "worker_lost") {
                    (170, 170, 170)
                } else {
                    class_color(Class::NoAnswer)
                };
                (format!("no answer: {code}"), color)
            } else {
                let class = Class::of(&super::client::Outcome {
                    status: u16::try_from(status).ok(),
                    code: code.clone(),
                    latency: Duration::ZERO,
                    retries: 0,
                });
                let color = class.map_or((170, 170, 170), class_color);
                let label = if code.is_empty() {
                    status.to_string()
                } else {
                    format!("{status} {code}")
                };
                (label, color)
            };
            Bar {
                label,
                value: n as f64,
                color,
            }
        })
        .collect();
    charts::bars(
        &format!("{}: claims by status and code", s.title),
        "claims",
        &bars,
    )
}

fn badge(ok: bool, yes: &str, no: &str) -> String {
    if ok {
        format!("<span class=\"pass\">{yes}</span>")
    } else {
        format!("<span class=\"fail\">{no}</span>")
    }
}

/// A bucket width as people write it: `4 ms`, `1.024 s`.
fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.3} s", d.as_secs_f64())
    }
}

/// `text` safe inside HTML elements and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Outcome;
    use crate::report::Check;

    fn scenario() -> Scenario {
        let mut s = Scenario::new("Flash <Sale>", "coupon x: 5 units".into());
        let mut timeline = Timeline::default();
        for i in 0..50u64 {
            let (status, code) = if i < 5 {
                (Some(200), "")
            } else if i < 48 {
                (Some(400), "out_of_stock")
            } else {
                (None, "timeout")
            };
            let outcome = Outcome {
                status,
                code: code.to_owned(),
                latency: Duration::from_millis(2 + i),
                retries: 0,
            };
            timeline.record(
                Duration::from_millis(i),
                Class::of(&outcome).unwrap(),
                outcome.latency,
            );
            s.outcomes.push(outcome);
        }
        s.wall = Duration::from_millis(60);
        s.timeline = Some(timeline);
        s.check(Check::equal("200 answers", 5, 5));
        s.check(Check::equal("400 out_of_stock answers", 45, 43));
        s
    }

    fn info() -> RunInfo<'static> {
        RunInfo {
            service: "127.0.0.1:8080",
            run_id: "1-abc",
            started: "2026-12-07 00:00:00 UTC",
            timeout: Duration::from_secs(30),
            deadline: Duration::from_secs(600),
            idempotency_keys: false,
        }
    }

    #[test]
    fn the_page_has_the_verdict_the_checks_and_three_charts_per_scenario() {
        let page = render(&info(), &[scenario()]).unwrap();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<title>flash-coupons attack on 127.0.0.1:8080: FAIL</title>"));
        assert!(page.contains("<h2>Flash &lt;Sale&gt; <span class=\"fail\">FAIL</span></h2>"));
        assert!(page.contains("<li class=\"ok\">200 answers: 5 (expected 5)</li>"));
        assert!(
            page.contains("<li class=\"failed\">400 out_of_stock answers: 43 (expected 45)</li>")
        );
        assert_eq!(page.matches("<svg ").count(), 3, "{page}");
        assert_eq!(page.matches("<figure class=\"chart\">").count(), 3);
        for text in [
            "answers per second by outcome",
            "granted (2xx)",
            "400 out_of_stock",
            "no answer (errors)",
            "latency percentiles",
            "p99",
            "claims by status and code",
            "no answer: timeout",
        ] {
            assert!(page.contains(text), "no {text:?} in the page");
        }
        // A line and a legend swatch for each outcome that came (granted,
        // out of stock, no answer) and each percentile.
        for color in ["2E8B57", "E6911E", "3C3C3C", "1F77B4", "17BECF", "D62728"] {
            let stroke = format!("<polyline fill=\"none\" opacity=\"1\" stroke=\"#{color}\"");
            assert_eq!(page.matches(&stroke).count(), 2, "{stroke} in {page}");
        }
        // And a bar for each, filled with its colour.
        for color in ["2E8B57", "E6911E", "3C3C3C"] {
            assert!(page.contains(&format!("fill=\"#{color}\" stroke=\"none\"")));
        }
    }

    #[test]
    fn the_page_fetches_nothing() {
        let page = render(&info(), &[scenario()]).unwrap();
        let mut rest = page.as_str();
        while let Some(at) = rest.find("://") {
            let before = &rest[..at];
            let scheme_start = before
                .rfind(|c: char| !c.is_ascii_alphanumeric())
                .map_or(0, |i| i + 1);
            let end = rest[at..]
                .find(|c: char| c == '"' || c.is_whitespace())
                .map_or(rest.len(), |i| at + i);
            let url = &rest[scheme_start..end];
            assert_eq!(url, "http://www.w3.org/2000/svg", "a URL in the page");
            rest = &rest[end..];
        }
        for tag in ["<script", "<link", "<img", "<iframe", "url(", "@import"] {
            assert!(!page.contains(tag), "{tag} in the page");
        }
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("a<b & \"c\" 'd'>"),
            "a&lt;b &amp; &quot;c&quot; &#39;d&#39;&gt;"
        );
    }
}
