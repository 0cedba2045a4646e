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

/// KB of broker RSS per connection held (connection scenarios): peak RSS over the RSS
/// before the scenario, divided by the connections established.
fn kb_per_conn(v: &Value) -> Option<f64> {
    if v["scenario"] != "conn" {
        return None;
    }
    let n = v["connected"].as_f64().filter(|n| *n > 0.0)?;
    let grown = v["peak_rss_mb"].as_f64()? - v["base_rss_mb"].as_f64()?;
    Some(grown.max(0.0) * 1024.0 / n)
}

/// CONNECT-to-CONNACK p99 in ms (connection scenarios).
fn connect_p99_ms(v: &Value) -> Option<f64> {
    (v["scenario"] == "conn")
        .then(|| v["latency_us"]["p99"].as_f64().map(|u| u / 1000.0))
        .flatten()
}

fn is_idle(case: &str) -> bool {
    case.starts_with("idle")
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
    } else if x >= 10.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
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
        let _ = writeln!(s, "## {case}\n\n| broker | throughput | sent/s | lost | errors | p50 ms | p99 ms | peak RSS MB | KB/conn | CPU % | Apiary ratio |\n|---|---|---|---|---|---|---|---|---|---|---|");
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
                        "| {b} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {:.0} | {ratio} |",
                        human(t),
                        human(v["sent_per_sec"].as_f64().unwrap_or(0.0)),
                        v["lost"],
                        v["errors"],
                        ms(&v["latency_us"]["p50"]),
                        ms(&v["latency_us"]["p99"]),
                        v["peak_rss_mb"].as_f64().unwrap_or(0.0),
                        kb_per_conn(v).map_or("-".into(), |k| format!("{k:.2}")),
                        v["cpu_percent"].as_f64().unwrap_or(0.0),
                    );
                }
                None => {
                    let _ = writeln!(s, "| {b} | failed | | | | | | | | | |");
                }
            }
        }
        s.push('\n');
    }
    s
}

/// The chart: throughput per scenario (log scale) on top; below, memory per idle
/// connection and the connection storm's CONNECT-to-CONNACK p99.
pub fn chart(
    path: &Path,
    brokers: &[&str],
    cases: &[&str],
    results: &[(String, String, Value)],
) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(520);
    let (left, right) = bottom.split_horizontally(650);
    let pick = |f: &dyn Fn(&str) -> bool| -> Vec<&str> {
        cases.iter().copied().filter(|c| f(c)).collect()
    };
    let panel = Panel { brokers, results };
    panel.draw(
        &top,
        "Throughput per scenario (deliveries/s; connections/s for the storm; log scale)",
        &pick(&|c| !is_idle(c)),
        &throughput,
        true,
    )?;
    panel.draw(
        &left,
        "RSS per idle connection, KB (10k connections)",
        &pick(&is_idle),
        &kb_per_conn,
        false,
    )?;
    panel.draw(
        &right,
        "Connection storm: CONNECT to CONNACK p99, ms",
        &pick(&|c| c.starts_with("connections")),
        &connect_p99_ms,
        false,
    )?;
    root.present()?;
    Ok(())
}

/// One broker's bars in a panel: its name, colour and bars.
type Group<'a> = (
    &'a str,
    plotters::style::RGBColor,
    Vec<plotters::element::Rectangle<(f64, f64)>>,
);

/// One grouped bar chart of the report's chart.
struct Panel<'a> {
    brokers: &'a [&'a str],
    results: &'a [(String, String, Value)],
}

impl Panel<'_> {
    fn draw<DB: plotters::prelude::DrawingBackend>(
        &self,
        area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
        title: &str,
        cases: &[&str],
        value: &dyn Fn(&Value) -> Option<f64>,
        log: bool,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        use plotters::prelude::*;
        let values: Vec<Vec<Option<f64>>> = self
            .brokers
            .iter()
            .map(|b| {
                cases
                    .iter()
                    .map(|c| find(self.results, b, c).and_then(value))
                    .collect()
            })
            .collect();
        let max = values
            .iter()
            .flatten()
            .flatten()
            .fold(1e-3f64, |a, &b| a.max(b));
        let floor = if log { 10.0 } else { 0.0 };
        let palette = [
            RGBColor(230, 159, 0),
            RGBColor(240, 200, 100),
            RGBColor(86, 180, 233),
            RGBColor(0, 158, 115),
        ];
        let width = 0.8 / self.brokers.len().max(1) as f64;
        let n = cases.len().max(1) as f64;
        // Per broker: its name, colour and bars.
        let groups: Vec<Group> = self
            .brokers
            .iter()
            .enumerate()
            .map(|(bi, b)| {
                let color = palette[bi % palette.len()];
                let bars = values[bi]
                    .iter()
                    .enumerate()
                    .filter_map(|(ci, v)| {
                        let x0 = ci as f64 + 0.1 + bi as f64 * width;
                        v.map(|v| {
                            Rectangle::new(
                                [(x0, floor), (x0 + width * 0.9, v.max(floor))],
                                color.filled(),
                            )
                        })
                    })
                    .collect();
                (*b, color, bars)
            })
            .collect();
        let mut builder = ChartBuilder::on(area);
        builder
            .caption(title, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(30)
            .y_label_area_size(70);
        macro_rules! finish {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    .x_labels(cases.len().max(1))
                    .x_label_formatter(&|x| {
                        cases.get(*x as usize).map_or(String::new(), |c| {
                            c.split(',').next().unwrap_or(c).to_string()
                        })
                    })
                    .y_label_formatter(&|y| human(*y))
                    .draw()?;
                for (b, color, bars) in groups {
                    chart.draw_series(bars)?.label(b).legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                    });
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.9))
                    .border_style(BLACK)
                    .draw()?;
            }};
        }
        if log {
            finish!(builder.build_cartesian_2d(0f64..n, (10f64..max.max(10.0) * 2.0).log_scale())?);
        } else {
            finish!(builder.build_cartesian_2d(0f64..n, 0f64..max * 1.2)?);
        }
        Ok(())
    }
}
