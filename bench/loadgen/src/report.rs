//! Joins the per-server, per-scenario results of a bench run into one JSON document,
//! a markdown table and the `ratios:` line.

use std::{collections::BTreeMap, path::Path};

use serde_json::{Map, Value, json};

/// The servers, in table order.
pub const SERVERS: [&str; 3] = ["chatwire", "nestjs", "ceiling"];

/// Reads every `*.json` result in `dir` (objects with `scenario` and `server`), plus an
/// optional `meta.json` (machine, mode, settings), and builds the report document.
pub fn collect(dir: &Path) -> std::io::Result<Value> {
    let mut results: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut meta = Value::Null;
    let mut notes = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            notes.push(format!("{} is not JSON", path.display()));
            continue;
        };
        if path.file_name().and_then(|n| n.to_str()) == Some("meta.json") {
            meta = v;
            continue;
        }
        let (Some(server), Some(scenario)) = (v["server"].as_str(), v["scenario"].as_str()) else {
            notes.push(format!("{} has no server/scenario", path.display()));
            continue;
        };
        results
            .entry(server.to_owned())
            .or_default()
            .insert(scenario.to_owned(), v.clone());
    }
    let results = Value::Object(
        results
            .into_iter()
            .map(|(k, v)| (k, Value::Object(v)))
            .collect(),
    );
    let ratios = ratios(&results);
    let goals = goals(&results);
    Ok(json!({
        "generated_at_unix": crate::sys::now_micros() / 1_000_000,
        "meta": meta,
        "results": results,
        "ratios": ratios,
        "goals": goals,
        "notes": notes,
    }))
}

fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

/// A server's saturation throughput: the last clean step under the lag threshold; when
/// even the first step was over it, the most any step delivered (which flatters that
/// server); without a saturation run, the `stream` scenario's.
pub fn saturation_tokens_per_s(results: &Value, server: &str) -> Option<f64> {
    let sat = &results[server]["saturate"];
    if let Some(t) = num(sat, "/saturation/tokens_per_s") {
        return Some(t);
    }
    if let Some(steps) = sat["steps"].as_array() {
        let best = steps
            .iter()
            .filter_map(|s| num(s, "/tokens_per_s"))
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        if best.is_some() {
            return best;
        }
    }
    num(&results[server]["stream"], "/tokens_per_s")
}

/// The most frames/s a server delivered cleanly (saturation search, else `stream`).
fn best_frames_per_s(results: &Value, server: &str) -> Option<f64> {
    let from_steps = results[server]["saturate"]["steps"]
        .as_array()
        .and_then(|steps| {
            steps
                .iter()
                .filter(|s| {
                    num(s, "/lost_tokens") == Some(0.0) && num(s, "/error_count") == Some(0.0)
                })
                .filter_map(|s| num(s, "/frames_per_s"))
                .reduce(f64::max)
        });
    from_steps.or_else(|| num(&results[server]["stream"], "/frames_per_s"))
}

fn ratio(num: Option<f64>, den: Option<f64>) -> Option<f64> {
    match (num, den) {
        // A measured zero (a TTFT below a microsecond, say) counts as the smallest step.
        (Some(n), Some(d)) => Some(((n / d.max(1e-3)) * 100.0).round() / 100.0),
        _ => None,
    }
}

/// How many times better chatwire is than the NestJS peer (above 1: chatwire wins).
pub fn ratios(results: &Value) -> Value {
    let cw = &results["chatwire"];
    let nest = &results["nestjs"];
    json!({
        "tokens_per_s": ratio(saturation_tokens_per_s(results, "chatwire"), saturation_tokens_per_s(results, "nestjs")),
        "rss_per_conn": ratio(num(nest, "/idle/rss_per_conn_kib"), num(cw, "/idle/rss_per_conn_kib")),
        "lag_p99": ratio(num(nest, "/stream/lag/p99_ms"), num(cw, "/stream/lag/p99_ms")),
        "ttft_p99": ratio(num(nest, "/ttft/ttft_gateway/p99_ms"), num(cw, "/ttft/ttft_gateway/p99_ms")),
        "cpu_per_connect": ratio(num(nest, "/idle/cpu_per_connect_us"), num(cw, "/idle/cpu_per_connect_us")),
    })
}

/// The goals, each with the measured values and whether it is met (null when
/// something it needs was not measured).
pub fn goals(results: &Value) -> Value {
    let cw = &results["chatwire"];
    let nest = &results["nestjs"];
    let r = ratios(results);
    let le = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a <= b);
    let ge = |a: Option<f64>, b: f64| a.map(|a| a >= b);
    let lt = |a: Option<f64>, b: f64| a.map(|a| a < b);
    let cw_frames = best_frames_per_s(results, "chatwire");
    let ceiling_frames = best_frames_per_s(results, "ceiling");
    let mut lost_everywhere = Vec::new();
    for server in SERVERS {
        for scenario in ["stream", "saturate"] {
            if let Some(l) = num(&results[server][scenario], "/lost_tokens") {
                lost_everywhere.push(l);
            }
        }
    }
    json!([
        {"goal": "memory per idle connection <= the NestJS peer's",
         "chatwire_kib": num(cw, "/idle/rss_per_conn_kib"), "nestjs_kib": num(nest, "/idle/rss_per_conn_kib"),
         "met": le(num(cw, "/idle/rss_per_conn_kib"), num(nest, "/idle/rss_per_conn_kib"))},
        {"goal": "CPU per connect at least 3x lower than the peer's",
         "ratio": r["cpu_per_connect"], "met": ge(r["cpu_per_connect"].as_f64(), 3.0)},
        {"goal": "saturation tokens/s at least 5x the peer's",
         "ratio": r["tokens_per_s"], "met": ge(r["tokens_per_s"].as_f64(), 5.0)},
        {"goal": "delivered frames/s at least half of the ceiling's",
         "chatwire": cw_frames, "ceiling": ceiling_frames,
         "met": cw_frames.zip(ceiling_frames).map(|(c, x)| c >= x / 2.0)},
        {"goal": "lag p99 under 50 ms in the stream scenario",
         "chatwire_ms": num(cw, "/stream/lag/p99_ms"), "clients": num(cw, "/stream/clients"),
         "met": lt(num(cw, "/stream/lag/p99_ms"), 50.0)},
        {"goal": "gateway TTFT p99 under 5 ms",
         "chatwire_ms": num(cw, "/ttft/ttft_gateway/p99_ms"), "met": lt(num(cw, "/ttft/ttft_gateway/p99_ms"), 5.0)},
        {"goal": "zero lost tokens everywhere",
         "lost": lost_everywhere.iter().fold(0.0, |a, b| a + b),
         "met": (!lost_everywhere.is_empty()).then(|| lost_everywhere.iter().all(|l| *l == 0.0))},
    ])
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) => format!("{x:.decimals$}"),
        None => "–".into(),
    }
}

/// The markdown table of a report document.
pub fn table(report: &Value) -> String {
    let results = &report["results"];
    let servers: Vec<&str> = SERVERS
        .iter()
        .copied()
        .filter(|s| results.get(*s).is_some())
        .collect();
    let stream_desc = SERVERS
        .iter()
        .find_map(|s| {
            let st = &results[*s]["stream"];
            Some(format!(
                "{} clients × {} tok/s, {} tokens/answer",
                num(st, "/clients")?,
                num(st, "/rate_per_stream")?,
                num(st, "/tokens_per_answer")?
            ))
        })
        .unwrap_or_default();
    type Row<'a> = (&'a str, &'a str, usize);
    let rows: Vec<(String, Vec<Row>)> = vec![
        (
            format!(
                "idle ({} connections)",
                first(results, "/idle/connections_requested")
                    .map_or("–".into(), |v| v.to_string())
            ),
            vec![
                ("connect rate (conn/s)", "/idle/connect_rate_per_s", 0),
                ("RSS per connection (KiB)", "/idle/rss_per_conn_kib", 2),
                ("CPU per connect (µs)", "/idle/cpu_per_connect_us", 1),
                ("connect p99 (ms)", "/idle/connect_latency/p99_ms", 2),
                ("failed connects", "/idle/failed", 0),
            ],
        ),
        (
            format!("stream ({stream_desc})"),
            vec![
                ("tokens/s delivered", "/stream/tokens_per_s", 0),
                ("frames/s delivered", "/stream/frames_per_s", 0),
                ("lag p50 (ms)", "/stream/lag/p50_ms", 2),
                ("lag p99 (ms)", "/stream/lag/p99_ms", 2),
                ("lag max (ms)", "/stream/lag/max_ms", 2),
                ("first token p99 (ms)", "/stream/first_token/p99_ms", 2),
                ("server CPU (cores)", "/stream/server_cpu_cores", 2),
                (
                    "server CPU per token (µs)",
                    "/stream/server_cpu_us_per_token",
                    2,
                ),
                ("lost tokens", "/stream/lost_tokens", 0),
                ("errors", "/stream/error_count", 0),
            ],
        ),
        (
            format!(
                "saturation (lag p99 > {} ms, or under {} % of the offered tokens/s delivered)",
                first(results, "/saturate/threshold_ms").map_or("–".into(), |v| v.to_string()),
                first(results, "/saturate/min_delivery")
                    .and_then(|v| v.as_f64())
                    .map_or("–".into(), |v| format!("{:.0}", v * 100.0))
            ),
            vec![
                ("clients at saturation", "/saturate/saturation/clients", 0),
                (
                    "tokens/s at saturation",
                    "/saturate/saturation/tokens_per_s",
                    0,
                ),
                (
                    "frames/s at saturation",
                    "/saturate/saturation/frames_per_s",
                    0,
                ),
                ("lag p99 there (ms)", "/saturate/saturation/lag_p99_ms", 2),
                ("lost tokens (all steps)", "/saturate/lost_tokens", 0),
            ],
        ),
        (
            format!(
                "ttft ({} starts/s, upstream first-token delay {} ms)",
                first(results, "/ttft/rate_per_s").map_or("–".into(), |v| v.to_string()),
                first(results, "/ttft/first_token_delay_ms")
                    .map_or("–".into(), |v| v.to_string())
            ),
            vec![
                ("gateway TTFT p50 (ms)", "/ttft/ttft_gateway/p50_ms", 3),
                ("gateway TTFT p99 (ms)", "/ttft/ttft_gateway/p99_ms", 3),
                ("skipped starts", "/ttft/skipped", 0),
                ("errors", "/ttft/error_count", 0),
            ],
        ),
    ];
    let mut out = String::new();
    out.push_str(&format!("| metric | {} |\n", servers.join(" | ")));
    out.push_str(&format!("|---|{}\n", "---:|".repeat(servers.len())));
    for (section, metrics) in rows {
        // A scenario that was not run has no section.
        if !metrics
            .iter()
            .any(|(_, pointer, _)| servers.iter().any(|s| num(&results[*s], pointer).is_some()))
        {
            continue;
        }
        out.push_str(&format!(
            "| **{section}** |{}\n",
            " |".repeat(servers.len())
        ));
        for (label, pointer, decimals) in metrics {
            let cells: Vec<String> = servers
                .iter()
                .map(|s| fmt(num(&results[*s], pointer), decimals))
                .collect();
            out.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
        }
    }
    // The saturation row is meaningless without knowing whether the cap was hit.
    for s in &servers {
        if results[*s]["saturate"]["reached"] == Value::Bool(false) {
            out.push_str(&format!(
                "\n{s}: saturation not reached before the client cap; the real point is higher.\n"
            ));
        }
    }
    out
}

fn first(results: &Value, pointer: &str) -> Option<Value> {
    SERVERS
        .iter()
        .find_map(|s| results[*s].pointer(pointer).cloned())
}

/// One line per goal: met, missed or not measured.
pub fn goals_text(report: &Value) -> String {
    let mut out = String::new();
    for g in report["goals"].as_array().into_iter().flatten() {
        let mark = match g["met"].as_bool() {
            Some(true) => "met    ",
            Some(false) => "MISSED ",
            None => "n/a    ",
        };
        let mut detail: Vec<String> = g
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "goal" && *k != "met")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        detail.sort();
        out.push_str(&format!(
            "{mark} {} ({})\n",
            g["goal"].as_str().unwrap_or_default(),
            detail.join(", ")
        ));
    }
    out
}

/// The last line of a bench run.
pub fn ratios_line(report: &Value) -> String {
    let r = &report["ratios"];
    let f = |k: &str| r[k].as_f64().map_or("n/a".into(), |x| format!("{x:.2}"));
    format!(
        "ratios: tokens_per_s={} rss_per_conn={} lag_p99={} ttft_p99={}",
        f("tokens_per_s"),
        f("rss_per_conn"),
        f("lag_p99"),
        f("ttft_p99")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_chatwire_over_peer_for_throughput_and_peer_over_chatwire_for_costs() {
        let results = json!({
            "chatwire": {
                "idle": {"rss_per_conn_kib": 10.0, "cpu_per_connect_us": 100.0},
                "stream": {"lag": {"p99_ms": 5.0}, "tokens_per_s": 50000.0, "lost_tokens": 0},
                "saturate": {"saturation": {"tokens_per_s": 100000.0}, "steps": []},
                "ttft": {"ttft_gateway": {"p99_ms": 2.0}},
            },
            "nestjs": {
                "idle": {"rss_per_conn_kib": 15.0, "cpu_per_connect_us": 400.0},
                "stream": {"lag": {"p99_ms": 20.0}, "tokens_per_s": 50000.0, "lost_tokens": 0},
                "saturate": {"saturation": null, "steps": [{"tokens_per_s": 9000.0}, {"tokens_per_s": 10000.0}]},
                "ttft": {"ttft_gateway": {"p99_ms": 6.0}},
            },
        });
        let r = ratios(&results);
        assert_eq!(r["tokens_per_s"], json!(10.0));
        assert_eq!(r["rss_per_conn"], json!(1.5));
        assert_eq!(r["lag_p99"], json!(4.0));
        assert_eq!(r["ttft_p99"], json!(3.0));
        assert_eq!(r["cpu_per_connect"], json!(4.0));
        let line = ratios_line(&json!({"ratios": r}));
        assert_eq!(
            line,
            "ratios: tokens_per_s=10.00 rss_per_conn=1.50 lag_p99=4.00 ttft_p99=3.00"
        );
        let g = goals(&results);
        assert_eq!(g[0]["met"], json!(true));
        assert_eq!(g[6]["met"], json!(true));
        let t = table(&json!({"results": results}));
        assert!(t.starts_with("| metric | chatwire | nestjs |"), "{t}");
    }

    #[test]
    fn missing_peer_gives_na() {
        let line = ratios_line(&json!({"ratios": ratios(&json!({"chatwire": {}}))}));
        assert_eq!(
            line,
            "ratios: tokens_per_s=n/a rss_per_conn=n/a lag_p99=n/a ttft_p99=n/a"
        );
    }
}
