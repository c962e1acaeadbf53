//! `throng-bench plot FILE.json OUT.svg [--children N]`: the growth curve of a
//! `cluster --nodes 3,12,24,48 --json FILE.json` run, drawn with plotters.
//!
//! Why plotters, and with so few features: it is the common Rust plotting crate, it draws SVG
//! with nothing but Rust (no system library), and with `default-features = false` plus
//! `svg_backend` and `line_series` it builds no bitmap backend, no font rasteriser (the SVG keeps
//! its text as `<text>` elements, laid out with plotters' built-in size estimate) and no image
//! codec, so the bench's build stays small.
//!
//! Three panels against the number of node processes (medians of the runs at one N): moving one
//! node's children (fail-over and its detection, graceful leave, join), starting N children
//! (wall time and CPU), and the cost per node (resident memory, idle CPU).

use std::collections::BTreeMap;
use std::process::ExitCode;

use plotters::prelude::*;
use serde_json::Value;

use crate::control::u;

/// One line of a panel: its label, the scenario and the field it plots, and a factor applied to
/// the field (e.g. 0.001 for ms as s).
struct Line {
    label: &'static str,
    scenario: &'static str,
    field: &'static str,
    factor: f64,
}

const fn line(label: &'static str, scenario: &'static str, field: &'static str) -> Line {
    Line {
        label,
        scenario,
        field,
        factor: 1.0,
    }
}

/// One panel: its caption, its y axis, its lines.
struct PanelSpec {
    caption: &'static str,
    y_desc: &'static str,
    lines: &'static [Line],
}

const PANELS: &[PanelSpec] = &[
    PanelSpec {
        caption: "Moving one node's children (ms from the kill, leave or start of the node)",
        y_desc: "ms",
        lines: &[
            line(
                "kill -9: victim's children back with state",
                "failover",
                "victim_recovered_ms",
            ),
            line(
                "kill -9: last survivor detects",
                "failover",
                "detect_last_ms",
            ),
            line(
                "graceful: leaver's children back with state",
                "graceful",
                "victim_recovered_ms",
            ),
            line("join: rebalanced", "join", "rebalanced_ms"),
        ],
    },
    PanelSpec {
        caption: "Starting N children from n1",
        y_desc: "s",
        lines: &[
            Line {
                label: "start, wall time",
                scenario: "failover",
                field: "start_ms",
                factor: 0.001,
            },
            Line {
                label: "CPU of all nodes during the start",
                scenario: "failover",
                field: "start_cpu_ms_total",
                factor: 0.001,
            },
            Line {
                label: "CPU of the busiest node during the start",
                scenario: "failover",
                field: "start_cpu_ms_max_node",
                factor: 0.001,
            },
        ],
    },
    PanelSpec {
        caption: "Cost per node process",
        y_desc: "MB / % of a core",
        lines: &[
            line(
                "resident memory per node (MB, mean)",
                "failover",
                "rss_mb_mean",
            ),
            line(
                "idle CPU per node (% of a core, mean)",
                "failover",
                "idle_cpu_pct_mean",
            ),
        ],
    },
];

const COLORS: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

/// The median of `line`'s field per node count, over the runs of its scenario at `n` children.
fn points(results: &[Value], line: &Line, n: u64) -> Vec<(f64, f64)> {
    let mut by_k: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for r in results {
        if r["scenario"] != line.scenario || u(r, "n") != n {
            continue;
        }
        if let Some(v) = r[line.field].as_f64() {
            by_k.entry(u(r, "nodes")).or_default().push(v * line.factor);
        }
    }
    by_k.into_iter()
        .map(|(k, mut v)| {
            v.sort_by(f64::total_cmp);
            (k as f64, v[v.len() / 2])
        })
        .collect()
}

/// The lines of one panel, each with its points (nodes, median).
type Panel = Vec<(&'static Line, Vec<(f64, f64)>)>;

/// Draw the panels of `results` (runs at `n` children) as an SVG document.
pub(crate) fn draw(results: &[Value], n: u64) -> Result<String, String> {
    let panels: Vec<Panel> = PANELS
        .iter()
        .map(|spec| {
            spec.lines
                .iter()
                .map(|l| (l, points(results, l, n)))
                .filter(|(_, p)| !p.is_empty())
                .collect()
        })
        .collect();
    if panels.iter().all(Vec::is_empty) {
        return Err(format!("no failover, graceful or join runs at N={n}"));
    }
    let max_k = panels
        .iter()
        .flatten()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold(3.0, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 1200)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root
            .titled(
                &format!("Throng cluster bench, N = {n} children, against cluster size (medians)"),
                ("sans-serif", 20),
            )
            .map_err(|e| e.to_string())?;
        let areas = root.split_evenly((PANELS.len(), 1));
        for ((spec, lines), area) in PANELS.iter().zip(&panels).zip(&areas) {
            if lines.is_empty() {
                continue;
            }
            let max_y = lines
                .iter()
                .flat_map(|(_, p)| p.iter().map(|x| x.1))
                .fold(1.0, f64::max)
                * 1.15;
            let mut chart = ChartBuilder::on(area)
                .caption(spec.caption, ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..max_k * 1.05, 0.0..max_y)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("node processes")
                .y_desc(spec.y_desc)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| {
                    if max_y >= 10.0 {
                        format!("{y:.0}")
                    } else {
                        format!("{y:.1}")
                    }
                })
                .draw()
                .map_err(|e| e.to_string())?;
            for (j, (line, pts)) in lines.iter().enumerate() {
                let color = COLORS[j % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(line.label)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// `throng-bench plot FILE.json OUT.svg [--children N]` (default N: the largest in the file).
pub fn run(args: &[String]) -> ExitCode {
    let (Some(input), Some(output)) = (args.first(), args.get(1)) else {
        eprintln!("plot: usage: throng-bench plot FILE.json OUT.svg [--children N]");
        return ExitCode::from(2);
    };
    let results = match std::fs::read_to_string(input)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str::<Vec<Value>>(&t).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("plot: {input}: {e}");
            return ExitCode::from(1);
        }
    };
    let n = match args.get(2).map(String::as_str) {
        Some("--children") => match args.get(3).and_then(|s| s.replace('_', "").parse().ok()) {
            Some(n) => n,
            None => {
                eprintln!("plot: --children needs a number");
                return ExitCode::from(2);
            }
        },
        Some(other) => {
            eprintln!("plot: unknown option {other}");
            return ExitCode::from(2);
        }
        None => results.iter().map(|r| u(r, "n")).max().unwrap_or(0),
    };
    match draw(&results, n).and_then(|svg| std::fs::write(output, svg).map_err(|e| e.to_string())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plot: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn draws_an_svg_with_a_line_per_measure() {
        let results: Vec<Value> = [3, 12, 24]
            .iter()
            .map(|k| {
                json!({"scenario": "failover", "nodes": k, "n": 1000,
                       "victim_recovered_ms": 900.0 + *k as f64, "detect_last_ms": 800.0,
                       "start_ms": 50.0, "rss_mb_mean": 20.0, "idle_cpu_pct_mean": 1.0})
            })
            .collect();
        let svg = draw(&results, 1000).expect("draws");
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(
            svg.contains("kill -9: victim&apos;s children back with state")
                || svg.contains("kill -9: victim")
        );
        assert!(draw(&results, 5).is_err(), "no runs at N=5");
    }
}
