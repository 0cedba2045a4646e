//! The bench report: a markdown table per scenario and a grouped bar chart (SVG).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde_json::Value;

/// The throughput a scenario is judged on: deliveries per second, or connections per
/// second for the connection storm.
fn throughput(v: &Value) -> Option<f64> {
    if v["scenario"] == "conn" {
        v["sent_per_sec"].as_f64()
    } else {
        v["received_per_sec"].as_f64()
    }
}

fn find<'a>(results: &'a [(String, String, Value)], broker: &str, case: &str) -> Option<&'a Value> {
    results
        .iter()
        .find(|(b, c, v)| b == broker && c == case && !v.is_null())
        .map(|(_, _, v)| v)
}

fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn ms(us: &Value) -> String {
    us.as_f64()
        .map_or("-".into(), |u| format!("{:.2}", u / 1000.0))
}

/// The markdown report.
pub fn markdown(
    brokers: &[&str],
    cases: &[&str],
    results: &[(String, String, Value)],
    quick: bool,
) -> String {
    let mut s = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_string))
        })
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "# Apiary benchmark ({} run)\n\n`cargo xtask bench{}` on {} cores ({cpu}); broker and load generator share the machine. \
         Each broker starts fresh for each scenario on the same port; 3.1.1 over TCP, 16-byte payloads. \
         Throughput is deliveries/s (connections/s for the storm); latency is publish-to-delivery; \
         RSS and CPU are the broker process's, from /proc. Ratio = Apiary / that broker.\n",
        if quick { "quick" } else { "full" },
        if quick { " --quick" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    for case in cases {
        let _ = writeln!(s, "## {case}\n\n| broker | throughput | sent/s | lost | errors | p50 ms | p99 ms | peak RSS MB | CPU % | Apiary ratio |\n|---|---|---|---|---|---|---|---|---|---|");
        let apiary = find(results, "Apiary", case).and_then(throughput);
        for b in brokers {
            match find(results, b, case) {
                Some(v) => {
                    let t = throughput(v).unwrap_or(0.0);
                    let ratio = match (apiary, *b) {
                        (_, "Apiary") => "-".to_string(),
                        (Some(a), _) if t > 0.0 => format!("{:.2}x", a / t),
                        _ => "-".into(),
                    };
                    let _ = writeln!(
                        s,
                        "| {b} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {ratio} |",
                        human(t),
                        human(v["sent_per_sec"].as_f64().unwrap_or(0.0)),
                        v["lost"],
                        v["errors"],
                        ms(&v["latency_us"]["p50"]),
                        ms(&v["latency_us"]["p99"]),
                        v["peak_rss_mb"].as_f64().unwrap_or(0.0),
                        v["cpu_percent"].as_f64().unwrap_or(0.0),
                    );
                }
                None => {
                    let _ = writeln!(s, "| {b} | failed | | | | | | | | |");
                }
            }
        }
        s.push('\n');
    }
    s
}

/// A grouped bar chart of throughput per scenario (log scale).
pub fn chart(
    path: &Path,
    brokers: &[&str],
    cases: &[&str],
    results: &[(String, String, Value)],
) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = results
        .iter()
        .filter_map(|(_, _, v)| throughput(v))
        .fold(10.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Throughput per scenario (deliveries/s, log scale)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..cases.len() as f64, (10f64..max * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(cases.len())
        .x_label_formatter(&|x| format!("#{}", *x as usize + 1))
        .y_label_formatter(&|y| human(*y))
        .draw()?;
    let palette = [
        RGBColor(230, 159, 0),
        RGBColor(240, 200, 100),
        RGBColor(86, 180, 233),
        RGBColor(0, 158, 115),
    ];
    let width = 0.8 / brokers.len().max(1) as f64;
    for (bi, b) in brokers.iter().enumerate() {
        let color = palette[bi % palette.len()];
        let bars: Vec<_> = cases
            .iter()
            .enumerate()
            .filter_map(|(ci, c)| {
                let t = find(results, b, c).and_then(throughput)?.max(10.0);
                let x0 = ci as f64 + 0.1 + bi as f64 * width;
                Some(Rectangle::new(
                    [(x0, 10.0), (x0 + width * 0.9, t)],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(*b)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
